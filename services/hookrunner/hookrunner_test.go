package hookrunner

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/application"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"github.com/tidemark-dev/tidemark/pkg/platform/local"
	"github.com/tidemark-dev/tidemark/tests/bustest"
	"github.com/tidemark-dev/tidemark/tests/dbserver"
)

const instance = "hookrunner-test"

type harness struct {
	env     *bustest.Env
	appsDir string
	stop    func()
}

// start runs a hookrunner on a real embedded NATS server.
func start(t testing.TB) *harness {
	t.Helper()
	env := bustest.Start(t)
	appsDir := t.TempDir()
	s, err := New(Config{InstanceID: instance, Apps: application.Dir(appsDir), Exec: &local.Executor{}, HoldHeartbeat: 200 * time.Millisecond, ArtifactWait: 2 * time.Second}, env.Bus)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	h := &harness{env: env, appsDir: appsDir}
	var once sync.Once
	h.stop = func() { once.Do(func() { stopNow(t, cancel, done) }) }
	t.Cleanup(func() { h.stop() })
	return h
}

func stopNow(t testing.TB, cancel func(), done chan error) {
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("hookrunner did not stop")
	}
}

func (h *harness) writeApp(t testing.TB, name, driver, dsn, passwordEnv string) {
	t.Helper()
	doc := fmt.Sprintf(`apiVersion: tidemark.io/v1alpha1
kind: Application
metadata: {name: %s}
spec:
  blueprint: test
  connections:
    primary:
      driver: %s
      dsn: %q
      passwordFrom: {env: %s}
`, name, driver, dsn, passwordEnv)
	if err := os.WriteFile(filepath.Join(h.appsDir, strings.ReplaceAll(name, "/", "_")+".yaml"), []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
}

func command(run events.RunID, app, step, kind string, spec any, holdFor time.Duration) events.Event {
	raw, _ := json.Marshal(spec)
	req := events.HookRequested{
		RunID: run, Application: app, Step: step, Kind: kind, Spec: raw,
		Timeout: events.Duration(20 * time.Second), IdempotencyKey: string(run) + "/" + step,
	}
	if holdFor > 0 {
		d := events.Duration(holdFor)
		req.HoldFor = &d
	}
	ev := events.New("tidemark/test", string(run), req, time.Now())
	ev.CorrelationID = string(run)
	return ev
}

func release(run events.RunID, step string) events.Event {
	ev := events.New("tidemark/test", string(run), events.HookReleaseRequested{
		RunID: run, Step: step, Holder: instance, IdempotencyKey: string(run) + "/" + step + "/release",
	}, time.Now())
	ev.CorrelationID = string(run)
	return ev
}

func TestExecStepReportsOutputsAndFailures(t *testing.T) {
	h := start(t)
	h.env.Publish(t, command("run-exec", "shop/app", "lsn", blueprint.KindExec,
		blueprint.ExecSpec{Command: []string{"sh", "-c", "echo noise; echo lsn=0/16B3D28"}}, 0))
	ok := h.env.WaitFor(t, 20*time.Second, "hook.succeeded", bustest.Step[events.HookSucceeded]("run-exec", "lsn"))
	if got, _ := events.As[events.HookSucceeded](ok); got.Outputs["lsn"] != "0/16B3D28" {
		t.Errorf("outputs %v", got.Outputs)
	}
	if ok.CorrelationID != "run-exec" {
		t.Errorf("correlation id %q", ok.CorrelationID)
	}

	h.env.Publish(t, command("run-exec", "shop/app", "broken", blueprint.KindExec,
		blueprint.ExecSpec{Command: []string{"sh", "-c", "echo 'fsyncLock: not primary' >&2; exit 3"}}, 0))
	bad := h.env.WaitFor(t, 20*time.Second, "hook.failed", bustest.Step[events.HookFailed]("run-exec", "broken"))
	f, _ := events.As[events.HookFailed](bad)
	if f.ExitCode == nil || *f.ExitCode != 3 || !strings.Contains(f.Error, "fsyncLock: not primary") {
		t.Errorf("failure %+v", f)
	}
}

func TestRedeliveredCommandDoesNotRunTwice(t *testing.T) {
	h := start(t)
	counter := filepath.Join(t.TempDir(), "runs")
	cmd := command("run-idem", "shop/app", "count", blueprint.KindExec,
		blueprint.ExecSpec{Command: []string{"sh", "-c", "echo ran >> " + counter}}, 0)
	h.env.Publish(t, cmd)
	h.env.WaitFor(t, 20*time.Second, "the first result", bustest.Step[events.HookSucceeded]("run-idem", "count"))
	again := cmd
	again.ID = "" // a new message carrying the same command (same idempotency key)
	h.env.Publish(t, again)
	h.env.WaitFor(t, 20*time.Second, "the repeated result", func(ev events.Event) bool {
		return bustest.Step[events.HookSucceeded]("run-idem", "count")(ev) && ev.CausationID != cmd.ID
	})
	data, _ := os.ReadFile(counter)
	if n := strings.Count(string(data), "ran"); n != 1 {
		t.Fatalf("the command ran %d times", n)
	}
}

func TestUnsupportedKindAndMissingConnectionFailPermanently(t *testing.T) {
	h := start(t)
	h.writeApp(t, "shop/app", "mysql", "root@tcp(127.0.0.1:1)/", "UNUSED_PW")
	h.env.Publish(t, command("run-x", "shop/app", "call", "scale", map[string]any{"replicas": 0}, 0))
	h.env.Publish(t, command("run-x", "shop/app", "lock", blueprint.KindSQL,
		blueprint.SQLSpec{Connection: "replica", Statements: []string{"SELECT 1"}}, 0))
	for step, want := range map[string]string{"call": "not supported", "lock": `no connection "replica"`} {
		ev := h.env.WaitFor(t, 20*time.Second, step+" failure", bustest.Step[events.HookFailed]("run-x", step))
		f, _ := events.As[events.HookFailed](ev)
		if !f.Permanent || !strings.Contains(f.Error, want) {
			t.Errorf("%s: %+v", step, f)
		}
	}
}

func TestReleasingAStepThatNeverRanSucceeds(t *testing.T) {
	h := start(t)
	h.env.Publish(t, release("run-never", "lock"))
	ev := h.env.WaitFor(t, 20*time.Second, "hook.released", bustest.Step[events.HookReleased]("run-never", "lock"))
	if r, _ := events.As[events.HookReleased](ev); r.Error != "" || r.HeldFor != 0 {
		t.Fatalf("%+v", r)
	}
}

// insertBlocks starts an INSERT on its own connection and reports whether
// it finished within wait; the returned channel yields its final error.
func insertBlocks(t *testing.T, db *sql.DB, query string, wait time.Duration) (blocked bool, done chan error) {
	t.Helper()
	done = make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := db.ExecContext(ctx, query)
		done <- err
	}()
	select {
	case err := <-done:
		done <- err
		return false, done
	case <-time.After(wait):
		return true, done
	}
}

func mariaDB(t testing.TB, h *harness) (*sql.DB, string) {
	t.Helper()
	srv := dbserver.MariaDB(t)
	t.Setenv("TEST_MARIADB_PASSWORD", srv.Password)
	h.writeApp(t, "shop/mariadb", "mysql", fmt.Sprintf("%s@tcp(%s:%d)/", srv.User, srv.Host, srv.Port), "TEST_MARIADB_PASSWORD")
	db, err := sql.Open("mysql", srv.MySQLDSN(""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	for _, q := range []string{"CREATE DATABASE shop", "CREATE TABLE shop.orders (id INT PRIMARY KEY)"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	return db, srv.Password
}

var ftwrl = blueprint.SQLSpec{Connection: "primary", Statements: []string{"FLUSH TABLES WITH READ LOCK"}, Hold: true, Release: []string{"UNLOCK TABLES"}}

func TestMariaDBLockIsHeldUntilReleased(t *testing.T) {
	h := start(t)
	db, password := mariaDB(t, h)
	h.env.Publish(t, command("run-ftwrl", "shop/mariadb", "lock", blueprint.KindSQL, ftwrl, time.Minute))
	ev := h.env.WaitFor(t, 30*time.Second, "the lock", bustest.Step[events.HookSucceeded]("run-ftwrl", "lock"))
	if ok, _ := events.As[events.HookSucceeded](ev); !ok.Holding || ok.Holder != instance {
		t.Fatalf("succeeded without holding: %+v", ok)
	}
	blocked, done := insertBlocks(t, db, "INSERT INTO shop.orders VALUES (1)", time.Second)
	if !blocked {
		t.Fatalf("an INSERT completed while FLUSH TABLES WITH READ LOCK was held: %v", <-done)
	}
	h.env.Publish(t, release("run-ftwrl", "lock"))
	rel := h.env.WaitFor(t, 30*time.Second, "the release", bustest.Step[events.HookReleased]("run-ftwrl", "lock"))
	if r, _ := events.As[events.HookReleased](rel); r.By != "request" || r.Error != "" {
		t.Fatalf("release %+v", r)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the blocked INSERT failed after the release: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the INSERT stayed blocked after the release")
	}
	for _, f := range h.env.Facts() {
		raw, _ := json.Marshal(f.Data)
		if strings.Contains(string(raw), password) {
			t.Fatalf("a %s event carries the database password", f.Type())
		}
	}
}

func TestDeadMansSwitchReleasesAnUnreleasedLock(t *testing.T) {
	h := start(t)
	db, _ := mariaDB(t, h)
	h.env.Publish(t, command("run-dms", "shop/mariadb", "lock", blueprint.KindSQL, ftwrl, 2*time.Second))
	h.env.WaitFor(t, 30*time.Second, "the lock", bustest.Step[events.HookSucceeded]("run-dms", "lock"))
	blocked, done := insertBlocks(t, db, "INSERT INTO shop.orders VALUES (2)", 500*time.Millisecond)
	if !blocked {
		t.Fatalf("not locked: %v", <-done)
	}
	// No release is ever sent: the coordinator is gone. Meanwhile the hold
	// is reported as it lasts.
	h.env.WaitFor(t, 30*time.Second, "a progress report", func(ev events.Event) bool {
		p, ok := events.As[events.HookProgress](ev)
		return ok && p.RunID == "run-dms" && p.HeldFor != nil && p.HeldFor.Std() > 0
	})
	rel := h.env.WaitFor(t, 30*time.Second, "the dead man's release", bustest.Step[events.HookReleased]("run-dms", "lock"))
	if r, _ := events.As[events.HookReleased](rel); r.By != "deadline" {
		t.Fatalf("released by %q, want deadline", r.By)
	}
	if err := <-done; err != nil {
		t.Fatalf("INSERT after the dead man's release: %v", err)
	}
	// A late release request still succeeds, and changes nothing.
	h.env.Publish(t, release("run-dms", "lock"))
	h.env.WaitFor(t, 30*time.Second, "the late release's answer", func(ev events.Event) bool {
		r, ok := events.As[events.HookReleased](ev)
		return ok && r.RunID == "run-dms" && r.By == "request"
	})
}

func TestShutdownReleasesHeldLocks(t *testing.T) {
	h := start(t)
	db, _ := mariaDB(t, h)
	h.env.Publish(t, command("run-stop", "shop/mariadb", "lock", blueprint.KindSQL, ftwrl, time.Minute))
	h.env.WaitFor(t, 30*time.Second, "the lock", bustest.Step[events.HookSucceeded]("run-stop", "lock"))
	h.stop()
	rel := h.env.WaitFor(t, 30*time.Second, "the shutdown release", bustest.Step[events.HookReleased]("run-stop", "lock"))
	if r, _ := events.As[events.HookReleased](rel); r.By != "shutdown" {
		t.Fatalf("released by %q", r.By)
	}
	if blocked, done := insertBlocks(t, db, "INSERT INTO shop.orders VALUES (3)", 5*time.Second); blocked {
		t.Fatalf("still locked after the hookrunner stopped: %v", <-done)
	}
}

func TestPostgreSQLBackupModeIsHeldInOneSession(t *testing.T) {
	h := start(t)
	srv := dbserver.PostgreSQL(t)
	t.Setenv("TEST_PG_PASSWORD", srv.Password)
	h.writeApp(t, "shop/postgres", "postgres", fmt.Sprintf("postgres://%s@%s:%d/postgres?sslmode=disable", srv.User, srv.Host, srv.Port), "TEST_PG_PASSWORD")
	db, err := sql.Open("pgx", srv.PostgresDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	spec := blueprint.SQLSpec{
		Connection: "primary",
		Statements: []string{"SELECT pg_backup_start(label => 'tidemark-test', fast => true) AS start_lsn"},
		Hold:       true,
		Release:    []string{"SELECT labelfile, spcmapfile FROM pg_backup_stop(wait_for_archive => false)"},
	}
	h.env.Publish(t, command("run-pg", "shop/postgres", "backup-start", blueprint.KindSQL, spec, time.Minute))
	ev := h.env.WaitFor(t, 30*time.Second, "backup mode", bustest.Step[events.HookSucceeded]("run-pg", "backup-start"))
	if ok, _ := events.As[events.HookSucceeded](ev); ok.Outputs["start_lsn"] == "" {
		t.Fatalf("no start LSN in %v", ok.Outputs)
	}
	var holding int
	q := `SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_backup_start%' AND state = 'idle'`
	if err := db.QueryRow(q).Scan(&holding); err != nil || holding != 1 {
		t.Fatalf("the session in backup mode is not alive (count %d, %v)", holding, err)
	}
	h.env.Publish(t, release("run-pg", "backup-start"))
	rel := h.env.WaitFor(t, 30*time.Second, "pg_backup_stop", bustest.Step[events.HookReleased]("run-pg", "backup-start"))
	r, _ := events.As[events.HookReleased](rel)
	if r.Error != "" || !strings.Contains(r.Outputs["labelfile"], "START WAL LOCATION") || !strings.Contains(r.Outputs["labelfile"], "tidemark-test") {
		t.Fatalf("release %+v", r)
	}
	if err := db.QueryRow(q).Scan(&holding); err != nil || holding != 0 {
		t.Fatalf("the backup session is still there after the release (count %d, %v)", holding, err)
	}
}

func TestHTTPStepChecksStatusAndCapturesFields(t *testing.T) {
	h := start(t)
	var polls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/_snapshot/backups/snap-1":
			if r.Method != http.MethodPut || r.Header.Get("Content-Type") != "application/json" {
				http.Error(w, "bad request", 400)
				return
			}
			fmt.Fprint(w, `{"snapshot":{"uuid":"u-42","state":"IN_PROGRESS","shards":[{"id":7}]}}`)
		case "/_snapshot/backups/snap-1/_status":
			if polls.Add(1) < 3 {
				http.Error(w, `{"state":"IN_PROGRESS"}`, http.StatusServiceUnavailable)
				return
			}
			fmt.Fprint(w, `{"state":"SUCCESS"}`)
		default:
			http.Error(w, "no such index", 404)
		}
	}))
	defer srv.Close()
	h.env.Publish(t, command("run-http", "es", "snapshot", blueprint.KindHTTP, blueprint.HTTPSpec{
		Method: "PUT", URL: srv.URL + "/_snapshot/backups/snap-1", Headers: map[string]string{"Content-Type": "application/json"},
		Body: `{"indices":"*"}`, Capture: map[string]string{"uuid": "/snapshot/uuid", "shard": "/snapshot/shards/0/id"},
	}, 0))
	ev := h.env.WaitFor(t, 20*time.Second, "the http step", bustest.Step[events.HookSucceeded]("run-http", "snapshot"))
	if ok, _ := events.As[events.HookSucceeded](ev); ok.Outputs["uuid"] != "u-42" || ok.Outputs["shard"] != "7" {
		t.Fatalf("outputs %v", ok.Outputs)
	}
	h.env.Publish(t, command("run-http", "es", "missing", blueprint.KindHTTP, blueprint.HTTPSpec{URL: srv.URL + "/nope"}, 0))
	bad := h.env.WaitFor(t, 20*time.Second, "the failing http step", bustest.Step[events.HookFailed]("run-http", "missing"))
	if f, _ := events.As[events.HookFailed](bad); !strings.Contains(f.Error, "status 404") || !strings.Contains(f.Error, "no such index") {
		t.Fatalf("failure %+v", f)
	}
	h.env.Publish(t, command("run-http", "es", "wait", blueprint.KindWait, blueprint.WaitSpec{
		Interval: events.Duration(50 * time.Millisecond),
		HTTP:     &blueprint.HTTPSpec{URL: srv.URL + "/_snapshot/backups/snap-1/_status", Capture: map[string]string{"state": "/state"}},
	}, 0))
	w := h.env.WaitFor(t, 20*time.Second, "the wait", bustest.Step[events.HookSucceeded]("run-http", "wait"))
	if ok, _ := events.As[events.HookSucceeded](w); ok.Outputs["state"] != "SUCCESS" || polls.Load() != 3 {
		t.Fatalf("wait ended with %v after %d polls, want SUCCESS after 3", ok.Outputs, polls.Load())
	}
}

func TestWaitPollsUntilTheConditionHoldsOrTimesOut(t *testing.T) {
	h := start(t)
	flag := filepath.Join(t.TempDir(), "ready")
	go func() {
		time.Sleep(300 * time.Millisecond)
		os.WriteFile(flag, nil, 0o600)
	}()
	h.env.Publish(t, command("run-wait", "app", "ready", blueprint.KindWait, blueprint.WaitSpec{
		Interval: events.Duration(50 * time.Millisecond),
		Exec:     &blueprint.ExecSpec{Command: []string{"test", "-e", flag}},
	}, 0))
	h.env.WaitFor(t, 20*time.Second, "the wait to end", bustest.Step[events.HookSucceeded]("run-wait", "ready"))

	never := command("run-wait", "app", "never", blueprint.KindWait, blueprint.WaitSpec{
		Interval: events.Duration(50 * time.Millisecond),
		Exec:     &blueprint.ExecSpec{Command: []string{"sh", "-c", "echo still syncing >&2; exit 1"}},
	}, 0)
	req, _ := events.As[events.HookRequested](never)
	req.Timeout = events.Duration(400 * time.Millisecond)
	never.Data = req
	h.env.Publish(t, never)
	ev := h.env.WaitFor(t, 20*time.Second, "the wait to give up", bustest.Step[events.HookFailed]("run-wait", "never"))
	if f, _ := events.As[events.HookFailed](ev); !strings.Contains(f.Error, "not met within 400ms") || !strings.Contains(f.Error, "still syncing") {
		t.Fatalf("failure %+v", f)
	}
}

// Secrets are filled in here, on the application's side: the command sees
// the value, while events carry only the placeholder and output that
// echoes the value is scrubbed.
func TestSecretsAreFilledInHereAndNeverLeave(t *testing.T) {
	h := start(t)
	const value = "correct-horse-battery"
	t.Setenv("SHOP_API_KEY", value)
	doc := `apiVersion: tidemark.io/v1alpha1
kind: Application
metadata: {name: shop/es}
spec:
  blueprint: elasticsearch
  secrets:
    apiKey: {env: SHOP_API_KEY}
`
	if err := os.WriteFile(filepath.Join(h.appsDir, "es.yaml"), []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	seen := filepath.Join(t.TempDir(), "seen")
	h.env.Publish(t, command("run-sec", "shop/es", "use", blueprint.KindExec, blueprint.ExecSpec{
		Command: []string{"sh", "-c", `printf '%s' "$KEY" > "$OUT"; echo "key=$KEY"`},
		Env:     map[string]string{"KEY": blueprint.SecretPlaceholder("apiKey"), "OUT": seen},
	}, 0))
	ev := h.env.WaitFor(t, 20*time.Second, "the step", bustest.Step[events.HookSucceeded]("run-sec", "use"))
	if got, _ := os.ReadFile(seen); string(got) != value {
		t.Fatalf("the command saw %q, want the secret's value", got)
	}
	if ok, _ := events.As[events.HookSucceeded](ev); ok.Outputs["key"] != "REDACTED" {
		t.Fatalf("outputs %v", ok.Outputs)
	}

	h.env.Publish(t, command("run-sec", "shop/es", "missing", blueprint.KindExec, blueprint.ExecSpec{
		Command: []string{"true"}, Env: map[string]string{"X": blueprint.SecretPlaceholder("password")},
	}, 0))
	bad := h.env.WaitFor(t, 20*time.Second, "the failure", bustest.Step[events.HookFailed]("run-sec", "missing"))
	if f, _ := events.As[events.HookFailed](bad); !f.Permanent || !strings.Contains(f.Error, "add spec.secrets.password") {
		t.Fatalf("failure %+v", f)
	}
	for _, f := range h.env.Facts() {
		raw, _ := json.Marshal(f.Data)
		if strings.Contains(string(raw), value) {
			t.Fatalf("a %s event carries the secret", f.Type())
		}
	}
}

package main

// The fault matrix of issue #5: for a MariaDB application quiesced with
// FLUSH TABLES WITH READ LOCK and a PostgreSQL application in
// pg_backup_start, inject a fault at every point of a backup and check what a
// user would check afterwards. Every service is its own process (this test
// binary re-executed as tidemark), NATS included, so "SIGKILL the
// coordinator" and "restart NATS" are exactly that.

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/cenats"
	"github.com/tidemark-dev/tidemark/pkg/platform/local"
	"github.com/tidemark-dev/tidemark/services/catalog"
	"github.com/tidemark-dev/tidemark/tests/dbserver"
)

// matrixMaxFreeze is the blueprints' maxFreeze: the database must take
// writes again within this plus 5 s of being locked, whatever happens.
const matrixMaxFreeze = 10 * time.Second

// cluster is one set of Tidemark processes on one NATS server.
type cluster struct {
	t        *testing.T
	natsPort int
	natsURL  string
	dirs     map[string]string
	appsDir  string
	snapRoot string
	// exportTimeout is the coordinator's --export-timeout.
	exportTimeout string

	mu    sync.Mutex
	procs map[string]*tidemarkProcess

	nc      *nats.Conn
	bus     *bus.Bus
	factsMu sync.Mutex
	facts   []events.Event
}

var clusterServices = []string{"nats", "coordinator", "hookrunner", "snapshotter", "datamover", "catalog"}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	// Short, so the "times out" cells end soon, but with room for a data
	// mover whose consumer is still finding its way back after a NATS
	// restart on a loaded machine (4 s timed out 3 attempts once in CI).
	return newClusterWith(t, "8s")
}

// newClusterWith starts every service as its own process; exportTimeout
// bounds each export (short in the fault matrix, whose volumes are tiny).
func newClusterWith(t *testing.T, exportTimeout string) *cluster {
	t.Helper()
	root := t.TempDir()
	c := &cluster{t: t, natsPort: freeTCPPort(t), dirs: map[string]string{}, appsDir: filepath.Join(root, "apps"), procs: map[string]*tidemarkProcess{}, exportTimeout: exportTimeout}
	c.natsURL = fmt.Sprintf("nats://127.0.0.1:%d", c.natsPort)
	for _, n := range []string{"nats", "coordinator", "hookrunner", "movers", "catalog"} {
		c.dirs[n] = filepath.Join(root, n)
		if err := os.MkdirAll(c.dirs[n], 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(c.appsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	c.snapRoot = filepath.Join(c.dirs["movers"], "snapshots")
	// Every process that opens the repository opens the same one.
	t.Setenv("TIDEMARK_REPOSITORY_PASSWORD", "matrix-password")
	t.Setenv("TIDEMARK_REPOSITORY_PATH", filepath.Join(c.dirs["movers"], "repository"))
	for _, n := range clusterServices {
		c.start(n)
	}
	nc, err := bus.Dial(bus.DialConfig{URL: c.natsURL, Name: "matrix test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c.nc = nc
	if c.bus, err = bus.New(nc, bus.WithSource("/tidemark/matrix-test")); err != nil {
		t.Fatal(err)
	}
	c.record()
	t.Cleanup(c.stopAll)
	return c
}

func (c *cluster) args(name string) []string {
	common := []string{"--listen", "127.0.0.1:0", "--log-format", "json", "--log-level", "warn", "--shutdown-timeout", "5s"}
	switch name {
	case "nats":
		return append([]string{"serve", "--services", "none", "--nats-listen", fmt.Sprintf("127.0.0.1:%d", c.natsPort), "--data-dir", c.dirs["nats"]}, common...)
	case "coordinator":
		return append([]string{"serve", "--services", "coordinator", "--nats-url", c.natsURL, "--instance-id", "coord", "--apps-dir", c.appsDir, "--data-dir", c.dirs["coordinator"],
			"--step-answer-grace", "1s", "--inverse-timeout", "3s", "--export-timeout", c.exportTimeout}, common...)
	case "hookrunner":
		return append([]string{"serve", "--services", "hookrunner", "--nats-url", c.natsURL, "--instance-id", "hr", "--apps-dir", c.appsDir, "--data-dir", c.dirs["hookrunner"]}, common...)
	case "snapshotter", "datamover":
		// They share the snapshots directory: the mover reads what the
		// snapshotter took.
		return append([]string{"serve", "--services", name, "--nats-url", c.natsURL, "--instance-id", name, "--data-dir", c.dirs["movers"]}, common...)
	case "catalog":
		return append([]string{"serve", "--services", "catalog", "--nats-url", c.natsURL, "--instance-id", "catalog", "--data-dir", c.dirs["catalog"]}, common...)
	}
	c.t.Fatalf("unknown process %s", name)
	return nil
}

func (c *cluster) start(name string) {
	c.t.Helper()
	p := startTidemark(c.t, c.args(name)...)
	// --log-level warn hides the "serving" line; readiness is the HTTP
	// endpoint, which the log does not name either, so wait for NATS to
	// accept connections (for the nats process) or give the process a
	// moment to join.
	c.mu.Lock()
	c.procs[name] = p
	c.mu.Unlock()
	if name == "nats" {
		deadline := time.Now().Add(30 * time.Second)
		for {
			conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.natsPort), time.Second)
			if err == nil {
				conn.Close()
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("NATS did not come up: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func (c *cluster) proc(name string) *tidemarkProcess {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.procs[name]
}

// kill SIGKILLs a process and waits for it to be gone.
func (c *cluster) kill(name string) {
	p := c.proc(name)
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		c.t.Fatalf("%s did not die", name)
	}
}

// terminate stops a process with SIGTERM and waits for it.
func (c *cluster) terminate(name string) {
	p := c.proc(name)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		c.t.Fatalf("%s did not stop on SIGTERM", name)
	}
}

func (c *cluster) signal(name string, sig syscall.Signal) {
	_ = c.proc(name).cmd.Process.Signal(sig)
}

func (c *cluster) stopAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Kill()
	}
}

// record follows every fact, surviving NATS restarts.
func (c *cluster) record() {
	js, err := jetstream.New(c.nc)
	if err != nil {
		c.t.Fatal(err)
	}
	var cons jetstream.Consumer
	for range 50 {
		cons, err = js.OrderedConsumer(context.Background(), bus.StreamEvents, jetstream.OrderedConsumerConfig{})
		if err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		ev, err := cenats.Decode(context.Background(), &nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
		if err != nil {
			return
		}
		c.factsMu.Lock()
		c.facts = append(c.facts, ev)
		c.factsMu.Unlock()
	})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(cc.Stop)
}

func (c *cluster) waitFor(timeout time.Duration, match func(events.Event) bool) (events.Event, bool) {
	deadline := time.Now().Add(timeout)
	for {
		c.factsMu.Lock()
		for _, ev := range c.facts {
			if match(ev) {
				c.factsMu.Unlock()
				return ev, true
			}
		}
		c.factsMu.Unlock()
		if time.Now().After(deadline) {
			return events.Event{}, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *cluster) publish(ev events.Event) error {
	var err error
	for range 50 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = c.bus.Publish(ctx, ev)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return err
}

func (c *cluster) writeFile(name, content string) string {
	p := filepath.Join(c.appsDir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// snapshotsOf lists the run's snapshots still on disk.
func (c *cluster) snapshotsOf(run events.RunID) []string {
	s, err := local.NewSnapshotter(c.snapRoot, nil)
	if err != nil {
		return []string{err.Error()}
	}
	all, err := s.List(context.Background())
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, sn := range all {
		if sn.RunID == run {
			out = append(out, string(sn.ID)+" at "+sn.Path)
		}
	}
	return out
}

func (c *cluster) hasRestorePoint(run events.RunID) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := c.bus.KeyValue(ctx, bus.BucketCatalog)
	if err != nil {
		return false, err
	}
	points, err := catalog.NewStore(kv).List(ctx, "")
	if err != nil {
		return false, err
	}
	for _, p := range points {
		if p.RunID == run {
			return true, nil
		}
	}
	return false, nil
}

// database is what the matrix needs of a database kind.
type database struct {
	kind       string // "mariadb" or "postgres"
	srv        *dbserver.Server
	db         *sql.DB
	connection string
	lockStep   string
	// thawed reports whether the application is released: MariaDB takes a
	// write; PostgreSQL has no session left in backup mode.
	thawed func(ctx context.Context) error
}

func startMariaDB(t *testing.T) *database {
	srv := dbserver.MariaDB(t)
	db, err := sql.Open("mysql", srv.MySQLDSN(""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	for _, q := range []string{"CREATE DATABASE shop", "CREATE TABLE shop.ticks (id BIGINT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6))"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("MATRIX_MARIADB_PASSWORD", srv.Password)
	return &database{
		kind: "mariadb", srv: srv, db: db, lockStep: "lock",
		connection: fmt.Sprintf("  connections:\n    primary: {driver: mysql, dsn: \"%s@tcp(%s:%d)/\", passwordFrom: {env: MATRIX_MARIADB_PASSWORD}}\n", srv.User, srv.Host, srv.Port),
		thawed: func(ctx context.Context) error {
			_, err := db.ExecContext(ctx, "INSERT INTO shop.ticks () VALUES ()")
			return err
		},
	}
}

func startPostgreSQL(t *testing.T) *database {
	srv := dbserver.PostgreSQL(t)
	db, err := sql.Open("pgx", srv.PostgresDSN(""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	t.Setenv("MATRIX_PG_PASSWORD", srv.Password)
	return &database{
		kind: "postgres", srv: srv, db: db, lockStep: "backupmode",
		connection: fmt.Sprintf("  connections:\n    primary: {driver: postgres, dsn: \"postgres://%s@%s:%d/postgres?sslmode=disable\", passwordFrom: {env: MATRIX_PG_PASSWORD}}\n", srv.User, srv.Host, srv.Port),
		thawed: func(ctx context.Context) error {
			for {
				var n int
				err := db.QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE '%pg_backup_start%' AND pid <> pg_backend_pid()").Scan(&n)
				if err == nil && n == 0 {
					return nil
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("%d session(s) still in backup mode: %w", n, ctx.Err())
				case <-time.After(100 * time.Millisecond):
				}
			}
		},
	}
}

// blueprint returns the cell's blueprint: the bundled one for the kind with
// maxFreeze shortened, a probe step between the lock and the snapshot, and
// the cell's changes.
func (d *database) blueprint(name, probe string, release []string, snapshotTimeout string) string {
	var lock string
	switch d.kind {
	case "mariadb":
		rel := append([]string{"UNLOCK TABLES"}, release...)
		lock = fmt.Sprintf(`      - name: lock
        kind: sql
        sql:
          connection: primary
          statements: [FLUSH TABLES WITH READ LOCK]
          hold: true
          release: [%s]
        timeout: 30s
`, quoteAll(rel))
	case "postgres":
		rel := append([]string{"SELECT labelfile, spcmapfile FROM pg_backup_stop(wait_for_archive => false)"}, release...)
		lock = fmt.Sprintf(`      - name: backupmode
        kind: sql
        sql:
          connection: primary
          statements: ["SELECT pg_backup_start(label => 'matrix', fast => true)"]
          hold: true
          release: [%s]
        timeout: 30s
`, quoteAll(rel))
	}
	return fmt.Sprintf(`apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: %s}
spec:
  maxFreeze: %s
  actions:
    backup:
%s      - name: probe
        kind: exec
        exec: {command: [sh, -c, %q]}
        timeout: %s
        noInverse: only reads
      - name: snapshot
        kind: snapshot
        timeout: %s
    restore:
      - name: snapshot
        kind: snapshot
`, name, matrixMaxFreeze, lock, probeCommand(probe), probeTimeout(probe), snapshotTimeout)
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

func probeCommand(p string) string {
	switch p {
	case "fail":
		return "sleep 0.3; echo replica lag over the limit >&2; exit 1"
	case "hang":
		return "sleep 30"
	}
	return "sleep 0.3"
}

func probeTimeout(p string) string {
	if p == "hang" {
		return "1s"
	}
	return "20s"
}

// fault is what a cell does to the system at its trigger.
type fault string

const (
	faultFails       fault = "step fails"
	faultTimesOut    fault = "step times out"
	faultKillHooks   fault = "hookrunner SIGKILL"
	faultKillCoord   fault = "coordinator SIGKILL+restart"
	faultRestartNATS fault = "NATS restart (SIGTERM)"
)

type position string

const (
	posAfterQuiesce position = "after quiesce"
	posSnapshot     position = "during snapshot"
	posBeforeThaw   position = "after snapshot, before thaw"
	posExport       position = "during export"
	posRecording    position = "at recording"
)

// cell is one fault at one position, and what must come of it.
type cell struct {
	pos   position
	fault fault
	// want is "completed" or "failed"; cause is a substring of the failure.
	want  string
	cause string
}

var matrix = []cell{
	{posAfterQuiesce, faultFails, "failed", "step probe failed"},
	{posAfterQuiesce, faultTimesOut, "failed", "step probe failed"},
	{posAfterQuiesce, faultKillHooks, "failed", ""},
	{posAfterQuiesce, faultKillCoord, "failed", "was lost while the application was quiesced"},
	{posAfterQuiesce, faultRestartNATS, "completed", ""},

	{posSnapshot, faultFails, "failed", "snapshot failed"},
	{posSnapshot, faultTimesOut, "failed", "no answer from the snapshotter"},
	// The release answered "disconnect" by the restarted hookrunner, or
	// another instance answering for the lost one first: either way.
	{posSnapshot, faultKillHooks, "failed", "the snapshot cannot be shown to be consistent"},
	{posSnapshot, faultKillCoord, "failed", "was lost while the application was quiesced"},
	{posSnapshot, faultRestartNATS, "completed", ""},

	{posBeforeThaw, faultFails, "failed", "release of step"},
	{posBeforeThaw, faultTimesOut, "completed", ""},
	{posBeforeThaw, faultKillHooks, "failed", "the snapshot cannot be shown to be consistent"},
	{posBeforeThaw, faultKillCoord, "completed", ""},
	{posBeforeThaw, faultRestartNATS, "completed", ""},

	{posExport, faultFails, "failed", "export of"},
	{posExport, faultTimesOut, "failed", "no answer from the data mover"},
	{posExport, faultKillHooks, "completed", ""},
	{posExport, faultKillCoord, "completed", ""},
	{posExport, faultRestartNATS, "completed", ""},

	{posRecording, faultFails, "completed", ""},
	{posRecording, faultTimesOut, "completed", ""},
	{posRecording, faultKillHooks, "completed", ""},
	{posRecording, faultKillCoord, "completed", ""},
	{posRecording, faultRestartNATS, "completed", ""},
}

type cellResult struct {
	db      string
	cell    cell
	got     string
	cause   string
	thawIn  time.Duration
	took    time.Duration
	problem string
}

func TestFaultMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 50 backups against real databases with every service in its own process")
	}
	var mu sync.Mutex
	var results []cellResult
	for _, kind := range []string{"mariadb", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			var d *database
			if kind == "mariadb" {
				d = startMariaDB(t)
			} else {
				d = startPostgreSQL(t)
			}
			c := newCluster(t)
			for i, cl := range matrix {
				if only := os.Getenv("TIDEMARK_MATRIX_ONLY"); only != "" && !strings.Contains(string(cl.pos)+"/"+string(cl.fault), only) {
					continue
				}
				r := runCell(t, c, d, i, cl)
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
				if r.problem != "" {
					t.Errorf("%s | %s | %s: %s", kind, cl.pos, cl.fault, r.problem)
				}
			}
		})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-8s | %-28s | %-28s | %-9s | %-9s | %-8s | %s\n", "database", "position", "fault", "want", "got", "thaw in", "problem / cause")
	for _, r := range results {
		detail := r.problem
		if detail == "" {
			detail = "ok: " + r.cause
		}
		fmt.Fprintf(&b, "%-8s | %-28s | %-28s | %-9s | %-9s | %-8s | %s\n", r.db, r.cell.pos, r.cell.fault, r.cell.want, r.got, r.thawIn.Round(10*time.Millisecond), detail)
	}
	t.Log(b.String())
}

func runCell(t *testing.T, c *cluster, d *database, i int, cl cell) (res cellResult) {
	res = cellResult{db: d.kind, cell: cl}
	heal(c)
	start := time.Now()
	defer func() { res.took = time.Since(start) }()
	problem := func(format string, args ...any) {
		if res.problem == "" {
			res.problem = fmt.Sprintf(format, args...)
		}
	}
	app := fmt.Sprintf("matrix/%s-%02d", d.kind, i)
	name := fmt.Sprintf("matrix-%s-%02d", d.kind, i)
	probe, release, snapTimeout := "", []string(nil), "30s"
	volumes := map[string]string{"data": d.srv.DataDir}
	switch {
	case cl.pos == posAfterQuiesce && cl.fault == faultFails:
		probe = "fail"
	case cl.pos == posAfterQuiesce && cl.fault == faultTimesOut:
		probe = "hang"
	case cl.pos == posSnapshot && cl.fault == faultFails:
		volumes["missing"] = filepath.Join(c.appsDir, "no-such-volume-"+name)
	case cl.pos == posSnapshot && cl.fault == faultTimesOut:
		snapTimeout = "2s"
	case cl.pos == posBeforeThaw && cl.fault == faultFails:
		release = []string{"SELECT tidemark_no_such_function()"}
	}
	bp := c.writeFile(name+".blueprint.yaml", d.blueprint(name, probe, release, snapTimeout))
	var vols strings.Builder
	for k, v := range volumes {
		fmt.Fprintf(&vols, "    %s: %s\n", k, v)
	}
	c.writeFile(name+".app.yaml", fmt.Sprintf("apiVersion: tidemark.io/v1alpha1\nkind: Application\nmetadata: {name: %s}\nspec:\n  blueprint: %s\n  volumes:\n%s%s", app, bp, vols.String(), d.connection))

	req := events.New("/tidemark/matrix-test", app, events.BackupRequested{Application: app, RequestedBy: "matrix"}, time.Now())
	if err := c.publish(req); err != nil {
		problem("publish: %v", err)
		return
	}
	accepted, ok := c.waitFor(30*time.Second, func(e events.Event) bool {
		_, ok := events.As[events.BackupAccepted](e)
		return ok && e.CausationID == req.ID
	})
	if !ok {
		problem("not accepted within 30s")
		return
	}
	run := accepted.Data.(events.BackupAccepted).RunID
	ofRun := func(match func(events.Event) bool) func(events.Event) bool {
		return func(e events.Event) bool { return e.CorrelationID == string(run) && match(e) }
	}
	lockEv, locked := c.waitFor(30*time.Second, ofRun(func(e events.Event) bool {
		p, ok := events.As[events.HookSucceeded](e)
		return ok && p.Step == d.lockStep
	}))
	if !locked && cl.fault != faultRestartNATS {
		problem("the lock step never succeeded")
		return
	}
	lockedAt := lockEv.Time
	if !locked {
		lockedAt = time.Now()
	}

	// Wait for the cell's trigger, then inject its fault.
	var trigger func(events.Event) bool
	switch cl.pos {
	case posAfterQuiesce, posSnapshot:
		trigger = ofRun(func(e events.Event) bool {
			p, ok := events.As[events.HookSucceeded](e)
			return ok && p.Step == "probe"
		})
		if cl.pos == posAfterQuiesce {
			trigger = ofRun(func(e events.Event) bool { return e.ID == lockEv.ID })
		}
	case posBeforeThaw:
		trigger = ofRun(func(e events.Event) bool { _, ok := events.As[events.SnapshotReady](e); return ok })
	case posExport:
		trigger = ofRun(func(e events.Event) bool { _, ok := events.As[events.SnapshotReady](e); return ok })
		if cl.fault == faultKillHooks || cl.fault == faultKillCoord || cl.fault == faultRestartNATS {
			// After the thaw: the exports run, the lock is gone.
			trigger = ofRun(func(e events.Event) bool {
				p, ok := events.As[events.HookReleased](e)
				return ok && p.Step == d.lockStep
			})
		}
	case posRecording:
		trigger = ofRun(func(e events.Event) bool { _, ok := events.As[events.BackupCompleted](e); return ok })
	}
	needsTrigger := !(cl.pos == posAfterQuiesce && (cl.fault == faultFails || cl.fault == faultTimesOut)) &&
		!(cl.pos == posSnapshot && cl.fault == faultFails) && !(cl.pos == posBeforeThaw && cl.fault == faultFails)
	if cl.pos == posBeforeThaw && cl.fault == faultKillHooks {
		// Deterministically between the snapshot and the thaw: the lock's
		// holder is stopped before the snapshot is taken, so the release
		// cannot run, and killed once the snapshot is ready.
		probeDone := ofRun(func(e events.Event) bool {
			p, ok := events.As[events.HookSucceeded](e)
			return ok && p.Step == "probe"
		})
		if _, ok := c.waitFor(30*time.Second, probeDone); !ok {
			problem("the probe step never succeeded")
		}
		stall(c, "hookrunner", 0)
		needsTrigger = true
	}
	if needsTrigger {
		if _, ok := c.waitFor(30*time.Second, trigger); !ok {
			problem("trigger for %s never came", cl.pos)
		} else {
			inject(c, cl, run)
		}
	}

	// The application must be released within maxFreeze + 5 s of the lock.
	thawCtx, cancel := context.WithDeadline(context.Background(), lockedAt.Add(matrixMaxFreeze+5*time.Second))
	err := d.thawed(thawCtx)
	cancel()
	res.thawIn = time.Since(lockedAt)
	if err != nil {
		problem("application not released within maxFreeze+5s: %v", err)
	}

	end, ok := c.waitFor(3*time.Minute, ofRun(func(e events.Event) bool {
		switch e.Data.(type) {
		case events.RestorePointRecorded, events.BackupFailed, events.BackupCancelled:
			return true
		}
		return false
	}))
	if !ok {
		problem("the run did not end within 3 minutes")
		return
	}
	switch p := end.Data.(type) {
	case events.RestorePointRecorded:
		res.got, res.cause = "completed", string(p.RestorePointID)
	case events.BackupFailed:
		res.got, res.cause = "failed", p.Reason
		for _, comp := range p.Compensations {
			if comp.Outcome == "failed" {
				problem("compensation %s failed: %s", comp.Step, comp.Error)
			}
		}
	case events.BackupCancelled:
		res.got = "cancelled"
	}
	if res.got != cl.want {
		problem("ended %s (%s), want %s", res.got, res.cause, cl.want)
	} else if cl.cause != "" && !strings.Contains(res.cause, cl.cause) {
		problem("cause %q does not say %q", res.cause, cl.cause)
	}
	// Leave the system whole for the next cell before checking leftovers.
	heal(c)
	var left []string
	deadline := time.Now().Add(20 * time.Second)
	for {
		left = c.snapshotsOf(run)
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(left) > 0 {
		problem("snapshots left: %v", left)
	}
	if res.got == "failed" {
		time.Sleep(500 * time.Millisecond)
		if has, err := c.hasRestorePoint(run); err != nil {
			problem("reading the catalog: %v", err)
		} else if has {
			problem("the catalog recorded a restore point for a failed run")
		}
	}
	return res
}

// inject applies the cell's fault at its trigger.
func inject(c *cluster, cl cell, run events.RunID) {
	switch cl.fault {
	case faultKillHooks:
		if cl.pos == posSnapshot {
			// Keep the snapshot in progress while the lock's holder dies.
			stall(c, "snapshotter", 2*time.Second)
		}
		c.kill("hookrunner")
		c.start("hookrunner")
	case faultKillCoord:
		if cl.pos == posSnapshot {
			stall(c, "snapshotter", 3*time.Second)
		}
		c.kill("coordinator")
		c.start("coordinator")
	case faultRestartNATS:
		// A restart, as in an upgrade: SIGTERM lets the server flush. (A
		// SIGKILLed single server can lose writes it had acknowledged, since
		// nats-server acknowledges before it syncs to disk; replicated
		// streams are the answer to that, not the services.)
		c.terminate("nats")
		time.Sleep(500 * time.Millisecond)
		c.start("nats")
	case faultTimesOut:
		switch cl.pos {
		case posSnapshot:
			// A snapshotter that hangs: the snapshot step's deadline passes.
			stall(c, "snapshotter", 5*time.Second)
		case posBeforeThaw:
			stall(c, "hookrunner", 4*time.Second)
		case posExport:
			// Longer than every attempt together (3 × the 8 s export
			// timeout), so the run cannot finish on a late attempt.
			stall(c, "datamover", 40*time.Second)
		case posRecording:
			stall(c, "catalog", 3*time.Second)
		}
	case faultFails:
		switch cl.pos {
		case posExport:
			// The snapshot's storage is lost before the mover reads it.
			stall(c, "datamover", 0)
			_ = os.RemoveAll(c.snapRoot)
			_ = os.MkdirAll(c.snapRoot, 0o755)
			c.signal("datamover", syscall.SIGCONT)
		case posRecording:
			c.kill("catalog")
			c.start("catalog")
		}
	}
}

// stall SIGSTOPs a process; it is continued after d (or by heal).
func stall(c *cluster, name string, d time.Duration) {
	c.signal(name, syscall.SIGSTOP)
	if d <= 0 {
		return
	}
	time.AfterFunc(d, func() { c.signal(name, syscall.SIGCONT) })
}

// heal continues stalled processes and restarts dead ones.
func heal(c *cluster) {
	for _, n := range clusterServices {
		c.signal(n, syscall.SIGCONT)
		p := c.proc(n)
		select {
		case <-p.done:
			c.start(n)
		default:
		}
	}
}

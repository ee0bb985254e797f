package coordinator_test

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/tidemark-dev/tidemark/blueprints"
	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/services/catalog"
	"github.com/tidemark-dev/tidemark/tests/dbserver"
)

// ticker inserts a row every 10 ms from its own connection and records how
// long each insert took, so a test sees exactly how long writers were held.
type ticker struct {
	db   *sql.DB
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	rows    int
	longest time.Duration
	errs    []error
}

func startTicker(t *testing.T, db *sql.DB, insert string) *ticker {
	t.Helper()
	k := &ticker{db: db, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(k.done)
		for {
			select {
			case <-k.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			start := time.Now()
			_, err := db.Exec(insert)
			took := time.Since(start)
			k.mu.Lock()
			if err != nil {
				k.errs = append(k.errs, err)
			} else {
				k.rows++
			}
			k.longest = max(k.longest, took)
			k.mu.Unlock()
		}
	}()
	t.Cleanup(k.halt)
	return k
}

func (k *ticker) halt() {
	select {
	case <-k.stop:
	default:
		close(k.stop)
	}
	<-k.done
}

func (k *ticker) snapshot() (rows int, longest time.Duration, errs []error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.rows, k.longest, append([]error(nil), k.errs...)
}

// writable reports how long until a fresh connection can write, up to limit.
func writable(db *sql.DB, insert string, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	_, err := db.ExecContext(ctx, insert)
	return time.Since(start), err
}

func bundled(t *testing.T, name string) string {
	t.Helper()
	b, err := fs.ReadFile(blueprints.FS, name+"/blueprint.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func catalogPoint(t *testing.T, sys *system, id events.RestorePointID) catalog.RestorePoint {
	t.Helper()
	kv, err := sys.env.Bus.KeyValue(context.Background(), bus.BucketCatalog)
	if err != nil {
		t.Fatal(err)
	}
	p, err := catalog.NewStore(kv).Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMariaDBUnderALiveWriter(t *testing.T) {
	if testing.Short() {
		t.Skip("starts MariaDB")
	}
	srv := dbserver.MariaDB(t)
	db, err := sql.Open("mysql", srv.MySQLDSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, stmt := range []string{
		"CREATE DATABASE shop",
		"CREATE TABLE shop.ticks (id BIGINT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB",
	} {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatal(err)
		}
	}
	const insert = "INSERT INTO shop.ticks () VALUES ()"
	t.Setenv("TIDEMARK_TEST_MARIADB_PASSWORD", srv.Password)
	sys := newSystem(t)
	sys.startAll()
	connection := fmt.Sprintf(`  connections:
    primary:
      driver: mysql
      dsn: "%s@tcp(%s:%d)/"
      passwordFrom: {env: TIDEMARK_TEST_MARIADB_PASSWORD}
`, srv.User, srv.Host, srv.Port)

	t.Run("consistent backup while a writer inserts every 10ms", func(t *testing.T) {
		sys.app("shop/mariadb", "mariadb", map[string]string{"data": srv.DataDir}, connection)
		k := startTicker(t, db, insert)
		time.Sleep(200 * time.Millisecond)
		run := sys.backup("shop/mariadb")
		end := sys.outcome(run, 2*time.Minute)
		rec, ok := events.As[events.RestorePointRecorded](end)
		if !ok {
			t.Fatalf("run ended with %s %+v; history:\n%s", end.Type(), end.Data, history(sys.runState(run)))
		}
		time.Sleep(200 * time.Millisecond)
		k.halt()
		rows, longest, errs := k.snapshot()
		if len(errs) > 0 {
			t.Errorf("the writer failed %d times, first: %v", len(errs), errs[0])
		}
		if rows < 10 {
			t.Errorf("the writer wrote only %d rows", rows)
		}
		completed := sys.env.WaitFor(t, time.Second, "backup.completed", func(e events.Event) bool {
			p, ok := events.As[events.BackupCompleted](e)
			return ok && p.RunID == run
		})
		c, _ := events.As[events.BackupCompleted](completed)
		if c.FreezeWindow <= 0 {
			t.Errorf("backup.completed reports freeze window %s, want the lock's duration", c.FreezeWindow)
		}
		t.Logf("freeze window %s (lock held → released); longest insert %s; %d rows written", c.FreezeWindow, longest, rows)
		if rec.Consistency != "application" {
			t.Errorf("consistency %q, want application (a session lock was held)", rec.Consistency)
		}
		p := catalogPoint(t, sys, rec.RestorePointID)
		if len(p.Artifacts) != 1 || p.Artifacts[0].Name != "data" || p.Artifacts[0].ManifestID == "" {
			t.Errorf("artifacts %+v: want the data volume's snapshot", p.Artifacts)
		}
		if _, ok := p.StepOutputs["lock"]["gtid_current_pos"]; !ok {
			t.Errorf("step outputs %v: want the replication positions read under the lock", p.StepOutputs)
		}
		// The snapshots are deleted after the restore point is recorded.
		sys.waitSnapshotsDeleted(run, 30*time.Second)
		if left := sys.snapshotsOf(run); len(left) != 0 {
			t.Errorf("snapshots left: %v", left)
		}
	})

	t.Run("a failure after the lock releases it within maxFreeze+5s", func(t *testing.T) {
		bp := strings.Replace(bundled(t, "mariadb"), "      - name: snapshot\n        kind: snapshot\n", `      - name: check
        kind: exec
        exec:
          command: [sh, -c, 'sleep 0.5; echo replica lag too high >&2; exit 1']
        noInverse: only reads
      - name: snapshot
        kind: snapshot
`, 1)
		file := sys.writeFile("mariadb-failing.blueprint.yaml", bp)
		sys.app("shop/mariadb-failing", file, map[string]string{"data": srv.DataDir}, connection)
		run := sys.backup("shop/mariadb-failing")
		locked := sys.env.WaitFor(t, 30*time.Second, "the lock", func(e events.Event) bool {
			p, ok := events.As[events.HookSucceeded](e)
			return ok && p.RunID == run && p.Step == "lock"
		})
		lockedAt := locked.Time
		took, err := writable(db, insert, 65*time.Second)
		if err != nil {
			t.Fatalf("no write possible after the failure: %v", err)
		}
		if since := time.Since(lockedAt); since > 60*time.Second+5*time.Second {
			t.Errorf("writes resumed %s after the lock (waited %s), want within maxFreeze + 5s", since, took)
		}
		end := sys.outcome(run, time.Minute)
		f, ok := events.As[events.BackupFailed](end)
		if !ok || f.FailedStep != "check" {
			t.Fatalf("run ended with %s %+v, want the check step failed", end.Type(), end.Data)
		}
		if c, ok := compensationIn(f.Compensations, "release lock"); !ok || c.Outcome != "succeeded" {
			t.Errorf("compensations %+v: want the lock released", f.Compensations)
		}
		noRestorePoint(t, sys, run)
	})
}

func TestPostgreSQLBackupKeepsTheBackupLabel(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	srv, db := startPostgreSQL(t, "CREATE TABLE ticks (id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT now())")
	sys := newSystem(t)
	sys.startAll()
	connection := postgresApp(srv, "")
	sys.app("shop/postgres", "postgres", map[string]string{"pgdata": srv.DataDir}, connection)
	k := startTicker(t, db, "INSERT INTO ticks DEFAULT VALUES")

	t.Run("backup records pg_backup_stop's label", func(t *testing.T) {
		run := sys.backup("shop/postgres")
		end := sys.outcome(run, 2*time.Minute)
		rec, ok := events.As[events.RestorePointRecorded](end)
		if !ok {
			t.Fatalf("run ended with %s %+v; history:\n%s", end.Type(), end.Data, history(sys.runState(run)))
		}
		p := catalogPoint(t, sys, rec.RestorePointID)
		if label := p.StepOutputs["backupmode"]["labelfile"]; !strings.Contains(label, "START WAL LOCATION") {
			t.Errorf("backup label %q: want pg_backup_stop's labelfile", label)
		}
		if rows, _, errs := k.snapshot(); rows == 0 || len(errs) > 0 {
			t.Errorf("writer: %d rows, errors %v", rows, errs)
		}
	})

	t.Run("a failure inside backup mode ends the backup session", func(t *testing.T) {
		bp := strings.Replace(bundled(t, "postgres"), "      - name: snapshot\n        kind: snapshot\n", `      - name: check
        kind: exec
        exec:
          command: [sh, -c, 'exit 1']
        noInverse: only reads
      - name: snapshot
        kind: snapshot
`, 1)
		file := sys.writeFile("postgres-failing.blueprint.yaml", bp)
		sys.app("shop/postgres-failing", file, map[string]string{"pgdata": srv.DataDir}, connection)
		run := sys.backup("shop/postgres-failing")
		end := sys.outcome(run, time.Minute)
		f, ok := events.As[events.BackupFailed](end)
		if !ok || f.FailedStep != "check" {
			t.Fatalf("run ended with %s %+v, want the check step failed", end.Type(), end.Data)
		}
		if c, ok := compensationIn(f.Compensations, "release backupmode"); !ok || c.Outcome != "succeeded" {
			t.Errorf("compensations %+v: want backup mode ended", f.Compensations)
		}
		var sessions int
		if err := db.QueryRow("SELECT count(*) FROM pg_stat_activity WHERE query ILIKE '%pg_backup_start%' AND pid <> pg_backend_pid()").Scan(&sessions); err != nil {
			t.Fatal(err)
		}
		if sessions != 0 {
			t.Errorf("%d sessions still in backup mode after the failure", sessions)
		}
	})
}

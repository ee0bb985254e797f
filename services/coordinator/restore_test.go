package coordinator_test

import (
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/tests/dbserver"
)

// restore publishes a restore to new and waits for its end.
func (s *system) restore(point events.RestorePointID, target string, only ...string) events.Event {
	s.t.Helper()
	return s.restoreRequest(events.RestoreRequested{RestorePointID: point, Target: events.RestoreTarget{Mode: "new", Name: target}, Only: only, RequestedBy: "test"})
}

// restoreRequest publishes req and waits for the restore's end.
func (s *system) restoreRequest(req events.RestoreRequested) events.Event {
	s.t.Helper()
	ev := events.New("tidemark/test", string(req.RestorePointID), req, time.Now())
	s.env.Publish(s.t, ev)
	var run events.RunID
	first := s.env.WaitFor(s.t, 30*time.Second, "restore.accepted or failed", func(e events.Event) bool {
		if e.CausationID != ev.ID {
			return false
		}
		_, a := events.As[events.RestoreAccepted](e)
		_, f := events.As[events.RestoreFailed](e)
		return a || f
	})
	if _, failed := events.As[events.RestoreFailed](first); failed {
		return first
	}
	run = first.Data.(events.RestoreAccepted).RunID
	s.t.Cleanup(func() {
		if s.t.Failed() {
			r := s.runStateOrEmpty(run)
			s.t.Logf("restore %s: %s/%s history:\n%s", run, r.Status, r.Stage, history(r))
			for _, tk := range r.Tasks {
				s.t.Logf("  task %s %s attempt %d: %s", tk.Key, tk.State, tk.Attempt, tk.Error)
			}
		}
	})
	return s.env.WaitFor(s.t, 3*time.Minute, "the end of restore "+string(run), func(e events.Event) bool {
		switch p := e.Data.(type) {
		case events.RestoreCompleted:
			return p.RunID == run
		case events.RestoreFailed:
			return p.RunID == run
		}
		return false
	})
}

type tick struct {
	id int64
	at time.Time
}

func ticks(t *testing.T, db *sql.DB, table string) []tick {
	t.Helper()
	rows, err := db.Query("SELECT id, at FROM " + table + " ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []tick
	for rows.Next() {
		var k tick
		if err := rows.Scan(&k.id, &k.at); err != nil {
			t.Fatal(err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestMariaDBConsistencyProof is the proof the team can point at: a
// ticker inserts a row every 10 ms while MariaDB is backed up under
// FLUSH TABLES WITH READ LOCK through every service; the restore point is
// restored to a new directory and a new server started on it. The restored
// rows must be a gap-free prefix of the source's, ending inside the freeze.
// The same backup without the lock is restored too, and the test says
// whether that copy happened to start.
func TestMariaDBConsistencyProof(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three MariaDB servers")
	}
	srv := dbserver.MariaDB(t)
	db, err := sql.Open("mysql", srv.MySQLDSN("")+"?parseTime=true")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{
		"CREATE DATABASE shop",
		"CREATE TABLE shop.ticks (id BIGINT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("TIDEMARK_TEST_MARIADB_PASSWORD", srv.Password)
	sys := newSystem(t)
	sys.startAll()
	connection := fmt.Sprintf("  connections:\n    primary: {driver: mysql, dsn: \"%s@tcp(%s:%d)/\", passwordFrom: {env: TIDEMARK_TEST_MARIADB_PASSWORD}}\n", srv.User, srv.Host, srv.Port)
	sys.app("shop/mariadb", "mariadb", map[string]string{"data": srv.DataDir}, connection)
	crashBP := sys.writeFile("crash-only.blueprint.yaml", `apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: crash-only}
spec:
  actions:
    backup:
      - name: snapshot
        kind: snapshot
    restore:
      - name: snapshot
        kind: snapshot
`)
	sys.app("shop/mariadb-crash", crashBP, map[string]string{"data": srv.DataDir}, connection)

	k := startTicker(t, db, "INSERT INTO shop.ticks () VALUES ()")
	time.Sleep(300 * time.Millisecond)
	run := sys.backup("shop/mariadb")
	end := sys.outcome(run, 2*time.Minute)
	rec, ok := events.As[events.RestorePointRecorded](end)
	if !ok {
		t.Fatalf("backup ended with %s %+v", end.Type(), end.Data)
	}
	crashRun := sys.backup("shop/mariadb-crash")
	crashEnd := sys.outcome(crashRun, 2*time.Minute)
	crashRec, ok := events.As[events.RestorePointRecorded](crashEnd)
	if !ok {
		t.Fatalf("crash-consistent backup ended with %s %+v", crashEnd.Type(), crashEnd.Data)
	}
	time.Sleep(100 * time.Millisecond)
	k.halt()
	source := ticks(t, db, "shop.ticks")

	var lock events.HookSucceeded
	var released events.HookReleased
	for _, e := range sys.env.Facts() {
		switch p := e.Data.(type) {
		case events.HookSucceeded:
			if p.RunID == run && p.Step == "lock" {
				lock = p
			}
		case events.HookReleased:
			if p.RunID == run && p.Step == "lock" {
				released = p
			}
		}
	}

	target := filepath.Join(t.TempDir(), "restored")
	done := sys.restore(rec.RestorePointID, target)
	if _, ok := events.As[events.RestoreCompleted](done); !ok {
		t.Fatalf("restore ended with %s %+v", done.Type(), done.Data)
	}
	restored, err := dbserver.MariaDBOn(t, filepath.Join(target, "data"), srv.Password)
	if err != nil {
		t.Fatalf("the restored MariaDB does not start: %v", err)
	}
	rdb, err := sql.Open("mysql", restored.MySQLDSN("")+"?parseTime=true")
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	got := ticks(t, rdb, "shop.ticks")
	if len(got) == 0 {
		t.Fatal("the restored table is empty")
	}
	for i, row := range got {
		if row.id != int64(i+1) {
			t.Fatalf("restored ids are not gap-free: row %d has id %d", i, row.id)
		}
		if i >= len(source) || !source[i].at.Equal(row.at) {
			t.Fatalf("restored row %d (%v) differs from the source's", row.id, row.at)
		}
	}
	last := got[len(got)-1].at
	// The last row was written before the lock was taken, and no later than
	// the lock statement's start by more than the ticker's pace.
	t.Logf("restored %d of %d rows; last row at %s; lock taken %s → %s, released after %s",
		len(got), len(source), last.Format("15:04:05.000000"), lock.StartedAt.Format("15:04:05.000000"), lock.FinishedAt.Format("15:04:05.000000"), released.HeldFor)
	if last.After(lock.FinishedAt) || last.Before(lock.StartedAt.Add(-time.Second)) {
		t.Errorf("the last restored row (%s) is not at the freeze (%s → %s)", last, lock.StartedAt, lock.FinishedAt)
	}
	if len(got) >= len(source) {
		t.Errorf("the restore has every row (%d): the ticker went on after the backup, so it should not", len(got))
	}

	crashTarget := filepath.Join(t.TempDir(), "crash-restored")
	crashDone := sys.restore(crashRec.RestorePointID, crashTarget)
	if _, ok := events.As[events.RestoreCompleted](crashDone); !ok {
		t.Fatalf("crash-consistent restore ended with %s %+v", crashDone.Type(), crashDone.Data)
	}
	if crashSrv, err := dbserver.MariaDBOn(t, filepath.Join(crashTarget, "data"), srv.Password); err != nil {
		t.Logf("WITHOUT the lock: the copy taken while the ticker wrote did not start: %v", firstLine(err))
	} else {
		cdb, _ := sql.Open("mysql", crashSrv.MySQLDSN("")+"?parseTime=true")
		defer cdb.Close()
		var n int
		err := cdb.QueryRow("SELECT count(*) FROM shop.ticks").Scan(&n)
		t.Logf("WITHOUT the lock: the copy started (InnoDB crash recovery); ticks readable: %v (%d rows)", err == nil, n)
	}
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

func TestRestoreRefusesBadRequestsBeforeChangingAnything(t *testing.T) {
	sys := newSystem(t)
	sys.startAll()
	app := newFileApp(t, sys, "shop/files", "30s", "")
	run := sys.backup(app.name)
	rec, ok := events.As[events.RestorePointRecorded](sys.outcome(run, time.Minute))
	if !ok {
		t.Fatal("backup failed")
	}
	reason := func(e events.Event) string {
		f, ok := events.As[events.RestoreFailed](e)
		if !ok {
			t.Fatalf("restore ended with %s, want restore.failed", e.Type())
		}
		return f.Reason
	}
	if r := reason(sys.restore("no-such-point", filepath.Join(t.TempDir(), "x"))); !strings.Contains(r, "does not exist") {
		t.Errorf("unknown point: %q", r)
	}
	busy := t.TempDir()
	keep := filepath.Join(busy, "precious")
	if err := os.WriteFile(keep, []byte("do not touch"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := reason(sys.restore(rec.RestorePointID, busy)); !strings.Contains(r, "not empty") {
		t.Errorf("non-empty target: %q", r)
	}
	if b, err := os.ReadFile(keep); err != nil || string(b) != "do not touch" {
		t.Errorf("the non-empty target was modified: %q %v", b, err)
	}
	if entries, _ := os.ReadDir(busy); len(entries) != 1 {
		t.Errorf("the non-empty target gained files: %d entries", len(entries))
	}
	if r := reason(sys.restore(rec.RestorePointID, filepath.Join(t.TempDir(), "y"), "logs")); !strings.Contains(r, "--only logs") || !strings.Contains(r, "data") {
		t.Errorf("unknown volume: %q", r)
	}
	if r := reason(sys.restore(rec.RestorePointID, "relative/dir")); !strings.Contains(r, "absolute") {
		t.Errorf("relative target: %q", r)
	}

	// A point whose data is gone from the repository (deleted behind
	// Tidemark's back) fails in the pre-flight: no directory is made.
	if backup2, ok := events.As[events.RestorePointRecorded](sys.outcome(sys.backup(app.name), time.Minute)); !ok {
		t.Fatal("second backup failed")
	} else {
		if err := sys.repo.DeleteSnapshot(t.Context(), string(backup2.Artifacts[0].ManifestID)); err != nil {
			t.Fatal(err)
		}
		gone := filepath.Join(t.TempDir(), "gone")
		if r := reason(sys.restore(backup2.RestorePointID, gone)); !strings.Contains(r, "cannot be read from the repository, so nothing was changed") {
			t.Errorf("deleted snapshot: %q", r)
		}
		if _, err := os.Stat(gone); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a restore of a deleted snapshot made its target: %v", err)
		}
	}

	// With --force, the volume's directory in a non-empty target is
	// replaced and its previous contents kept; other entries stay.
	if err := os.MkdirAll(filepath.Join(busy, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(busy, "data", "stale"), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	forced := sys.restoreRequest(events.RestoreRequested{RestorePointID: rec.RestorePointID, Target: events.RestoreTarget{Mode: "new", Name: busy}, Force: true})
	if _, ok := events.As[events.RestoreCompleted](forced); !ok {
		t.Fatalf("forced restore ended with %s %+v", forced.Type(), forced.Data)
	}
	if b, err := os.ReadFile(keep); err != nil || string(b) != "do not touch" {
		t.Errorf("a forced restore touched an entry outside the volumes: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(busy, "data", "stale")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the forced restore left a file the backup does not have: %v", err)
	}
	if kept, _ := filepath.Glob(filepath.Join(busy, "data.tidemark-previous-*", "stale")); len(kept) != 1 {
		t.Errorf("the replaced directory's previous contents were not kept: %v", kept)
	}

	// And a good one restores the volume byte for byte.
	target := filepath.Join(t.TempDir(), "restored")
	if done := sys.restore(rec.RestorePointID, target); done.Type() != (events.RestoreCompleted{}).EventType() {
		t.Fatalf("restore ended with %s %+v", done.Type(), done.Data)
	}
	for i := range 5 {
		want, _ := os.ReadFile(filepath.Join(app.volume, fmt.Sprintf("file-%d", i)))
		got, err := os.ReadFile(filepath.Join(target, "data", fmt.Sprintf("file-%d", i)))
		if err != nil || string(got) != string(want) {
			t.Errorf("file-%d restored wrong: %v", i, err)
		}
	}
}

// TestPostgreSQLLogicalConsistencyProof backs up a PostgreSQL database with
// pg_dump while a ticker writes, then loads the dump into a new database
// through the stream (no file on disk): the rows must be a gap-free prefix
// of the source's, ending while the dump ran.
func TestPostgreSQLLogicalConsistencyProof(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	srv, db := startPostgreSQL(t, "CREATE TABLE ticks (id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())")
	sys := newSystem(t)
	sys.startAll()
	sys.app("shop/pg-logical", "postgres-logical", nil, fmt.Sprintf(`  params: {host: "%s", port: "%d", user: "%s", database: postgres}
  secrets:
    password: {env: TIDEMARK_TEST_PG_PASSWORD}
`, srv.Host, srv.Port, srv.User))
	k := startTicker(t, db, "INSERT INTO ticks DEFAULT VALUES")
	time.Sleep(300 * time.Millisecond)
	run := sys.backup("shop/pg-logical")
	end := sys.outcome(run, 2*time.Minute)
	rec, ok := events.As[events.RestorePointRecorded](end)
	if !ok {
		t.Fatalf("backup ended with %s %+v", end.Type(), end.Data)
	}
	if rec.Consistency != "logical" || len(rec.Artifacts) != 1 || rec.Artifacts[0].Name != "database.pgdump" {
		t.Errorf("restore point %+v: want one logical dump", rec)
	}
	time.Sleep(100 * time.Millisecond)
	k.halt()
	var dump events.HookSucceeded
	for _, e := range sys.env.Facts() {
		if p, ok := events.As[events.HookSucceeded](e); ok && p.RunID == run && p.Step == "dump" {
			dump = p
		}
	}
	source := ticks(t, db, "ticks")

	if _, err := db.Exec("CREATE DATABASE restored"); err != nil {
		t.Fatal(err)
	}
	done := sys.restoreRequest(events.RestoreRequested{
		RestorePointID: rec.RestorePointID, Target: events.RestoreTarget{Mode: "new"}, Params: map[string]string{"database": "restored"},
	})
	if f, failed := events.As[events.RestoreFailed](done); failed {
		t.Fatalf("restore failed: %s", f.Reason)
	}
	rdb, err := sql.Open("pgx", srv.PostgresDSN("restored"))
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	got := ticks(t, rdb, "ticks")
	if len(got) == 0 || len(got) >= len(source) {
		t.Fatalf("restored %d rows of %d: want a non-empty prefix", len(got), len(source))
	}
	for i, row := range got {
		if row.id != int64(i+1) || !row.at.Equal(source[i].at) {
			t.Fatalf("restored row %d (id %d) is not the source's row %d", i, row.id, i+1)
		}
	}
	last := got[len(got)-1].at
	t.Logf("restored %d of %d rows; last row at %s; dump ran %s → %s", len(got), len(source), last.Format("15:04:05.000000"), dump.StartedAt.Format("15:04:05.000000"), dump.FinishedAt.Format("15:04:05.000000"))
	if last.After(dump.FinishedAt) || last.Before(dump.StartedAt.Add(-time.Second)) {
		t.Errorf("the last restored row (%s) is not from while the dump ran (%s → %s)", last, dump.StartedAt, dump.FinishedAt)
	}
}

// TestPostgreSQLPhysicalConsistencyProof backs up PostgreSQL with the
// bundled physical blueprint (pg_backup_start, snapshot, pg_backup_stop,
// the WAL from start to end) while a ticker writes; the point is restored
// to a new directory and a new server started on it. PostgreSQL must
// recover from the backup label to a consistent state, and the rows must be
// a gap-free prefix of the source's ending inside backup mode. A snapshot
// taken without backup mode is restored too, and the test says whether it
// happened to start.
func TestPostgreSQLPhysicalConsistencyProof(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three PostgreSQL servers")
	}
	srv, db := startPostgreSQL(t, "CREATE TABLE ticks (id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())")
	sys := newSystem(t)
	sys.startAll()
	sys.app("shop/postgres", "postgres", map[string]string{"pgdata": srv.DataDir}, postgresApp(srv, ""))
	crashBP := sys.writeFile("crash-only.blueprint.yaml", `apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: crash-only}
spec:
  actions:
    backup:
      - name: snapshot
        kind: snapshot
    restore:
      - name: snapshot
        kind: snapshot
`)
	sys.app("shop/postgres-crash", crashBP, map[string]string{"pgdata": srv.DataDir}, "")

	k := startTicker(t, db, "INSERT INTO ticks DEFAULT VALUES")
	time.Sleep(300 * time.Millisecond)
	run := sys.backup("shop/postgres")
	rec, ok := events.As[events.RestorePointRecorded](sys.outcome(run, 2*time.Minute))
	if !ok {
		t.Fatalf("backup failed; history:\n%s", history(sys.runState(run)))
	}
	crashRun := sys.backup("shop/postgres-crash")
	crashRec, ok := events.As[events.RestorePointRecorded](sys.outcome(crashRun, 2*time.Minute))
	if !ok {
		t.Fatalf("crash-consistent backup failed; history:\n%s", history(sys.runState(crashRun)))
	}
	time.Sleep(100 * time.Millisecond)
	k.halt()
	source := ticks(t, db, "ticks")

	var names []string
	for _, a := range rec.Artifacts {
		names = append(names, a.Name)
	}
	if strings.Join(names, ",") != "pg_wal.tar,pgdata" || rec.Consistency != "application" {
		t.Errorf("restore point holds %v (%s), want the data directory and its WAL, application-consistent", names, rec.Consistency)
	}
	var inBackupMode events.HookSucceeded
	var stopped time.Time
	for _, e := range sys.env.Facts() {
		switch p := e.Data.(type) {
		case events.HookSucceeded:
			if p.RunID == run && p.Step == "backupmode" {
				inBackupMode = p
			}
		case events.HookReleased:
			if p.RunID == run && p.Step == "backupmode" {
				stopped = e.Time
			}
		}
	}

	got := restorePostgreSQLPhysical(t, sys, srv, rec.RestorePointID, source)
	last := got[len(got)-1].at
	t.Logf("restored %d of %d rows; last row at %s; backup mode %s → %s",
		len(got), len(source), last.Format("15:04:05.000000"), inBackupMode.StartedAt.Format("15:04:05.000000"), stopped.Format("15:04:05.000000"))
	// PostgreSQL keeps writing in backup mode and the WAL runs to
	// pg_backup_stop: the last row is from inside backup mode.
	if last.Before(inBackupMode.StartedAt) || last.After(stopped) {
		t.Errorf("the last restored row (%s) is not from inside backup mode (%s → %s)", last, inBackupMode.StartedAt, stopped)
	}

	crashTarget := filepath.Join(dbserver.PostgreSQLDir(t), "crash-restored")
	crashDone := sys.restore(crashRec.RestorePointID, crashTarget)
	if _, ok := events.As[events.RestoreCompleted](crashDone); !ok {
		t.Fatalf("crash-consistent restore ended with %s %+v", crashDone.Type(), crashDone.Data)
	}
	// The copy holds the source's postmaster.pid; without backup mode's
	// restore steps nobody removes it.
	_ = os.Remove(filepath.Join(crashTarget, "pgdata", "postmaster.pid"))
	if crashSrv, err := dbserver.PostgreSQLOn(t, filepath.Join(crashTarget, "pgdata"), srv.Password); err != nil {
		t.Logf("WITHOUT backup mode: the copy taken while the ticker wrote did not start: %v", firstLine(err))
	} else {
		cdb, _ := sql.Open("pgx", crashSrv.PostgresDSN(""))
		defer cdb.Close()
		var n int
		err := cdb.QueryRow("SELECT count(*) FROM ticks").Scan(&n)
		t.Logf("WITHOUT backup mode: the copy started (crash recovery from the latest checkpoint in the copy, which nothing guarantees is consistent); ticks readable: %v (%d rows)", err == nil, n)
	}
}

// shellQuote joins argv into one sh command line.
func shellQuote(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// TestMariaDBRestoreToProduction restores a backup over the live server's
// own data directory with the bundled mariadb blueprint: the server is
// stopped, its directory replaced by the verified copy (the old one kept
// beside it), started again. A bad change made after the backup is gone.
// When a step after the swap fails, the stop step's inverse starts the
// server again anyway.
func TestMariaDBRestoreToProduction(t *testing.T) {
	if testing.Short() {
		t.Skip("starts MariaDB")
	}
	srv := dbserver.MariaDB(t)
	db, err := sql.Open("mysql", srv.MySQLDSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{
		"CREATE DATABASE shop",
		"CREATE TABLE shop.orders (id INT PRIMARY KEY, note VARCHAR(40)) ENGINE=InnoDB",
		"INSERT INTO shop.orders SELECT seq, CONCAT('order ', seq) FROM shop.seq_1_to_100",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	// The blueprint stops the server by its pid and starts it detached, as
	// systemctl would; this test then owns whatever it started.
	pidFile := ""
	for _, a := range srv.StartCommand() {
		if p, ok := strings.CutPrefix(a, "--pid-file="); ok {
			pidFile = p
		}
	}
	killStartedByBlueprint(t, srv, pidFile)
	stop := fmt.Sprintf(`pid=$(cat %s); kill -TERM "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done`, shellQuote([]string{pidFile}))
	start := fmt.Sprintf(`setsid %s >>%s 2>&1 </dev/null &`, shellQuote(srv.StartCommand()), shellQuote([]string{srv.LogPath()}))

	t.Setenv("TIDEMARK_TEST_MARIADB_PASSWORD", srv.Password)
	sys := newSystem(t)
	sys.startAll()
	app := fmt.Sprintf(`  connections:
    primary: {driver: mysql, dsn: "%s@tcp(%s:%d)/", passwordFrom: {env: TIDEMARK_TEST_MARIADB_PASSWORD}}
  params:
    stop: %q
    start: %q
`, srv.User, srv.Host, srv.Port, stop, start)
	sys.app("shop/mariadb", "mariadb", map[string]string{"data": srv.DataDir}, app)
	rec, ok := events.As[events.RestorePointRecorded](sys.outcome(sys.backup("shop/mariadb"), 2*time.Minute))
	if !ok {
		t.Fatal("backup failed")
	}

	// A bad change after the backup.
	if _, err := db.Exec("DELETE FROM shop.orders WHERE id > 10"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO shop.orders VALUES (1000, 'after the backup')"); err != nil {
		t.Fatal(err)
	}

	done := sys.restoreRequest(events.RestoreRequested{RestorePointID: rec.RestorePointID, Target: events.RestoreTarget{Mode: "production"}, RequestedBy: "test"})
	if f, failed := events.As[events.RestoreFailed](done); failed {
		t.Fatalf("restore to production failed: %s", f.Reason)
	}
	count := func() (n int, max int, err error) {
		fresh, err := sql.Open("mysql", srv.MySQLDSN(""))
		if err != nil {
			return 0, 0, err
		}
		defer fresh.Close()
		err = fresh.QueryRow("SELECT count(*), max(id) FROM shop.orders").Scan(&n, &max)
		return n, max, err
	}
	if n, max, err := count(); err != nil || n != 100 || max != 100 {
		t.Fatalf("after the restore: %d rows, max id %d, %v; want the backup's 100 rows", n, max, err)
	}
	previous, _ := filepath.Glob(srv.DataDir + ".tidemark-previous-*")
	if len(previous) != 1 {
		t.Fatalf("previous contents kept at %v, want one directory", previous)
	}
	if _, err := os.Stat(filepath.Join(previous[0], "shop")); err != nil {
		t.Errorf("the kept previous contents lack the shop database: %v", err)
	}
	run := done.Data.(events.RestoreCompleted).RunID
	if h := history(sys.runState(run)); !strings.Contains(h, "kept at "+previous[0]) {
		t.Errorf("the run's history does not say where the previous contents are:\n%s", h)
	}

	t.Run("a point whose data is gone stops nothing", func(t *testing.T) {
		rec, ok := events.As[events.RestorePointRecorded](sys.outcome(sys.backup("shop/mariadb"), 2*time.Minute))
		if !ok {
			t.Fatal("backup failed")
		}
		if err := sys.repo.DeleteSnapshot(t.Context(), string(rec.Artifacts[0].ManifestID)); err != nil {
			t.Fatal(err)
		}
		done := sys.restoreRequest(events.RestoreRequested{RestorePointID: rec.RestorePointID, Target: events.RestoreTarget{Mode: "production"}, RequestedBy: "test"})
		f, failed := events.As[events.RestoreFailed](done)
		if !failed || !strings.Contains(f.Reason, "nothing was changed") {
			t.Fatalf("restore ended with %s %+v, want a pre-flight failure", done.Type(), done.Data)
		}
		if h := history(sys.runState(f.RunID)); strings.Contains(h, "step stop") {
			t.Errorf("the server was stopped for a restore that could not read its data:\n%s", h)
		}
		if n, _, err := count(); err != nil || n != 100 {
			t.Errorf("the server answers %d rows, %v; want it untouched", n, err)
		}
	})

	t.Run("a failure after the swap still starts the server", func(t *testing.T) {
		bp := strings.Replace(bundled(t, "mariadb"), "      - name: start\n", `      - name: check
        kind: exec
        exec:
          command: [sh, -c, 'echo "post-restore check failed" >&2; exit 1']
      - name: start
`, 1)
		file := sys.writeFile("mariadb-failing-restore.blueprint.yaml", bp)
		sys.app("shop/mariadb-failing", file, map[string]string{"data": srv.DataDir}, app)
		rec, ok := events.As[events.RestorePointRecorded](sys.outcome(sys.backup("shop/mariadb-failing"), 2*time.Minute))
		if !ok {
			t.Fatal("backup failed")
		}
		done := sys.restoreRequest(events.RestoreRequested{RestorePointID: rec.RestorePointID, Target: events.RestoreTarget{Mode: "production"}, RequestedBy: "test"})
		f, failed := events.As[events.RestoreFailed](done)
		if !failed || !strings.Contains(f.Reason, "post-restore check failed") {
			t.Fatalf("restore ended with %s %+v, want the check's failure", done.Type(), done.Data)
		}
		if c, ok := compensationIn(f.Compensations, "stop-inverse"); !ok || c.Outcome != "succeeded" {
			t.Errorf("compensations %+v: want the stop step undone (the server started)", f.Compensations)
		}
		var n int
		var err error
		for range 100 {
			if n, _, err = count(); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil || n != 100 {
			t.Errorf("after the failed restore the server answers %d rows, %v; want it up with the restored 100", n, err)
		}
	})
}

// TestPostgreSQLRestoreToProduction restores a physical PostgreSQL backup
// over the live server's own data directory with the bundled blueprint:
// stopped, replaced, the backup label and WAL written, started, recovered.
func TestPostgreSQLRestoreToProduction(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	srv, db := startPostgreSQL(t, "CREATE TABLE orders (id INT PRIMARY KEY, note TEXT); INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 100) g")
	pidFile := filepath.Join(srv.DataDir, "postmaster.pid")
	killStartedByBlueprint(t, srv, pidFile)
	stop := fmt.Sprintf(`pid=$(head -1 %s); kill -INT "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done`, shellQuote([]string{pidFile}))
	argv := srv.StartCommand()
	if u := srv.OSUser(); u != "" {
		argv = append([]string{"runuser", "-u", u, "--"}, argv...)
	}
	start := fmt.Sprintf(`setsid %s >>%s 2>&1 </dev/null &`, shellQuote(argv), shellQuote([]string{srv.LogPath()}))
	sys := newSystem(t)
	sys.startAll()
	sys.app("shop/postgres", "postgres", map[string]string{"pgdata": srv.DataDir}, postgresApp(srv, fmt.Sprintf("    stop: %q\n    start: %q\n", stop, start)))
	rec, ok := events.As[events.RestorePointRecorded](sys.outcome(sys.backup("shop/postgres"), 2*time.Minute))
	if !ok {
		t.Fatal("backup failed")
	}
	if _, err := db.Exec("DELETE FROM orders WHERE id > 10; INSERT INTO orders VALUES (1000, 'after the backup')"); err != nil {
		t.Fatal(err)
	}
	done := sys.restoreRequest(events.RestoreRequested{RestorePointID: rec.RestorePointID, Target: events.RestoreTarget{Mode: "production"}, RequestedBy: "test"})
	if f, failed := events.As[events.RestoreFailed](done); failed {
		t.Fatalf("restore to production failed: %s", f.Reason)
	}
	fresh, err := sql.Open("pgx", srv.PostgresDSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	var n, maxID int
	if err := fresh.QueryRow("SELECT count(*), max(id) FROM orders").Scan(&n, &maxID); err != nil || n != 100 || maxID != 100 {
		t.Fatalf("after the restore: %d rows, max id %d, %v; want the backup's 100", n, maxID, err)
	}
	if log, _ := os.ReadFile(srv.LogPath()); !strings.Contains(string(log), "consistent recovery state reached") {
		t.Errorf("the restarted server did not recover from the backup label")
	}
	if previous, _ := filepath.Glob(srv.DataDir + ".tidemark-previous-*"); len(previous) != 1 {
		t.Errorf("previous contents kept at %v, want one directory", previous)
	}
}

// startPostgreSQL starts a PostgreSQL server, opens its postgres database
// (closed at the test's end), runs setup on it, and puts the password where
// postgresApp's connection reads it.
func startPostgreSQL(t *testing.T, setup string) (*dbserver.Server, *sql.DB) {
	t.Helper()
	srv := dbserver.PostgreSQL(t)
	db, err := sql.Open("pgx", srv.PostgresDSN(""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.Exec(setup); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TIDEMARK_TEST_PG_PASSWORD", srv.Password)
	return srv, db
}

// postgresApp is the Application text for srv with the bundled physical
// blueprint: the primary connection, pgdata, and extra params lines.
func postgresApp(srv *dbserver.Server, extraParams string) string {
	return fmt.Sprintf(`  connections:
    primary:
      driver: postgres
      dsn: "postgres://%s@%s:%d/postgres?sslmode=disable"
      passwordFrom: {env: TIDEMARK_TEST_PG_PASSWORD}
  params:
    pgdata: %s
%s`, srv.User, srv.Host, srv.Port, srv.DataDir, extraParams)
}

// killStartedByBlueprint kills, at the test's end, the server whose pid is
// in pidFile if the blueprint started it (it is not srv's own process).
func killStartedByBlueprint(t *testing.T, srv *dbserver.Server, pidFile string) {
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidFile); err == nil {
			var pid int
			if _, err := fmt.Sscan(string(b), &pid); err == nil && pid > 0 && pid != srv.PID() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
}

// A data mover holding the wrong repository password fails the restore in
// its pre-flight: nothing is written, and the password is in no event.
func TestRestoreWithAWrongRepositoryPasswordChangesNothing(t *testing.T) {
	sys := newSystem(t)
	sys.startAll()
	app := newFileApp(t, sys, "shop/files", "30s", "")
	rec, ok := events.As[events.RestorePointRecorded](sys.outcome(sys.backup(app.name), time.Minute))
	if !ok {
		t.Fatal("backup failed")
	}
	const wrong = "not-the-repository-password"
	sys.stop("datamover")
	t.Setenv(repository.EnvPath, sys.repo.Path())
	t.Setenv(repository.EnvPassword, wrong)
	sys.start("datamover-from-environment")

	target := filepath.Join(t.TempDir(), "restored")
	done := sys.restore(rec.RestorePointID, target)
	f, failed := events.As[events.RestoreFailed](done)
	if !failed || !strings.Contains(f.Reason, "nothing was changed") || !strings.Contains(f.Reason, "password is wrong") {
		t.Fatalf("restore ended with %s %+v, want a pre-flight failure naming the password", done.Type(), done.Data)
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the restore target was made: %v", err)
	}
	for _, e := range sys.env.Facts() {
		if strings.Contains(fmt.Sprint(e.Data), wrong) {
			t.Errorf("a %s event carries the password", e.Type())
		}
	}
}

// editsBlueprint is the bundled postgres blueprint with its restore's
// backuplabel exec step and wal dump step replaced by edits on the
// restore's snapshot step: what the Kubernetes variant does, where no pod
// runs to exec into while the volume is filled.
func editsBlueprint(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("../../blueprints/postgres/blueprint.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	restore := strings.Index(s, "    restore:\n")
	i, j := strings.Index(s[restore:], "      - name: snapshot\n"), strings.Index(s[restore:], "      - name: start\n")
	i, j = i+restore, j+restore
	if restore < 0 || i < restore || j < i || !strings.Contains(s[i:j], "name: backuplabel") || !strings.Contains(s[i:j], "name: wal") {
		t.Fatal("the bundled postgres blueprint changed shape; update editsBlueprint")
	}
	return s[:i] + `      - name: snapshot
        kind: snapshot
        snapshot:
          edits:
            - volume: pgdata
              remove: [postmaster.pid, postmaster.opts, "pg_wal/????????????????????????"]
              files:
                backup_label: '{{ .Backup.Steps.backupmode.Output.labelfile }}'
              extract:
                - artifact: pg_wal.tar
                  into: pg_wal
` + s[j:]
}

// A PostgreSQL base backup restored through volume edits: the data mover
// writes the backup label and unpacks the WAL into the restored copy
// before any later step, and the copy recovers from the label.
func TestPostgreSQLPhysicalRestoreThroughVolumeEdits(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two PostgreSQL servers")
	}
	srv, db := startPostgreSQL(t, "CREATE TABLE ticks (id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())")
	sys := newSystem(t)
	sys.startAll()
	bp := sys.writeFile("postgres-edits.blueprint.yaml", strings.Replace(editsBlueprint(t), "name: postgres\n", "name: postgres-edits\n", 1))
	sys.app("shop/postgres", bp, map[string]string{"pgdata": srv.DataDir}, postgresApp(srv, ""))
	k := startTicker(t, db, "INSERT INTO ticks DEFAULT VALUES")
	time.Sleep(300 * time.Millisecond)
	run := sys.backup("shop/postgres")
	rec, ok := events.As[events.RestorePointRecorded](sys.outcome(run, 2*time.Minute))
	if !ok {
		t.Fatalf("backup failed; history:\n%s", history(sys.runState(run)))
	}
	time.Sleep(100 * time.Millisecond)
	k.halt()
	source := ticks(t, db, "ticks")

	got := restorePostgreSQLPhysical(t, sys, srv, rec.RestorePointID, source)
	t.Logf("restored %d of %d rows through volume edits", len(got), len(source))
}

// restorePostgreSQLPhysical restores a PostgreSQL base backup to a new data
// directory, starts a server on it and checks that it recovered from the
// backup label and holds a non-empty, gap-free prefix of source's ticks.
func restorePostgreSQLPhysical(t *testing.T, sys *system, srv *dbserver.Server, point events.RestorePointID, source []tick) []tick {
	t.Helper()
	target := filepath.Join(dbserver.PostgreSQLDir(t), "restored")
	pgdata := filepath.Join(target, "pgdata")
	done := sys.restoreRequest(events.RestoreRequested{
		RestorePointID: point, Target: events.RestoreTarget{Mode: "new", Name: target},
		Params: map[string]string{"pgdata": pgdata},
	})
	if f, failed := events.As[events.RestoreFailed](done); failed {
		t.Fatalf("restore failed: %s", f.Reason)
	}
	if _, err := os.Stat(filepath.Join(pgdata, "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("postmaster.pid in the restored copy: %v, want removed", err)
	}
	restored, err := dbserver.PostgreSQLOn(t, pgdata, srv.Password)
	if err != nil {
		t.Fatalf("the restored PostgreSQL does not start: %v", err)
	}
	if log, _ := os.ReadFile(restored.LogPath()); !strings.Contains(string(log), "consistent recovery state reached") {
		t.Errorf("the restored server's log does not say it recovered from the backup label:\n%s", log)
	}
	rdb, err := sql.Open("pgx", restored.PostgresDSN(""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	got := ticks(t, rdb, "ticks")
	if len(got) == 0 || len(got) >= len(source) {
		t.Fatalf("restored %d rows of %d: want a non-empty prefix", len(got), len(source))
	}
	for i, row := range got {
		if row.id != int64(i+1) || !row.at.Equal(source[i].at) {
			t.Fatalf("restored row %d (id %d) is not the source's row %d", i, row.id, i+1)
		}
	}
	return got
}

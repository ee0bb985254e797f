package main

import (
	"bytes"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/tests/dbserver"
)

// cli runs `tidemark ARGS` against the cluster and returns its output.
func (c *cluster) cli(args ...string) (string, error) {
	c.t.Helper()
	cmd := exec.Command(os.Args[0], append(args, "--nats-url", c.natsURL)...)
	cmd.Env = append(os.Environ(), "TIDEMARK_TEST_RUN_MAIN=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// The consistency proof with every service in its own process and the
// user's commands: `tidemark backup --wait` of a PostgreSQL under a 10 ms
// ticker with the bundled physical blueprint, `tidemark restore --to new
// --wait`, a new server on the copy. It must recover from the backup label
// and hold a gap-free prefix of the rows ending inside backup mode.
func TestPostgreSQLProofAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and six processes")
	}
	d := startPostgreSQL(t)
	if _, err := d.db.Exec("CREATE TABLE ticks (id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())"); err != nil {
		t.Fatal(err)
	}
	c := newClusterWith(t, "5m")
	c.writeFile("postgres.app.yaml", fmt.Sprintf(`apiVersion: tidemark.io/v1alpha1
kind: Application
metadata: {name: shop/postgres}
spec:
  blueprint: postgres
  volumes:
    pgdata: %s
  params:
    pgdata: %s
%s`, d.srv.DataDir, d.srv.DataDir, d.connection))

	tick := startDemoTicker(d.db)
	t.Cleanup(tick.stop)
	time.Sleep(300 * time.Millisecond)
	out, err := c.cli("backup", "--app", "shop/postgres", "--wait", "--timeout", "3m")
	t.Logf("tidemark backup --wait:\n%s", out)
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	m := regexp.MustCompile(`restore point (\S+) recorded \(application-consistent\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatal("the backup's output names no application-consistent restore point")
	}
	time.Sleep(100 * time.Millisecond)
	tick.stop()
	source, err := readTicks(t.Context(), d.db)
	if err != nil {
		t.Fatal(err)
	}

	target := filepath.Join(dbserver.PostgreSQLDir(t), "restored")
	pgdata := filepath.Join(target, "pgdata")
	out, err = c.cli("restore", m[1], "--to", "new", "--target", target, "--param", "pgdata="+pgdata, "--wait", "--timeout", "3m")
	t.Logf("tidemark restore --wait:\n%s", out)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	restored, err := dbserver.PostgreSQLOn(t, pgdata, d.srv.Password)
	if err != nil {
		t.Fatalf("the restored PostgreSQL does not start: %v", err)
	}
	if log, _ := os.ReadFile(restored.LogPath()); !bytes.Contains(log, []byte("consistent recovery state reached")) {
		t.Errorf("the restored server did not recover from the backup label:\n%s", log)
	}
	rdb, err := sql.Open("pgx", restored.PostgresDSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	got, err := readTicks(t.Context(), rdb)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkPrefix(source, got); err != nil {
		t.Fatal(err)
	}
	var started, stopped time.Time
	c.factsMu.Lock()
	facts := append([]events.Event(nil), c.facts...)
	c.factsMu.Unlock()
	for _, e := range facts {
		switch p := e.Data.(type) {
		case events.HookSucceeded:
			if p.Step == "backupmode" {
				started = p.StartedAt
			}
		case events.HookReleased:
			if p.Step == "backupmode" {
				stopped = e.Time
			}
		}
	}
	last := got[len(got)-1].at
	t.Logf("restored %d of %d rows; last row at %s; backup mode %s → %s", len(got), len(source), last.Format("15:04:05.000000"), started.Format("15:04:05.000000"), stopped.Format("15:04:05.000000"))
	if last.Before(started) || last.After(stopped) {
		t.Errorf("the last restored row (%s) is not from inside backup mode (%s → %s)", last, started, stopped)
	}
}

package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"github.com/tidemark-dev/tidemark/tests/bustest"
	"github.com/tidemark-dev/tidemark/tests/dbserver"
)

// A hookrunner process killed with SIGKILL while it holds FLUSH TABLES WITH
// READ LOCK must not leave the database locked: the lock lives in the
// process's session, and the session dies with the process.
func TestKilledHookrunnerLeavesNoLockBehind(t *testing.T) {
	env := bustest.Start(t)
	srv := dbserver.MariaDB(t)
	appsDir := t.TempDir()
	app := fmt.Sprintf(`apiVersion: tidemark.io/v1alpha1
kind: Application
metadata: {name: shop/mariadb}
spec:
  blueprint: mariadb
  connections:
    primary: {driver: mysql, dsn: "%s@tcp(%s:%d)/", passwordFrom: {env: SHOP_DB_PASSWORD}}
`, srv.User, srv.Host, srv.Port)
	if err := os.WriteFile(filepath.Join(appsDir, "shop.yaml"), []byte(app), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SHOP_DB_PASSWORD", srv.Password) // inherited by the subprocess
	p := startTidemark(t, "serve", "--services", "hookrunner", "--nats-url", env.Server.ClientURL(),
		"--apps-dir", appsDir, "--instance-id", "doomed", "--data-dir", t.TempDir(),
		"--listen", "127.0.0.1:0", "--log-format", "json")
	p.logField(t, "tidemark serving", "http")

	db, err := sql.Open("mysql", srv.MySQLDSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{"CREATE DATABASE shop", "CREATE TABLE shop.orders (id INT PRIMARY KEY)"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	spec, _ := json.Marshal(blueprint.SQLSpec{Connection: "primary", Statements: []string{"FLUSH TABLES WITH READ LOCK"}, Hold: true, Release: []string{"UNLOCK TABLES"}})
	hold := events.Duration(10 * time.Minute)
	env.Publish(t, events.New("tidemark/test", "run-kill", events.HookRequested{
		RunID: "run-kill", Application: "shop/mariadb", Step: "lock", Kind: "sql", Spec: spec,
		Timeout: events.Duration(30 * time.Second), IdempotencyKey: "run-kill/lock", HoldFor: &hold,
	}, time.Now()))
	env.WaitFor(t, 60*time.Second, "the lock", bustest.Step[events.HookSucceeded]("run-kill", "lock"))

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		_, err := db.ExecContext(ctx, "INSERT INTO shop.orders VALUES (1)")
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("INSERT finished while the lock was held: %v", err)
	case <-time.After(time.Second):
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("INSERT after the hookrunner died: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the database stayed locked after the hookrunner was killed")
	}

	// Nobody reads the dead holder's releases any more. Another
	// hookrunner sees its word run out and answers for its lock, so that
	// the run waiting for the release learns at once that the lock ended.
	killed := time.Now()
	startTidemark(t, "serve", "--services", "hookrunner", "--nats-url", env.Server.ClientURL(),
		"--apps-dir", appsDir, "--instance-id", "survivor", "--data-dir", t.TempDir(),
		"--listen", "127.0.0.1:0", "--log-format", "json").logField(t, "tidemark serving", "http")
	ev := env.WaitFor(t, 60*time.Second, "hook.released of the dead holder's lock", bustest.Step[events.HookReleased]("run-kill", "lock"))
	r, _ := events.As[events.HookReleased](ev)
	if r.By != "disconnect" || !strings.Contains(r.Error, "doomed") {
		t.Fatalf("hook.released %+v, want by disconnect, naming the lost holder", r)
	}
	t.Logf("hook.released (disconnect) %v after the kill", time.Since(killed).Round(time.Millisecond))
	// Once only, however many instances look.
	time.Sleep(5 * time.Second)
	n := 0
	for _, f := range env.Facts() {
		if x, ok := events.As[events.HookReleased](f); ok && x.RunID == "run-kill" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d hook.released for the lost lock, want 1", n)
	}
}

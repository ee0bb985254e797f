package dbserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openSQL(t *testing.T, driver, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatalf("sql.Open(%s): %v", driver, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// roundTrip creates a table, inserts a row and reads it back.
func roundTrip(t *testing.T, ctx context.Context, db *sql.DB, placeholder string) {
	t.Helper()
	if _, err := db.ExecContext(ctx, "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL)"); err != nil {
		t.Fatalf("create table: %v", err)
	}
	ins := "INSERT INTO items (id, name) VALUES (?, ?)" // MySQL
	if placeholder == "$" {
		ins = "INSERT INTO items (id, name) VALUES ($1, $2)" // PostgreSQL
	}
	if _, err := db.ExecContext(ctx, ins, 42, "tide"); err != nil {
		t.Fatalf("insert: %v", err)
	}
	var name string
	if err := db.QueryRowContext(ctx, "SELECT name FROM items WHERE id = 42").Scan(&name); err != nil {
		t.Fatalf("select: %v", err)
	}
	if name != "tide" {
		t.Fatalf("read back %q, want %q", name, "tide")
	}
}

func TestMariaDB(t *testing.T) {
	t.Parallel()
	s := MariaDB(t)
	ctx := ctxT(t)

	if s.Host != "127.0.0.1" || s.Port == 0 || s.User != "root" || s.Password == "" || s.DataDir == "" {
		t.Fatalf("incomplete server description: %+v", s)
	}
	if want := fmt.Sprintf("root:%s@tcp(127.0.0.1:%d)/app", s.Password, s.Port); s.MySQLDSN("app") != want {
		t.Fatalf("MySQLDSN = %q, want %q", s.MySQLDSN("app"), want)
	}
	if _, err := os.Stat(s.DataDir); err != nil {
		t.Fatalf("data dir: %v", err)
	}

	admin := openSQL(t, "mysql", s.MySQLDSN(""))
	var version string
	if err := admin.QueryRowContext(ctx, "SELECT VERSION()").Scan(&version); err != nil {
		t.Fatalf("SELECT VERSION(): %v", err)
	}
	if !strings.Contains(strings.ToLower(version), "mariadb") {
		t.Fatalf("VERSION() = %q, want a MariaDB server", version)
	}
	t.Logf("server version %s", version)
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE app"); err != nil {
		t.Fatalf("create database: %v", err)
	}
	// root over TCP can grant (ALL PRIVILEGES WITH GRANT OPTION).
	if _, err := admin.ExecContext(ctx, "CREATE USER 'app'@'%' IDENTIFIED BY 'apppw'"); err != nil {
		t.Fatalf("create user: %v", err)
	}
	if _, err := admin.ExecContext(ctx, "GRANT ALL ON app.* TO 'app'@'%'"); err != nil {
		t.Fatalf("grant: %v", err)
	}

	roundTrip(t, ctx, openSQL(t, "mysql", s.MySQLDSN("app")), "?")

	// The password is required: a wrong one and none at all are refused.
	for _, dsn := range []string{
		fmt.Sprintf("root:wrong@tcp(127.0.0.1:%d)/", s.Port),
		fmt.Sprintf("root@tcp(127.0.0.1:%d)/", s.Port),
		fmt.Sprintf("root:@tcp(localhost:%d)/", s.Port),
	} {
		err := openSQL(t, "mysql", dsn).PingContext(ctx)
		var me *mysql.MySQLError
		if !errors.As(err, &me) || me.Number != 1045 {
			t.Fatalf("ping %s: got %v, want access denied (1045)", strings.Replace(dsn, s.Password, "***", 1), err)
		}
	}
}

func TestMariaDBKillRestart(t *testing.T) {
	t.Parallel()
	s := MariaDB(t)
	ctx := ctxT(t)
	admin := openSQL(t, "mysql", s.MySQLDSN(""))
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE app"); err != nil {
		t.Fatalf("create database: %v", err)
	}
	db := openSQL(t, "mysql", s.MySQLDSN("app"))
	roundTrip(t, ctx, db, "?")

	s.Kill()
	if err := openSQL(t, "mysql", s.MySQLDSN("app")).PingContext(ctx); err == nil {
		t.Fatal("ping succeeded after Kill")
	}
	restartOnTakenPort(t, s)
	var name string
	if err := openSQL(t, "mysql", s.MySQLDSN("app")).QueryRowContext(ctx, "SELECT name FROM items WHERE id = 42").Scan(&name); err != nil || name != "tide" {
		t.Fatalf("after crash and restart: name=%q err=%v, want the committed row", name, err)
	}
}

func TestPostgreSQL(t *testing.T) {
	t.Parallel()
	s := PostgreSQL(t)
	ctx := ctxT(t)

	if s.Host != "127.0.0.1" || s.Port == 0 || s.User == "" || s.Password == "" || s.DataDir == "" {
		t.Fatalf("incomplete server description: %+v", s)
	}
	if want := fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/app?sslmode=disable", s.User, s.Password, s.Port); s.PostgresDSN("app") != want {
		t.Fatalf("PostgresDSN = %q, want %q", s.PostgresDSN("app"), want)
	}

	conn, err := pgx.Connect(ctx, s.PostgresDSN("postgres"))
	if err != nil {
		t.Fatalf("pgx.Connect: %v", err)
	}
	defer conn.Close(context.Background())
	var walLevel string
	var super bool
	if err := conn.QueryRow(ctx, "SELECT current_setting('wal_level'), rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&walLevel, &super); err != nil {
		t.Fatalf("query settings: %v", err)
	}
	if walLevel != "replica" || !super {
		t.Fatalf("wal_level=%q superuser=%v, want replica and true", walLevel, super)
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE app"); err != nil {
		t.Fatalf("create database: %v", err)
	}

	// database/sql through pgx's stdlib driver.
	roundTrip(t, ctx, openSQL(t, "pgx", s.PostgresDSN("app")), "$")

	// The password is required over TCP: a wrong one and none at all are
	// refused (a URL without a password makes pgx send an empty one, which
	// the server rejects like any wrong password).
	for _, dsn := range []string{
		fmt.Sprintf("postgres://%s:wrong@127.0.0.1:%d/postgres?sslmode=disable", s.User, s.Port),
		fmt.Sprintf("postgres://%s@127.0.0.1:%d/postgres?sslmode=disable&passfile=/nonexistent", s.User, s.Port),
	} {
		_, err := pgx.Connect(ctx, dsn)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "28P01" {
			t.Fatalf("connect with %s: got %v, want invalid_password (28P01)", dsn, err)
		}
	}
}

func TestPostgreSQLKillRestart(t *testing.T) {
	t.Parallel()
	s := PostgreSQL(t)
	ctx := ctxT(t)
	roundTrip(t, ctx, openSQL(t, "pgx", s.PostgresDSN("postgres")), "$")

	s.Kill()
	if err := openSQL(t, "pgx", s.PostgresDSN("postgres")).PingContext(ctx); err == nil {
		t.Fatal("ping succeeded after Kill")
	}
	restartOnTakenPort(t, s)
	var name string
	if err := openSQL(t, "pgx", s.PostgresDSN("postgres")).QueryRowContext(ctx, "SELECT name FROM items WHERE id = 42").Scan(&name); err != nil || name != "tide" {
		t.Fatalf("after crash and restart: name=%q err=%v, want the committed row", name, err)
	}
}

// restartOnTakenPort takes the killed server's port, so that Restart's
// first attempt fails to bind and the retry on a fresh port is exercised.
func restartOnTakenPort(t *testing.T, s *Server) {
	t.Helper()
	old := s.Port
	l, err := net.Listen("tcp", net.JoinHostPort(s.Host, strconv.Itoa(old)))
	if err != nil {
		t.Fatalf("taking port %d: %v", old, err)
	}
	defer l.Close()
	start := time.Now()
	s.Restart(t)
	t.Logf("crash recovery and restart (port %d taken, now on %d) took %s", old, s.Port, time.Since(start).Round(time.Millisecond))
	if s.Port == old {
		t.Fatalf("restarted on port %d although it was taken", old)
	}
}

func TestStartFailureReportsLogTail(t *testing.T) {
	dir := t.TempDir()
	s := &Server{
		Host: "127.0.0.1", kind: "postgresql", dir: dir,
		logPath: filepath.Join(dir, "server.log"),
		argv: func(port int) []string {
			return []string{"/bin/sh", "-c", "echo starting on $0; echo FATAL: boom-marker >&2; exit 3", strconv.Itoa(port)}
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := s.start(ctx)
	if err == nil {
		t.Fatal("start succeeded")
	}
	if !strings.Contains(err.Error(), "exited during start-up") || !strings.Contains(err.Error(), "FATAL: boom-marker") {
		t.Fatalf("error lacks the exit or the log tail:\n%v", err)
	}
}

// fakeTB records Skip/Fatal instead of stopping the goroutine.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped, f.msg = true, fmt.Sprintf(format, args...)
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
}

func TestUnavailableSkipsUnlessRequired(t *testing.T) {
	t.Setenv(RequireEnv, "")
	os.Unsetenv(RequireEnv)
	f := &fakeTB{TB: t}
	unavailable(f, "no %s here", "mariadbd")
	if !f.skipped || f.failed || !strings.Contains(f.msg, "no mariadbd here") {
		t.Fatalf("unset: skipped=%v failed=%v msg=%q, want a skip with the reason", f.skipped, f.failed, f.msg)
	}

	t.Setenv(RequireEnv, "1")
	f = &fakeTB{TB: t}
	unavailable(f, "no %s here", "mariadbd")
	if f.skipped || !f.failed || !strings.Contains(f.msg, "no mariadbd here") {
		t.Fatalf("required: skipped=%v failed=%v msg=%q, want a failure with the reason", f.skipped, f.failed, f.msg)
	}
}

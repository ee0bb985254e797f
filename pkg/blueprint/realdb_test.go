package blueprint

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/tidemark-dev/tidemark/tests/dbserver"
)

// These tests run the bundled MariaDB and PostgreSQL blueprints' rendered
// steps against real servers, the way the hookrunner runs them: sql steps on
// one dedicated connection (held between statements and release), exec and
// dump steps as processes with exactly the rendered argv and environment.
// They show the statements and commands in the blueprints work, not only
// that they lint.

// bundledBlueprint parses blueprints/<name>/blueprint.yaml.
func bundledBlueprint(t *testing.T, name string) *Blueprint {
	t.Helper()
	b, err := ParseFile(filepath.Join(bundledDir, name, "blueprint.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// renderSpec renders a step and decodes its spec into spec.
func renderSpec(t *testing.T, s *Step, ctx TemplateContext, spec any) RenderedStep {
	t.Helper()
	r, err := s.Render(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(r.Spec, spec); err != nil {
		t.Fatal(err)
	}
	return r
}

// runCommand runs a rendered exec or dump command with only the rendered
// environment (plus PATH, and a HOME with no client config files in it),
// feeding stdin and returning stdout.
func runCommand(t *testing.T, spec ExecSpec, stdin []byte) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, spec.Command[0], spec.Command[1:]...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	for k, v := range spec.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Dir = spec.WorkDir
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%q: %v\n%s", spec.Command, err, stderr.String())
	}
	return stdout.Bytes()
}

// runHeld runs a held sql step's statements on a connection of its own and
// returns that connection, still holding what they took.
func runHeld(t *testing.T, ctx context.Context, db *sql.DB, spec SQLSpec) *sql.Conn {
	t.Helper()
	if !spec.Hold {
		t.Fatal("the step does not hold its session")
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range spec.Statements {
		rows, err := conn.QueryContext(ctx, stmt)
		if err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
		rows.Close()
	}
	return conn
}

// firstRow runs query on conn and returns the first row by column name:
// how sql steps produce their outputs.
func firstRow(t *testing.T, ctx context.Context, conn *sql.Conn, query string) map[string]string {
	t.Helper()
	rows, err := conn.QueryContext(ctx, query)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		t.Fatal(err)
	}
	if !rows.Next() {
		t.Fatalf("%s: no rows", query)
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for i, c := range cols {
		out[c] = vals[i].String
	}
	return out
}

func mustExec(t *testing.T, ctx context.Context, db *sql.DB, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		if _, err := db.ExecContext(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

func TestBundledMariaDBBlueprintsOnARealServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a MariaDB server")
	}
	srv := dbserver.MariaDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	db, err := sql.Open("mysql", srv.MySQLDSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	mustExec(t, ctx, db,
		"CREATE DATABASE shop",
		"CREATE TABLE shop.orders (id INT PRIMARY KEY, note TEXT) ENGINE=InnoDB",
		"CREATE TABLE shop.audit (id INT PRIMARY KEY) ENGINE=Aria",
		"INSERT INTO shop.orders VALUES (1, 'it''s'), (2, 'two')",
		"INSERT INTO shop.audit VALUES (1)")

	t.Run("physical lock holds writes until release", func(t *testing.T) {
		b := bundledBlueprint(t, "mariadb")
		var spec SQLSpec
		renderSpec(t, b.Action(ActionBackup).Step("lock"), runContext(t, b), &spec)
		conn := runHeld(t, ctx, db, spec)
		defer conn.Close()

		other, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		mustExecConn(t, ctx, other, "SET SESSION lock_wait_timeout = 1")
		for _, table := range []string{"shop.orders VALUES (3, 'x')", "shop.audit VALUES (3)"} {
			_, err := other.ExecContext(ctx, "INSERT INTO "+table)
			if err == nil || !strings.Contains(err.Error(), "Lock wait timeout") {
				t.Errorf("INSERT INTO %s during the lock: %v, want a lock wait timeout", table, err)
			}
		}
		for _, stmt := range spec.Release {
			mustExecConn(t, ctx, conn, stmt)
		}
		mustExecConn(t, ctx, other, "INSERT INTO shop.orders VALUES (3, 'three')")
	})

	t.Run("restore waits until the server answers", func(t *testing.T) {
		b := bundledBlueprint(t, "mariadb")
		var spec WaitSpec
		rctx := runContext(t, b)
		rctx.Restore = &RestoreInfo{Mode: "production"}
		renderSpec(t, b.Action(ActionRestore).Step("ready"), rctx, &spec)
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		row := firstRow(t, ctx, conn, spec.SQL.Query)
		if row["1"] != spec.SQL.Expect {
			t.Errorf("%s = %v, want %q", spec.SQL.Query, row, spec.SQL.Expect)
		}
	})

	t.Run("logical dump and load round-trip", func(t *testing.T) {
		b := bundledBlueprint(t, "mariadb-logical")
		ctx0 := runContext(t, b)
		ctx0.Params["host"], ctx0.Params["port"], ctx0.Params["user"] = srv.Host, strconv.Itoa(srv.Port), srv.User
		ctx0.Secrets["password"] = srv.Password
		var dump DumpSpec
		renderSpec(t, b.Action(ActionBackup).Step("dump"), ctx0, &dump)
		out := runCommand(t, dump.ExecSpec, nil)
		if !bytes.Contains(out, []byte("CREATE TABLE `orders`")) {
			t.Fatalf("the dump has no orders table:\n%.2000s", out)
		}
		mustExec(t, ctx, db, "DROP DATABASE shop")
		var load DumpSpec
		renderSpec(t, b.Action(ActionRestore).Step("load"), ctx0, &load)
		runCommand(t, load.ExecSpec, out)
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM shop.orders WHERE note IN ('it''s', 'two', 'three')").Scan(&n); err != nil || n != 3 {
			t.Errorf("after the load, %d of 3 orders (%v)", n, err)
		}
	})
}

func mustExecConn(t *testing.T, ctx context.Context, conn *sql.Conn, stmt string) {
	t.Helper()
	if _, err := conn.ExecContext(ctx, stmt); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
}

func TestBundledPostgresBlueprintsOnARealServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL server")
	}
	srv := dbserver.PostgreSQL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	db, err := sql.Open("pgx", srv.PostgresDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	mustExec(t, ctx, db, "CREATE DATABASE shop")
	shop, err := sql.Open("pgx", srv.PostgresDSN("shop"))
	if err != nil {
		t.Fatal(err)
	}
	defer shop.Close()
	mustExec(t, ctx, shop,
		"CREATE TABLE orders (id int PRIMARY KEY, note text)",
		"INSERT INTO orders VALUES (1, 'it''s'), (2, 'two')")

	t.Run("backup mode belongs to its session and yields the label", func(t *testing.T) {
		b := bundledBlueprint(t, "postgres")
		step := b.Action(ActionBackup).Step("backupmode")
		rctx := runContext(t, b)
		var spec SQLSpec
		renderSpec(t, step, rctx, &spec)
		conn := runHeld(t, ctx, db, spec)
		defer conn.Close()

		// Another session cannot end this backup: it lives in the held one.
		other, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		if _, err := other.ExecContext(ctx, spec.Release[0]); err == nil || !strings.Contains(err.Error(), "backup is not in progress") {
			t.Errorf("pg_backup_stop in another session: %v, want \"backup is not in progress\"", err)
		}

		out := firstRow(t, ctx, conn, spec.Release[0])
		for _, o := range step.Outputs {
			if _, ok := out[o]; !ok {
				t.Errorf("the release has no column %q for the promised output (columns: %v)", o, out)
			}
		}
		label := "LABEL: shop-db-" + strconv.FormatInt(rctx.Time.Unix(), 10)
		if !strings.Contains(out["labelfile"], "START WAL LOCATION") || !strings.Contains(out["labelfile"], label) {
			t.Errorf("labelfile = %q, want a backup label with %q", out["labelfile"], label)
		}

		// The restore writes exactly that label into the data directory.
		pgdata := t.TempDir()
		restoreCtx := runContext(t, b)
		restoreCtx.Params["pgdata"] = pgdata
		restoreCtx.Backup = &BackupRecord{Steps: map[string]StepResult{"backupmode": {Output: out}}}
		var write ExecSpec
		renderSpec(t, b.Action(ActionRestore).Step("backuplabel"), restoreCtx, &write)
		runCommand(t, write, nil)
		got, err := os.ReadFile(filepath.Join(pgdata, "backup_label"))
		if err != nil || string(got) != out["labelfile"] {
			t.Errorf("backup_label = %q, %v; want the labelfile", got, err)
		}
		if _, err := os.Stat(filepath.Join(pgdata, "tablespace_map")); out["spcmapfile"] == "" && err == nil {
			t.Error("tablespace_map written although there are no tablespaces")
		}
	})

	t.Run("logical dump and restore round-trip", func(t *testing.T) {
		b := bundledBlueprint(t, "postgres-logical")
		rctx := runContext(t, b)
		rctx.Params["host"], rctx.Params["port"], rctx.Params["user"], rctx.Params["database"] = srv.Host, strconv.Itoa(srv.Port), srv.User, "shop"
		rctx.Secrets["password"] = srv.Password
		var dump DumpSpec
		renderSpec(t, b.Action(ActionBackup).Step("dump"), rctx, &dump)
		out := runCommand(t, dump.ExecSpec, nil)
		if !bytes.HasPrefix(out, []byte("PGDMP")) {
			t.Fatalf("pg_dump -Fc wrote %q..., want a custom-format archive", out[:min(len(out), 16)])
		}
		mustExec(t, ctx, shop, "DROP TABLE orders")
		var load DumpSpec
		renderSpec(t, b.Action(ActionRestore).Step("load"), rctx, &load)
		runCommand(t, load.ExecSpec, out)
		var n int
		if err := shop.QueryRowContext(ctx, "SELECT count(*) FROM orders WHERE note IN ('it''s', 'two')").Scan(&n); err != nil || n != 2 {
			t.Errorf("after pg_restore, %d of 2 orders (%v)", n, err)
		}
	})
}

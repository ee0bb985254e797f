package hookrunner

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/tests/bustest"
	"github.com/tidemark-dev/tidemark/tests/dbserver"
)

func readObject(t *testing.T, env *bustest.Env, name string) []byte {
	t.Helper()
	objs, err := env.Bus.ObjectStore(context.Background(), bus.BucketDumps)
	if err != nil {
		t.Fatal(err)
	}
	r, err := objs.Get(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDumpStreamsStdoutIntoTheDumpsBucket(t *testing.T) {
	h := start(t)
	src := filepath.Join(t.TempDir(), "data")
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	h.env.Publish(t, command("run-dump", "app", "dump", blueprint.KindDump, blueprint.DumpSpec{
		ExecSpec: blueprint.ExecSpec{Command: []string{"sh", "-c", `cat "$SRC"; echo rows=42 >&2`}, Env: map[string]string{"SRC": src}},
		Artifact: "data.bin",
	}, 0))
	ev := h.env.WaitFor(t, 30*time.Second, "the dump", bustest.Step[events.HookSucceeded]("run-dump", "dump"))
	ok, _ := events.As[events.HookSucceeded](ev)
	name := bus.DumpObject("run-dump", "data.bin")
	if ok.Outputs["object"] != name || ok.Outputs["bytes"] != fmt.Sprint(len(data)) || ok.Outputs["rows"] != "42" {
		t.Fatalf("outputs %v", ok.Outputs)
	}
	if got := readObject(t, h.env, name); sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("stored %d bytes that differ from the %d the command wrote", len(got), len(data))
	}

	// A dump that fails halfway leaves no artifact behind.
	h.env.Publish(t, command("run-dump", "app", "broken", blueprint.KindDump, blueprint.DumpSpec{
		ExecSpec: blueprint.ExecSpec{Command: []string{"sh", "-c", `head -c 100000 /dev/zero; echo "pg_dump: connection lost" >&2; exit 1`}},
		Artifact: "broken.bin",
	}, 0))
	bad := h.env.WaitFor(t, 30*time.Second, "the failed dump", bustest.Step[events.HookFailed]("run-dump", "broken"))
	if f, _ := events.As[events.HookFailed](bad); !strings.Contains(f.Error, "connection lost") {
		t.Fatalf("failure %+v", f)
	}
	objs, _ := h.env.Bus.ObjectStore(context.Background(), bus.BucketDumps)
	if _, err := objs.Get(context.Background(), bus.DumpObject("run-dump", "broken.bin")); err == nil {
		t.Fatal("a failed dump left an artifact")
	}
}

// A logical backup and restore of a real PostgreSQL database through the
// hookrunner: pg_dump -Fc streams into the dumps bucket, and pg_restore
// reads it back into a new database. The password reaches both commands
// as a secret filled in here, never through an event.
func TestPgDumpAndRestoreThroughTheDumpsBucket(t *testing.T) {
	h := start(t)
	srv := dbserver.PostgreSQL(t)
	t.Setenv("TEST_PG_PASSWORD", srv.Password)
	doc := `apiVersion: tidemark.io/v1alpha1
kind: Application
metadata: {name: shop/postgres}
spec:
  blueprint: postgres-logical
  secrets:
    password: {env: TEST_PG_PASSWORD}
`
	if err := os.WriteFile(filepath.Join(h.appsDir, "pg.yaml"), []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("pgx", srv.PostgresDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{"CREATE DATABASE shop", "CREATE DATABASE restored"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	shop, err := sql.Open("pgx", srv.PostgresDSN("shop"))
	if err != nil {
		t.Fatal(err)
	}
	defer shop.Close()
	if _, err := shop.Exec(`CREATE TABLE orders (id int PRIMARY KEY, note text); INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 5000) g`); err != nil {
		t.Fatal(err)
	}
	bin := "/usr/lib/postgresql/15/bin/"
	env := map[string]string{"PGHOST": srv.Host, "PGPORT": fmt.Sprint(srv.Port), "PGUSER": srv.User, "PGPASSWORD": blueprint.SecretPlaceholder("password")}
	h.env.Publish(t, command("run-pg", "shop/postgres", "dump", blueprint.KindDump, blueprint.DumpSpec{
		ExecSpec: blueprint.ExecSpec{Command: []string{bin + "pg_dump", "-Fc", "shop"}, Env: env},
		Artifact: "shop.pgdump",
	}, 0))
	h.env.WaitFor(t, 60*time.Second, "pg_dump", bustest.Step[events.HookSucceeded]("run-pg", "dump"))
	h.env.Publish(t, command("run-pg", "shop/postgres", "load", blueprint.KindDump, blueprint.DumpSpec{
		ExecSpec:     blueprint.ExecSpec{Command: []string{bin + "pg_restore", "--no-owner", "-d", "restored"}, Env: env},
		Artifact:     "shop.pgdump",
		FromArtifact: true,
	}, 0))
	h.env.WaitFor(t, 60*time.Second, "pg_restore", bustest.Step[events.HookSucceeded]("run-pg", "load"))

	sum := func(dsn string) string {
		c, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var s string
		if err := c.QueryRow(`SELECT md5(string_agg(id || ':' || note, ',' ORDER BY id)) FROM orders`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	if a, b := sum(srv.PostgresDSN("shop")), sum(srv.PostgresDSN("restored")); a != b {
		t.Fatalf("restored rows differ: %s vs %s", a, b)
	}
	// Restoring an artifact that was never imported is a clear failure.
	h.env.Publish(t, command("run-pg", "shop/postgres", "missing", blueprint.KindDump, blueprint.DumpSpec{
		ExecSpec: blueprint.ExecSpec{Command: []string{"cat"}}, Artifact: "nope.pgdump", FromArtifact: true,
	}, 0))
	ev := h.env.WaitFor(t, 30*time.Second, "the missing artifact", bustest.Step[events.HookFailed]("run-pg", "missing"))
	if f, _ := events.As[events.HookFailed](ev); !strings.Contains(f.Error, "has not been imported") {
		t.Fatalf("failure %+v", f)
	}
	for _, f := range h.env.Facts() {
		if strings.Contains(fmt.Sprint(f.Data), srv.Password) {
			t.Fatalf("a %s event carries the password", f.Type())
		}
	}
}

// writeArtifact plays the data mover of a restore: it streams src into the
// run's pipe for artifact while the step reads it.
func writeArtifact(t *testing.T, h *harness, run events.RunID, artifact string, src io.Reader) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	wrote := make(chan error, 1)
	go func() {
		_, err := h.env.Bus.WritePipe(ctx, bus.DumpObject(run, artifact), src)
		wrote <- err
	}()
	t.Cleanup(cancel)
	return wrote
}

type failAfter struct {
	r   io.Reader
	err error
}

func (f *failAfter) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

// A restore step feeds the streamed artifact to its command's stdin: the
// command gets every byte, and a failure on either end is reported as
// what it is.
func TestRestoreStepStreamsTheArtifactIntoStdin(t *testing.T) {
	h := start(t)
	data := make([]byte, 5<<20+17) // several pipe messages and a partial one
	for i := range data {
		data[i] = byte(i*31 + i>>11)
	}
	out := filepath.Join(t.TempDir(), "received")
	wrote := writeArtifact(t, h, "run-load", "db.dump", bytes.NewReader(data))
	h.env.Publish(t, command("run-load", "app", "load", blueprint.KindDump, blueprint.DumpSpec{
		ExecSpec: blueprint.ExecSpec{Command: []string{"sh", "-c", `cat > "$OUT"; echo loaded=yes >&2`}, Env: map[string]string{"OUT": out}},
		Artifact: "db.dump", FromArtifact: true,
	}, 0))
	ev := h.env.WaitFor(t, 30*time.Second, "the load", bustest.Step[events.HookSucceeded]("run-load", "load"))
	if ok, _ := events.As[events.HookSucceeded](ev); ok.Outputs["loaded"] != "yes" {
		t.Errorf("outputs %v", ok.Outputs)
	}
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the command received %d bytes (%v), want the %d streamed", len(got), err, len(data))
	}
	if err := <-wrote; err != nil {
		t.Fatalf("the writer: %v", err)
	}

	// The data mover fails mid-stream: the step fails with its reason,
	// not with whatever the command made of a cut-off stdin.
	wrote = writeArtifact(t, h, "run-load", "broken.dump", &failAfter{r: bytes.NewReader(data[:2<<20]), err: errors.New("reading pack p0123: checksum mismatch")})
	h.env.Publish(t, command("run-load", "app", "broken", blueprint.KindDump, blueprint.DumpSpec{
		ExecSpec: blueprint.ExecSpec{Command: []string{"sh", "-c", `cat > /dev/null; echo "pg_restore: unexpected end of file" >&2; exit 1`}},
		Artifact: "broken.dump", FromArtifact: true,
	}, 0))
	ev = h.env.WaitFor(t, 30*time.Second, "the broken load", bustest.Step[events.HookFailed]("run-load", "broken"))
	if f, _ := events.As[events.HookFailed](ev); !strings.Contains(f.Error, "stream failed") || !strings.Contains(f.Error, "checksum mismatch") {
		t.Fatalf("failure %+v", f)
	}
	<-wrote

	// The command fails before reading everything: the step reports the
	// command's failure, and the data mover is told to stop.
	wrote = writeArtifact(t, h, "run-load", "refused.dump", bytes.NewReader(data))
	h.env.Publish(t, command("run-load", "app", "refused", blueprint.KindDump, blueprint.DumpSpec{
		ExecSpec: blueprint.ExecSpec{Command: []string{"sh", "-c", `head -c 1000 > /dev/null; echo "ERROR: relation exists" >&2; exit 3`}},
		Artifact: "refused.dump", FromArtifact: true,
	}, 0))
	ev = h.env.WaitFor(t, 30*time.Second, "the refused load", bustest.Step[events.HookFailed]("run-load", "refused"))
	if f, _ := events.As[events.HookFailed](ev); f.ExitCode == nil || *f.ExitCode != 3 || strings.Contains(f.Error, "stream failed") || !strings.Contains(f.Error, "relation exists") {
		t.Fatalf("failure %+v", f)
	}
	select {
	case err := <-wrote:
		if !errors.Is(err, bus.ErrPipeAborted) {
			t.Fatalf("the writer: %v, want ErrPipeAborted", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the writer was not stopped when the command failed")
	}
}

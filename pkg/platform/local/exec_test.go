package local

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"github.com/tidemark-dev/tidemark/pkg/platform"
)

func TestExecReportsExitCodeAndOutput(t *testing.T) {
	var e Executor
	res, err := e.Exec(context.Background(), platform.ExecRequest{Spec: blueprint.ExecSpec{
		Command: []string{"sh", "-c", "echo out; echo err >&2; exit 3"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 3 || string(res.StdoutTail) != "out\n" || string(res.StderrTail) != "err\n" {
		t.Fatalf("%+v", res)
	}
}

func TestArgumentsAreNotShellSyntax(t *testing.T) {
	dir := t.TempDir()
	var e Executor
	res, err := e.Exec(context.Background(), platform.ExecRequest{Spec: blueprint.ExecSpec{
		Command: []string{"echo", "$(touch " + filepath.Join(dir, "pwned") + ")"}, WorkDir: dir,
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "pwned")); err == nil {
		t.Fatal("an argument was run by a shell")
	}
	if !strings.Contains(string(res.StdoutTail), "$(touch") {
		t.Fatalf("stdout %q", res.StdoutTail)
	}
}

func TestTimeoutKillsTheWholeProcessGroup(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "child-survived")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var e Executor
	start := time.Now()
	_, err := e.Exec(ctx, platform.ExecRequest{Spec: blueprint.ExecSpec{
		// The child outlives its parent shell unless the group is killed.
		Command: []string{"sh", "-c", "(sleep 1; touch " + marker + ") & sleep 30"},
	}})
	if err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("exec returned after %s", time.Since(start))
	}
	time.Sleep(1500 * time.Millisecond)
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a child of the timed-out command kept running")
	}
}

func TestOutputIsBoundedAndStreamable(t *testing.T) {
	var e Executor
	var full bytes.Buffer
	res, err := e.Exec(context.Background(), platform.ExecRequest{
		Spec:   blueprint.ExecSpec{Command: []string{"head", "-c", "1000000", "/dev/zero"}},
		Stdout: &full,
	})
	if err != nil {
		t.Fatal(err)
	}
	if full.Len() != 1000000 || len(res.StdoutTail) != platform.TailBytes {
		t.Fatalf("streamed %d bytes, kept %d", full.Len(), len(res.StdoutTail))
	}
}

func TestStdinAndEnv(t *testing.T) {
	var e Executor
	res, err := e.Exec(context.Background(), platform.ExecRequest{
		Spec:  blueprint.ExecSpec{Command: []string{"sh", "-c", "cat; echo $GREETING"}, Env: map[string]string{"GREETING": "hi"}},
		Stdin: strings.NewReader("in\n"),
	})
	if err != nil || string(res.StdoutTail) != "in\nhi\n" {
		t.Fatalf("%q %v", res.StdoutTail, err)
	}
}

package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runDemo runs `tidemark demo ARGS` as a child process and returns its
// output and error.
func runDemo(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"demo"}, args...)...)
	cmd.Env = append(os.Environ(), "TIDEMARK_TEST_RUN_MAIN=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// The README's first command does what it promises: a consistent backup
// and restore of a live PostgreSQL, checked, summarised, and nothing left
// behind — no directory, no process.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two PostgreSQL servers")
	}
	if _, err := findPostgres(""); err != nil {
		if os.Getenv("TIDEMARK_REQUIRE_DB") != "" {
			t.Fatalf("TIDEMARK_REQUIRE_DB is set but: %v", err)
		}
		t.Skipf("%v", err)
	}
	parent := t.TempDir()
	// PostgreSQL runs as its own account when the tests run as root: it
	// must be able to enter the test's directories, which are 0700.
	for _, d := range []string{filepath.Dir(parent), parent} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	out, err := runDemo(t, "--dir", parent, "--no-install")
	t.Logf("tidemark demo:\n%s", out)
	if err != nil {
		t.Fatalf("tidemark demo failed: %v", err)
	}
	for _, want := range []string{
		"recorded (application-consistent)",
		"restore completed",
		"recovered from the backup label",
		"gap-free; the last one",
		"freeze window",
		"dedup and compression",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the demo's output lacks %q", want)
		}
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 0 {
		t.Errorf("the demo left %d entries in its parent directory: %v", len(entries), entries)
	}
	if left := processesMentioning(t, parent); len(left) > 0 {
		t.Errorf("the demo left processes running: %v", left)
	}
}

func TestDemoWithoutPostgreSQLSaysWhatToInstall(t *testing.T) {
	out, err := runDemo(t, "--pg-bin", filepath.Join(t.TempDir(), "nowhere"), "--no-install")
	if err == nil {
		t.Fatalf("the demo succeeded without PostgreSQL:\n%s", out)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 1 || !strings.Contains(out, "--pg-bin") {
		t.Errorf("want one line naming the problem, got:\n%s", out)
	}
}

// processesMentioning lists the command lines that contain s.
func processesMentioning(t *testing.T, s string) []string {
	t.Helper()
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var out []string
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil {
			continue
		}
		if line := strings.ReplaceAll(string(b), "\x00", " "); strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return out
}

package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const badBlueprint = `apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: bad}
spec:
  actions:
    backup:
      - name: freeze
        kind: exec
        exec: {command: [fsfreeze, --freeze, /data]}
        timeout: "60"
      - name: snapshot
        kind: snapshot
    restore:
      - name: snapshot
        kind: snapshot
`

const badSemantics = `apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: bad}
spec:
  actions:
    backup:
      - name: freeze
        kind: exec
        exec: {command: [fsfreeze, --freeze, "{{ .App.Nmae }}"]}
      - name: snapshot
        kind: snapshot
    restore:
      - name: snapshot
        kind: snapshot
`

func writeBlueprint(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBlueprintLintCommand(t *testing.T) {
	ctx := context.Background()
	good := filepath.Join("..", "..", "blueprints", "mariadb", "blueprint.yaml")

	out, err := runTidemark(t, ctx, "blueprint", "lint", good)
	if err != nil || !strings.Contains(out, "no problems in 1 file") {
		t.Fatalf("lint of a good blueprint: %v\n%s", err, out)
	}

	parseBad := writeBlueprint(t, "parse.yaml", badBlueprint)
	lintBad := writeBlueprint(t, "lint.yaml", badSemantics)
	out, err = runTidemark(t, ctx, "blueprint", "lint", good, parseBad, lintBad)
	if err == nil {
		t.Fatalf("lint of bad blueprints succeeded:\n%s", out)
	}
	var ue usageError
	if errors.As(err, &ue) {
		t.Errorf("lint problems are a usage error (exit 2): %v", err)
	}
	if err.Error() != "3 problems in 2 files" {
		t.Errorf("summary = %q", err)
	}
	want := []string{
		parseBad + `:10:18: spec.actions.backup[0].timeout: "60" has no unit (write "60s" for 60 seconds; other units are ms, m and h)`,
		lintBad + `:7:9: spec.actions.backup[0]: step "freeze" runs before the snapshot step, so it quiesces the application, but it has no inverse`,
		lintBad + `:9:46: spec.actions.backup[0].exec.command[2]: .App has no field Nmae (did you mean .Name?`,
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%d lines of output, want %d:\n%s", len(lines), len(want), out)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d = %q\nwant prefix %q", i+1, lines[i], w)
		}
	}
}

// Every bundled blueprint lints clean through the CLI, given the directory.
func TestBlueprintLintCommandOnBundledDirectory(t *testing.T) {
	out, err := runTidemark(t, context.Background(), "blueprint", "lint", filepath.Join("..", "..", "blueprints"))
	if err != nil || !strings.HasPrefix(out, "no problems in ") {
		t.Fatalf("lint blueprints/: %v\n%s", err, out)
	}
}

func TestBlueprintLintCommandUsage(t *testing.T) {
	ctx := context.Background()
	var ue usageError
	if _, err := runTidemark(t, ctx, "blueprint", "lint"); !errors.As(err, &ue) {
		t.Errorf("lint without files: %v, want a usage error", err)
	}
	if _, err := runTidemark(t, ctx, "blueprint", "lint", t.TempDir()); !errors.As(err, &ue) {
		t.Errorf("lint of a directory without blueprints: %v, want a usage error", err)
	}
	out, err := runTidemark(t, ctx, "blueprint", "lint", filepath.Join(t.TempDir(), "missing.yaml"))
	if err == nil || !strings.Contains(out, "missing.yaml: open ") {
		t.Errorf("lint of a missing file: %v\n%s", err, out)
	}
}

// The real binary exits 1 on lint problems and prints them on stdout.
func TestBlueprintLintCommandExitCode(t *testing.T) {
	bad := writeBlueprint(t, "bad.yaml", badBlueprint)
	cmd := exec.Command(os.Args[0], "blueprint", "lint", bad)
	cmd.Env = append(os.Environ(), "TIDEMARK_TEST_RUN_MAIN=1")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("exit: %v, want exit code 1", err)
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("tidemark blueprint lint did not exit")
	}
	if !strings.Contains(stdout.String(), bad+":10:18:") || stderr.String() != "tidemark: 1 problem in 1 file\n" {
		t.Errorf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	}
}

func TestBlueprintShowCommand(t *testing.T) {
	out, err := runTidemark(t, context.Background(), "blueprint", "show", filepath.Join("..", "..", "blueprints", "postgres", "blueprint.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"maxFreeze 1m0s", "backup:", "* 1  backupmode  sql (hold)  2m0s", "its release", "restore:", "backuplabel"} {
		if !strings.Contains(out, want) {
			t.Errorf("show output lacks %q:\n%s", want, out)
		}
	}
}

// The binary knows the Kubernetes step kinds, so a blueprint that scales a
// StatefulSet down and back up lints clean, and a typo in one is named.
func TestBlueprintLintKnowsKubernetesKinds(t *testing.T) {
	good := `apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: scaled}
spec:
  actions:
    backup:
      - name: stop
        kind: scale
        scale: {workload: 'statefulset/{{ .StatefulSet.Name }}', replicas: 0}
        inverse:
          name: start
          kind: scale
          scale: {workload: 'statefulset/{{ .StatefulSet.Name }}', replicas: 1}
      - name: snapshot
        kind: snapshot
    restore:
      - name: snapshot
        kind: snapshot
`
	dir := t.TempDir()
	path := filepath.Join(dir, "scaled.yaml")
	if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runTidemark(t, context.Background(), "blueprint", "lint", path); err != nil {
		t.Fatalf("lint of a scale blueprint: %v\n%s", err, out)
	}
	bad := strings.Replace(good, "workload: 'statefulset/{{ .StatefulSet.Name }}', replicas: 0", "workloads: x, replicas: 0", 1)
	if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runTidemark(t, context.Background(), "blueprint", "lint", path); err == nil || !strings.Contains(out, `unknown field "workloads"`) {
		t.Fatalf("lint of a misspelt scale step: %v\n%s", err, out)
	}
}

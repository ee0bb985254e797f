package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// lockApp writes an application whose blueprint "quiesces" by creating a
// lock file and undoes it by removing the file, with an optional step in
// between.
func lockApp(t *testing.T, appsDir, name, between string) (lockFile string) {
	t.Helper()
	base := strings.ReplaceAll(name, "/", "_")
	lockFile = filepath.Join(appsDir, base+".lock")
	vol := filepath.Join(t.TempDir(), "vol")
	if err := os.MkdirAll(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vol, "table.db"), []byte(strings.Repeat("row\n", 5000)), 0o644); err != nil {
		t.Fatal(err)
	}
	bp := fmt.Sprintf(`apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: %s-lock}
spec:
  maxFreeze: 30s
  actions:
    backup:
      - name: lock
        kind: exec
        exec: {command: [touch, %s]}
        inverse:
          name: unlock
          kind: exec
          exec: {command: [rm, -f, %s]}
%s      - name: snapshot
        kind: snapshot
    restore:
      - name: snapshot
        kind: snapshot
`, strings.ReplaceAll(base, "_", "-"), lockFile, lockFile, between)
	bpFile := filepath.Join(appsDir, base+".blueprint.yaml")
	app := fmt.Sprintf("apiVersion: tidemark.io/v1alpha1\nkind: Application\nmetadata: {name: %s}\nspec:\n  blueprint: %s\n  volumes: {data: %s}\n", name, bpFile, vol)
	for f, content := range map[string]string{bpFile: bp, filepath.Join(appsDir, base+".app.yaml"): app} {
		if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return lockFile
}

func TestBackupWaitRunsListShowAndFailureExitCode(t *testing.T) {
	appsDir := t.TempDir()
	okLock := lockApp(t, appsDir, "shop/files", "")
	badLock := lockApp(t, appsDir, "shop/broken", `      - name: check
        kind: exec
        exec: {command: [sh, -c, 'echo replica is 40s behind >&2; exit 1']}
        noInverse: only reads
`)
	p := startTidemark(t, "serve", "--data-dir", t.TempDir(), "--apps-dir", appsDir, "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--log-format", "json")
	natsURL := p.logField(t, "embedded NATS started", "url")
	p.logField(t, "tidemark serving", "http")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	out, err := runTidemark(t, ctx, "backup", "--app", "shop/files", "--wait", "--nats-url", natsURL)
	if err != nil {
		t.Fatalf("backup --wait: %v\n%s", err, out)
	}
	for _, want := range []string{"✓ lock", "✓ snapshot data", "✓ unlock", "✓ exported data", "freeze window", "restore point"} {
		if !strings.Contains(out, want) {
			t.Errorf("backup --wait output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(okLock); !os.IsNotExist(err) {
		t.Error("the application is still quiesced after the backup")
	}
	okRun := regexp.MustCompile(`run ([0-9a-f-]{36})`).FindStringSubmatch(out)
	if okRun == nil {
		t.Fatalf("no run id in:\n%s", out)
	}

	point := regexp.MustCompile(`restore point ([0-9a-f-]{36}) recorded`).FindStringSubmatch(out)
	if point == nil {
		t.Fatalf("no restore point in:\n%s", out)
	}
	restoreDir := filepath.Join(t.TempDir(), "restored")
	out, err = runTidemark(t, ctx, "restore", point[1], "--to", "new", "--target", restoreDir, "--wait", "--nats-url", natsURL)
	if err != nil || !strings.Contains(out, "restore completed") || !strings.Contains(out, "✓ restored data: 1 files") {
		t.Fatalf("restore --wait: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(restoreDir, "data", "table.db")); err != nil || string(b) != strings.Repeat("row\n", 5000) {
		t.Errorf("restored file differs: %v", err)
	}
	out, err = runTidemark(t, ctx, "restore", point[1], "--to", "new", "--target", restoreDir, "--wait", "--nats-url", natsURL)
	if err == nil || !strings.Contains(err.Error(), "restore refused") || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("restore onto the same, now non-empty, target: %v\n%s", err, out)
	}

	out, err = runTidemark(t, ctx, "backup", "--app", "shop/broken", "--wait", "--nats-url", natsURL)
	if err == nil {
		t.Fatalf("a failed backup exited 0:\n%s", out)
	}
	if !strings.Contains(err.Error(), "backup failed: step check failed: ") || !strings.Contains(err.Error(), "replica is 40s behind") {
		t.Errorf("error %q: want the failed step and its message", err)
	}
	if !strings.Contains(out, "undo unlock: succeeded") {
		t.Errorf("output does not say the lock was undone:\n%s", out)
	}
	if _, err := os.Stat(badLock); !os.IsNotExist(err) {
		t.Error("the application is still quiesced after the failed backup")
	}

	out, err = runTidemark(t, ctx, "backup", "--app", "shop/none", "--wait", "--nats-url", natsURL)
	if err == nil || !strings.Contains(err.Error(), "backup rejected") || !strings.Contains(err.Error(), "shop/none") {
		t.Errorf("backup of an unknown application: %v\n%s", err, out)
	}

	out, err = runTidemark(t, ctx, "runs", "list", "--nats-url", natsURL, "-o", "json")
	if err != nil {
		t.Fatalf("runs list: %v\n%s", err, out)
	}
	var runs []struct {
		ID, Application string
		Status          string
	}
	if err := json.Unmarshal([]byte(out), &runs); err != nil || len(runs) != 4 {
		t.Fatalf("runs list -o json: %v\n%s", err, out)
	}
	statuses := map[string]int{}
	for _, r := range runs {
		statuses[r.Application+" "+r.Status]++
	}
	// The backup and the restore of shop/files completed; the refused
	// restore and the broken backup failed.
	if statuses["shop/files completed"] != 2 || statuses["shop/files failed"] != 1 || statuses["shop/broken failed"] != 1 {
		t.Errorf("statuses %v", statuses)
	}
	out, err = runTidemark(t, ctx, "runs", "show", okRun[1], "--nats-url", natsURL)
	if err != nil || !strings.Contains(out, "Status:       completed") || !strings.Contains(out, "History:") {
		t.Errorf("runs show: %v\n%s", err, out)
	}
	if _, err := runTidemark(t, ctx, "runs", "cancel", okRun[1], "--nats-url", natsURL); err == nil || !strings.Contains(err.Error(), "already ended") {
		t.Errorf("cancel of an ended run: %v", err)
	}
	if _, err := runTidemark(t, ctx, "runs", "show", "no-such-run", "--nats-url", natsURL); err == nil || !strings.Contains(err.Error(), "no run no-such-run") {
		t.Errorf("show of an unknown run: %v", err)
	}
	if _, err := runTidemark(t, ctx, "backup", "--nats-url", natsURL); err == nil || !strings.Contains(err.Error(), "--app is required") {
		t.Errorf("backup without --app: %v", err)
	}
}

package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAppLint(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte(`apiVersion: tidemark.io/v1alpha1
kind: Application
metadata: {name: shop/pg}
spec:
  blueprint: postgres
  connections:
    primary: {driver: postgres, dsn: "postgres://backup@127.0.0.1/shop", passwordFrom: {file: /run/secrets/pg}}
`), 0o600)
	os.WriteFile(bad, []byte(`apiVersion: tidemark.io/v1alpha1
kind: Application
metadata: {name: shop/pg}
spec:
  blueprint: postgres
  connections:
    primary: {driver: postgres, dsn: "postgres://backup:hunter2@127.0.0.1/shop"}
`), 0o600)
	out, err := runTidemark(t, context.Background(), "app", "lint", good)
	if err != nil || !strings.Contains(out, "good.yaml: ok") {
		t.Fatalf("good file: %v\n%s", err, out)
	}
	out, err = runTidemark(t, context.Background(), "app", "lint", good, bad)
	if err == nil || !strings.Contains(out, "dsn holds a password") || !strings.Contains(err.Error(), "1 of 2 files") {
		t.Fatalf("bad file: %v\n%s", err, out)
	}
	if strings.Contains(out, "hunter2") {
		t.Fatalf("lint output repeats the password:\n%s", out)
	}
}

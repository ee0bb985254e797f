package repository_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tidemark-dev/tidemark/pkg/repository"
)

func smallDir(t *testing.T, content string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Records written by one client are read back, replaced and deleted by
// another, as the catalog and `tidemark catalog rebuild` do.
func TestRecordsAcrossClients(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "repo")
	w, other := mustOpen(t, path), mustOpen(t, path)
	if err := w.PutRecord(ctx, "restorepoint", "rp-1", map[string]string{"tidemark-app": "shop/pg"}, json.RawMessage(`{"id":"rp-1","v":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := w.PutRecord(ctx, "restorepoint", "rp-2", nil, json.RawMessage(`{"id":"rp-2"}`)); err != nil {
		t.Fatal(err)
	}
	// Writing rp-1 again replaces it: one record per id.
	if err := w.PutRecord(ctx, "restorepoint", "rp-1", map[string]string{"tidemark-app": "shop/pg"}, json.RawMessage(`{"id":"rp-1","v":2}`)); err != nil {
		t.Fatal(err)
	}
	if err := w.PutRecord(ctx, "other", "x", nil, json.RawMessage(`{}`)); err != nil {
		t.Fatal(err)
	}
	recs, err := other.Records(ctx, "restorepoint")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].ID != "rp-1" || recs[1].ID != "rp-2" {
		t.Fatalf("records %+v, want rp-1 and rp-2", recs)
	}
	if !bytes.Equal(recs[0].Data, []byte(`{"id":"rp-1","v":2}`)) || recs[0].Labels["tidemark-app"] != "shop/pg" {
		t.Errorf("rp-1 read back as %s %v, want the second version with its label", recs[0].Data, recs[0].Labels)
	}
	if err := other.DeleteRecord(ctx, "restorepoint", "rp-1"); err != nil {
		t.Fatal(err)
	}
	if err := other.DeleteRecord(ctx, "restorepoint", "rp-1"); err != nil {
		t.Errorf("deleting a deleted record: %v", err)
	}
	recs, err = w.Records(ctx, "restorepoint")
	if err != nil || len(recs) != 1 || recs[0].ID != "rp-2" {
		t.Fatalf("after deleting rp-1 the writer sees %+v, %v", recs, err)
	}
	if err := w.PutRecord(ctx, "restorepoint", "rp-3", map[string]string{"type": "x"}, json.RawMessage(`{}`)); !errors.Is(err, repository.ErrInvalidRequest) {
		t.Errorf("a record overriding the type label: %v, want ErrInvalidRequest", err)
	}
}

// A snapshot written by a data mover's client is deleted by another
// client; deleting it again says it is not found, and the other snapshots
// of the volume are untouched.
func TestDeleteSnapshot(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "repo")
	mover, catalog := mustOpen(t, path), mustOpen(t, path)
	// The catalog's client opened before the snapshots existed.
	if ok, err := catalog.HasSnapshot(ctx, "0123456789abcdef0123456789abcdef"); ok || err != nil {
		t.Fatalf("HasSnapshot of an unknown id: %v, %v", ok, err)
	}
	first, err := mover.ExportDir(ctx, repository.ExportRequest{App: "shop/pg", Volume: "data", RunID: "r1", Dir: smallDir(t, "one")})
	if err != nil {
		t.Fatal(err)
	}
	second, err := mover.ExportDir(ctx, repository.ExportRequest{App: "shop/pg", Volume: "data", RunID: "r2", Dir: smallDir(t, "two")})
	if err != nil {
		t.Fatal(err)
	}
	if err := catalog.DeleteSnapshot(ctx, first.ManifestID); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*repository.Repository{catalog, mover} {
		if ok, err := r.HasSnapshot(ctx, first.ManifestID); ok || err != nil {
			t.Errorf("deleted snapshot still there: %v, %v", ok, err)
		}
		if ok, err := r.HasSnapshot(ctx, second.ManifestID); !ok || err != nil {
			t.Errorf("the other snapshot of the volume is gone: %v, %v", ok, err)
		}
	}
	if _, err := mover.ImportDir(ctx, first.ManifestID, t.TempDir(), nil); !errors.Is(err, repository.ErrNotFound) {
		t.Errorf("restoring a deleted snapshot: %v, want ErrNotFound", err)
	}
	if err := catalog.DeleteSnapshot(ctx, first.ManifestID); !errors.Is(err, repository.ErrNotFound) {
		t.Errorf("deleting it again: %v, want ErrNotFound", err)
	}
	// The remaining snapshot still restores.
	out := t.TempDir()
	if _, err := catalog.ImportDir(ctx, second.ManifestID, out, nil); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(out, "f")); err != nil || string(b) != "two" {
		t.Errorf("restored %q, %v", b, err)
	}
}

func TestNoCreateRefusesAMissingRepository(t *testing.T) {
	path := filepath.Join(t.TempDir(), "typo")
	_, err := repository.Open(t.Context(), repository.Config{Path: path, Password: testPassword, CacheDir: t.TempDir(), NoCreate: true})
	if !errors.Is(err, repository.ErrNoRepository) || !strings.Contains(err.Error(), path) {
		t.Fatalf("NoCreate on a missing path: %v, want ErrNoRepository naming the path", err)
	}
	if _, serr := os.Stat(path); serr == nil {
		t.Error("NoCreate created the directory")
	}
	empty := t.TempDir()
	_, err = repository.Open(t.Context(), repository.Config{Path: empty, Password: testPassword, CacheDir: t.TempDir(), NoCreate: true})
	if !errors.Is(err, repository.ErrNoRepository) {
		t.Fatalf("NoCreate on an empty directory: %v, want ErrNoRepository", err)
	}
	if entries, _ := os.ReadDir(empty); len(entries) != 0 {
		t.Errorf("NoCreate wrote into the empty directory: %v", entries)
	}
}

// Two clients opening a new repository at once (the data movers and the
// catalog of one `tidemark serve`) end up in one repository that both can
// use.
func TestConcurrentOpenOfANewRepository(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "repo")
	var wg sync.WaitGroup
	repos := make([]*repository.Repository, 4)
	errs := make([]error, 4)
	for i := range repos {
		wg.Go(func() { repos[i], errs[i] = open(t, path, testPassword) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	res, err := repos[0].ExportDir(ctx, repository.ExportRequest{App: "a", Volume: "v", RunID: "r", Dir: smallDir(t, "x")})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range repos {
		if ok, err := r.HasSnapshot(ctx, res.ManifestID); !ok || err != nil {
			t.Errorf("client %d does not see the snapshot: %v, %v", i, ok, err)
		}
	}
}

// Maintenance runs as Tidemark's fixed owner on a repository Tidemark
// created, and is recorded in kopia's schedule; a second automatic call
// right after finds nothing due.
func TestMaintenance(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "repo")
	r := mustOpen(t, path)
	if _, err := r.ExportDir(ctx, repository.ExportRequest{App: "a", Volume: "v", RunID: "r", Dir: smallDir(t, "x")}); err != nil {
		t.Fatal(err)
	}
	res, err := r.Maintain(ctx, repository.MaintenanceAuto)
	if err != nil {
		t.Fatal(err)
	}
	if res.Ran != repository.MaintenanceFull {
		t.Fatalf("first automatic maintenance of a new repository ran %q, want full", res.Ran)
	}
	runs, err := r.MaintenanceRuns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if runs["snapshot-gc"] != 1 {
		t.Errorf("kopia's schedule records %v, want one snapshot-gc run", runs)
	}
	again, err := r.Maintain(ctx, repository.MaintenanceAuto)
	if err != nil || again.Ran != "" {
		t.Errorf("maintenance right after a full one ran %q, %v; nothing is due", again.Ran, err)
	}
	quick, err := r.Maintain(ctx, repository.MaintenanceQuick)
	if err != nil || quick.Ran != repository.MaintenanceQuick {
		t.Errorf("forced quick maintenance: %q, %v", quick.Ran, err)
	}
	if _, err := r.Maintain(ctx, "weekly"); !errors.Is(err, repository.ErrInvalidRequest) || !strings.Contains(err.Error(), "auto, quick or full") {
		t.Errorf("unknown mode: %v", err)
	}
	// Another client, a restarted process, is the same owner.
	if res, err := mustOpen(t, path).Maintain(ctx, repository.MaintenanceQuick); err != nil || res.Ran != repository.MaintenanceQuick {
		t.Errorf("maintenance from another Tidemark client: %q, %v", res.Ran, err)
	}
}

package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/repository"
)

// servedPoint backs up a small directory into the repository of a running
// `tidemark serve` (as its data mover would) and publishes the facts of a
// completed run, returning the snapshot's manifest id once the catalog
// lists the point.
func servedPoint(t *testing.T, ctx context.Context, natsURL string, repo *repository.Repository, run, point string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("17\n"+run), 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := repo.ExportDir(ctx, repository.ExportRequest{App: "shop/postgres", Volume: "data", RunID: run, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []struct{ typ, data string }{
		{"io.tidemark.volume.exported.v1", `{"runId":"` + run + `","volume":"data","sourceKind":"snapshot","manifestId":"` + res.ManifestID + `","files":1,"bytes":10,"bytesUploaded":10,"startedAt":"2026-11-22T21:00:00Z","finishedAt":"2026-11-22T21:01:00Z"}`},
		{"io.tidemark.hook.released.v1", `{"runId":"` + run + `","step":"backup-start","heldFor":"1s","by":"request","outputs":{"labelfile":"START WAL LOCATION: 0/2000028"}}`},
		{"io.tidemark.backup.completed.v1", `{"runId":"` + run + `","application":"shop/postgres","restorePointId":"` + point + `","startedAt":"2026-11-22T21:00:00Z","finishedAt":"2026-11-22T21:02:00Z","freezeWindow":"2s","bytesRead":10,"bytesUploaded":10}`},
	} {
		if out, err := runTidemark(t, ctx, "events", "publish", e.typ, "--nats-url", natsURL, "--subject", "shop/postgres", "--correlation-id", run, "--data", e.data); err != nil {
			t.Fatalf("publish %s: %v\n%s", e.typ, err, out)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := runTidemark(t, ctx, "points", "show", point, "--nats-url", natsURL)
		if err == nil {
			return res.ManifestID
		}
		if time.Now().After(deadline) {
			t.Fatalf("the catalog never recorded %s: %v\n%s", point, err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func startServe(t *testing.T, dataDir string) (natsURL string, repo *repository.Repository) {
	t.Helper()
	p := startTidemark(t, "serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--log-format", "json")
	natsURL = p.logField(t, "embedded NATS started", "url")
	// The catalog logs its policy once its repository client is open.
	if policy := p.logField(t, "catalog retention", "policy"); !strings.Contains(policy, "every restore point is kept") {
		t.Errorf("without a retention file, serve says %q", policy)
	}
	pw, err := os.ReadFile(filepath.Join(dataDir, "repository.password"))
	if err != nil {
		t.Fatal(err)
	}
	repo, err = repository.Open(context.Background(), repository.Config{
		Path: filepath.Join(dataDir, "repository"), Password: strings.TrimSpace(string(pw)), CacheDir: t.TempDir(), NoCreate: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = repo.Close(context.Background()) })
	return natsURL, repo
}

func TestPointsDeleteRemovesThePointAndItsSnapshots(t *testing.T) {
	ctx := context.Background()
	dataDir := t.TempDir()
	natsURL, repo := startServe(t, dataDir)
	gone := servedPoint(t, ctx, natsURL, repo, "run-1", "rp-1")
	kept := servedPoint(t, ctx, natsURL, repo, "run-2", "rp-2")

	out, err := runTidemark(t, ctx, "points", "delete", "rp-1", "--nats-url", natsURL, "--data-dir", dataDir)
	if err != nil {
		t.Fatalf("points delete: %v\n%s", err, out)
	}
	if !strings.Contains(out, "Deleted restore point rp-1 of shop/postgres") || !strings.Contains(out, "deleted snapshot "+gone+" (data)") {
		t.Errorf("points delete printed:\n%s", out)
	}
	if ok, err := repo.HasSnapshot(ctx, gone); ok || err != nil {
		t.Errorf("rp-1's snapshot is still in the repository (%v)", err)
	}
	if ok, err := repo.HasSnapshot(ctx, kept); !ok || err != nil {
		t.Errorf("rp-2's snapshot was deleted too (%v)", err)
	}
	if _, err := runTidemark(t, ctx, "points", "show", "rp-1", "--nats-url", natsURL); err == nil || !strings.Contains(err.Error(), "restore point not found") {
		t.Errorf("rp-1 after its deletion: %v", err)
	}
	// The audit log says who deleted what.
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.GetLastMsgForSubject(ctx, "tidemark.evt.restorepoint.deleted.v1")
	if err != nil {
		t.Fatalf("no restorepoint.deleted in the audit log: %v", err)
	}
	if d := string(msg.Data); !strings.Contains(d, `"restorePointId":"rp-1"`) || !strings.Contains(d, gone) || !strings.Contains(d, "tidemark points delete") {
		t.Errorf("restorepoint.deleted carries %s", d)
	}

	// An unknown id: a clear error, and nothing else touched.
	_, err = runTidemark(t, ctx, "points", "delete", "rp-404", "--nats-url", natsURL, "--data-dir", dataDir)
	if err == nil || !strings.Contains(err.Error(), "restore point not found: rp-404") || !strings.Contains(err.Error(), "tidemark points list") {
		t.Errorf("deleting an unknown point: %v", err)
	}
	// A wrong repository: refused, never created.
	typo := filepath.Join(t.TempDir(), "no-such-repo")
	_, err = runTidemark(t, ctx, "points", "delete", "rp-2", "--nats-url", natsURL, "--data-dir", dataDir, "--repository-path", typo)
	if err == nil || !strings.Contains(err.Error(), "no repository in "+typo) || !strings.Contains(err.Error(), "--repository-path") {
		t.Errorf("deleting with a wrong repository path: %v", err)
	}
	if _, err := os.Stat(typo); err == nil {
		t.Error("points delete created a repository at the wrong path")
	}
	if _, err := runTidemark(t, ctx, "points", "show", "rp-2", "--nats-url", natsURL); err != nil {
		t.Errorf("rp-2 after a refused deletion: %v", err)
	}
}

func TestCatalogRebuildFromTheRepository(t *testing.T) {
	ctx := context.Background()
	dataDir := t.TempDir()
	natsURL, repo := startServe(t, dataDir)
	servedPoint(t, ctx, natsURL, repo, "run-1", "rp-1")
	servedPoint(t, ctx, natsURL, repo, "run-2", "rp-2")
	before, err := runTidemark(t, ctx, "points", "list", "--nats-url", natsURL, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}

	// The catalog's bucket is lost, and a fresh one created.
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteKeyValue(ctx, bus.BucketCatalog); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bus.BucketCatalog, History: 4}); err != nil {
		t.Fatal(err)
	}
	if out, _ := runTidemark(t, ctx, "points", "list", "--nats-url", natsURL, "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("the new bucket lists %s", out)
	}

	out, err := runTidemark(t, ctx, "catalog", "rebuild", "--nats-url", natsURL, "--data-dir", dataDir)
	if err != nil {
		t.Fatalf("catalog rebuild: %v\n%s", err, out)
	}
	if !strings.Contains(out, "2 restore point(s) restored, 0 already in the catalog") {
		t.Errorf("catalog rebuild printed:\n%s", out)
	}
	after, err := runTidemark(t, ctx, "points", "list", "--nats-url", natsURL, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var b, a []map[string]any
	if json.Unmarshal([]byte(before), &b) != nil || json.Unmarshal([]byte(after), &a) != nil || len(b) != 2 {
		t.Fatalf("before %s after %s", before, after)
	}
	if before != after {
		t.Errorf("the rebuilt catalog differs:\nbefore %s\nafter  %s", before, after)
	}
	out, err = runTidemark(t, ctx, "catalog", "rebuild", "--nats-url", natsURL, "--data-dir", dataDir)
	if err != nil || !strings.Contains(out, "0 restore point(s) restored, 2 already in the catalog") {
		t.Errorf("second rebuild: %v\n%s", err, out)
	}
}

package datamover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/platform/local"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/tests/bustest"
)

type harness struct {
	env  *bustest.Env
	snap *local.Snapshotter
	repo *repository.Repository
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	snap, err := local.NewSnapshotter(filepath.Join(t.TempDir(), "snapshots"), nil)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := repository.Open(t.Context(), repository.Config{
		Path: filepath.Join(t.TempDir(), "repository"), Password: "test-password", CacheDir: t.TempDir(),
		ProgressInterval: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = repo.Close(context.Background()) })
	h := &harness{env: bustest.Start(t), snap: snap, repo: repo}

	s, err := New(Config{Repository: repo, Resolver: LocalResolver(snap), Concurrency: 2, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}, h.env.Bus)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the data mover did not stop")
		}
	})
	return h
}

// volume writes a small volume.
func volume(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pgdata")
	for i := range 20 {
		p := filepath.Join(dir, "base", fmt.Sprintf("%d", 16384+i))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, bytes.Repeat([]byte{byte(i)}, 8192*(i+1)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// snapshot takes a local snapshot of the volume in dir.
func (h *harness) snapshot(t *testing.T, run events.RunID, dir string) events.SnapshotID {
	t.Helper()
	snaps, err := h.snap.Snapshot(t.Context(), run, []events.VolumeRef{{Name: "data", Source: dir}})
	if err != nil {
		t.Fatal(err)
	}
	return snaps[0].ID
}

func exportCmd(run events.RunID, key string, id events.SnapshotID) events.Event {
	ev := events.New("tidemark/test", "shop/postgres", events.VolumeExportRequested{
		RunID: run, Application: "shop/postgres", Volume: "data", SourceKind: SourceSnapshot,
		SnapshotID: id, Repository: "default", IdempotencyKey: key,
	}, time.Now())
	ev.CorrelationID = string(run)
	return ev
}

func fact[P events.Payload](match func(P) bool) func(events.Event) bool {
	return func(ev events.Event) bool {
		p, ok := events.As[P](ev)
		return ok && match(p)
	}
}

func TestExportAndImportThroughTheBus(t *testing.T) {
	h := newHarness(t)
	vol := volume(t)
	id := h.snapshot(t, "run-1", vol)
	cmd := exportCmd("run-1", "run-1:export:data", id)
	h.env.Publish(t, cmd)

	ev := h.env.WaitFor(t, 30*time.Second, "volume.exported", fact(func(p events.VolumeExported) bool { return p.RunID == "run-1" }))
	exp, _ := events.As[events.VolumeExported](ev)
	if ev.CorrelationID != "run-1" || ev.CausationID != cmd.ID || ev.Subject != "shop/postgres" {
		t.Errorf("exported event: correlation %q causation %q subject %q", ev.CorrelationID, ev.CausationID, ev.Subject)
	}
	const wantBytes = 8192 * 20 * 21 / 2
	if exp.ManifestID == "" || exp.Files != 20 || exp.Bytes != wantBytes || exp.BytesUploaded <= 0 || exp.SourceKind != SourceSnapshot {
		t.Errorf("exported = %+v", exp)
	}
	prog := h.env.WaitFor(t, 5*time.Second, "volume.export.progress", fact(func(p events.VolumeExportProgress) bool { return p.RunID == "run-1" }))
	if prog.CausationID != cmd.ID {
		t.Errorf("progress causation %q, want %q", prog.CausationID, cmd.ID)
	}

	// The same command again repeats the result without a new snapshot.
	again := exportCmd("run-1", "run-1:export:data", id)
	h.env.Publish(t, again)
	ev2 := h.env.WaitFor(t, 30*time.Second, "repeated volume.exported", func(e events.Event) bool {
		_, ok := events.As[events.VolumeExported](e)
		return ok && e.CausationID == again.ID
	})
	if rep, _ := events.As[events.VolumeExported](ev2); rep.ManifestID != exp.ManifestID {
		t.Errorf("repeated export gave manifest %s, want %s", rep.ManifestID, exp.ManifestID)
	}

	// The next run's snapshot of the unchanged volume uploads nothing new.
	id2 := h.snapshot(t, "run-2", vol)
	h.env.Publish(t, exportCmd("run-2", "run-2:export:data", id2))
	ev3 := h.env.WaitFor(t, 30*time.Second, "second volume.exported", fact(func(p events.VolumeExported) bool { return p.RunID == "run-2" }))
	if e2, _ := events.As[events.VolumeExported](ev3); e2.BytesUploaded != 0 || e2.ManifestID == exp.ManifestID {
		t.Errorf("second export = %+v, want 0 bytes uploaded and a new manifest", e2)
	}

	target := filepath.Join(t.TempDir(), "restored")
	imp := events.New("tidemark/test", "shop/postgres", events.VolumeImportRequested{
		RunID: "restore-1", Volume: "data", ManifestID: exp.ManifestID, Repository: "default",
		TargetKind: TargetDirectory, Target: target, IdempotencyKey: "restore-1:data",
	}, time.Now())
	imp.CorrelationID = "restore-1"
	h.env.Publish(t, imp)
	ev4 := h.env.WaitFor(t, 30*time.Second, "volume.imported", fact(func(p events.VolumeImported) bool { return p.RunID == "restore-1" }))
	if got, _ := events.As[events.VolumeImported](ev4); got.Files != 20 || got.Bytes != wantBytes || got.ManifestID != exp.ManifestID {
		t.Errorf("imported = %+v", got)
	}
	for i := range 20 {
		b, err := os.ReadFile(filepath.Join(target, "base", fmt.Sprintf("%d", 16384+i)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, bytes.Repeat([]byte{byte(i)}, 8192*(i+1))) {
			t.Errorf("file %d came back different", i)
		}
	}
	h.env.WaitFor(t, 5*time.Second, "volume.import.progress", fact(func(p events.VolumeImportProgress) bool {
		return p.RunID == "restore-1" && p.BytesDone == wantBytes && p.BytesTotal == wantBytes
	}))

	// In place: the restored copy replaces the directory's contents only
	// once it is complete and verified; the previous contents are kept.
	if err := os.WriteFile(filepath.Join(target, "written-after-the-backup"), []byte("later"), 0o600); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	replace := func(key string) events.VolumeImported {
		ev := events.New("tidemark/test", "shop/postgres", events.VolumeImportRequested{
			RunID: "restore-prod-1", Volume: "data", ManifestID: exp.ManifestID, Repository: "default",
			TargetKind: TargetReplace, Target: target, IdempotencyKey: key,
		}, time.Now())
		ev.CorrelationID = "restore-prod-1"
		h.env.Publish(t, ev)
		got := h.env.WaitFor(t, 30*time.Second, "volume.imported "+key, func(e events.Event) bool {
			p, ok := events.As[events.VolumeImported](e)
			return ok && !seen[e.ID] && p.RunID == "restore-prod-1" && p.Previous != ""
		})
		seen[got.ID] = true
		p, _ := events.As[events.VolumeImported](got)
		return p
	}
	first := replace("restore-prod-1:data")
	if _, err := os.Stat(filepath.Join(target, "written-after-the-backup")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the replaced directory still has a file the backup did not: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(first.Previous, "written-after-the-backup")); err != nil || string(b) != "later" {
		t.Errorf("the previous contents were not kept at %s: %q %v", first.Previous, b, err)
	}
	// A second attempt of the same run (a redelivery after a crash) must
	// not take the first attempt's copy for the previous contents.
	second := replace("restore-prod-1:data:retry")
	if second.Previous != first.Previous {
		t.Errorf("retry kept the previous contents at %s, first at %s", second.Previous, first.Previous)
	}
	if b, err := os.ReadFile(filepath.Join(first.Previous, "written-after-the-backup")); err != nil || string(b) != "later" {
		t.Errorf("a retry overwrote the kept previous contents: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(target, "base", "16384")); err != nil {
		t.Errorf("after the retry the restored copy is not in place: %v", err)
	}
	if leftovers, _ := filepath.Glob(target + ".tidemark-restore-*"); len(leftovers) > 0 {
		t.Errorf("staging directories left behind: %v", leftovers)
	}
}

func TestExportFailures(t *testing.T) {
	h := newHarness(t)
	h.env.Publish(t, exportCmd("run-gone", "run-gone:data", "tm-does-not-exist"))
	ev := h.env.WaitFor(t, 30*time.Second, "volume.export.failed", fact(func(p events.VolumeExportFailed) bool { return p.RunID == "run-gone" }))
	if f, _ := events.As[events.VolumeExportFailed](ev); !f.Permanent || !strings.Contains(f.Error, "not found") {
		t.Errorf("export of a missing snapshot: %+v", f)
	}

	dump := events.New("tidemark/test", "shop/mysql", events.VolumeExportRequested{
		RunID: "run-dump", Application: "shop/mysql", Volume: "dump", SourceKind: SourceDump,
		DumpStep: "mysqldump", Repository: "default", IdempotencyKey: "run-dump:dump",
	}, time.Now())
	dump.CorrelationID = "run-dump"
	h.env.Publish(t, dump)
	ev = h.env.WaitFor(t, 30*time.Second, "volume.export.failed", fact(func(p events.VolumeExportFailed) bool { return p.RunID == "run-dump" }))
	if f, _ := events.As[events.VolumeExportFailed](ev); !f.Permanent || !strings.Contains(f.Error, "dump stream not found") {
		t.Errorf("export of a dump that never ran: %+v", f)
	}

	imp := events.New("tidemark/test", "shop/postgres", events.VolumeImportRequested{
		RunID: "restore-x", Volume: "data", ManifestID: "0123456789abcdef0123456789abcdef", Repository: "default",
		TargetKind: TargetDirectory, Target: t.TempDir(), IdempotencyKey: "restore-x:data",
	}, time.Now())
	h.env.Publish(t, imp)
	ev = h.env.WaitFor(t, 30*time.Second, "volume.import.failed", fact(func(p events.VolumeImportFailed) bool { return p.RunID == "restore-x" }))
	if f, _ := events.As[events.VolumeImportFailed](ev); !f.Permanent || !strings.Contains(f.Error, "not found") {
		t.Errorf("import of an unknown manifest: %+v", f)
	}
}

func TestPassword(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	if pw, err := Password("given", "", filepath.Join(dir, "gen"), log); err != nil || pw != "given" {
		t.Errorf("Password(value) = %q, %v", pw, err)
	}
	file := filepath.Join(dir, "pw")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if pw, err := Password("", file, filepath.Join(dir, "gen"), log); err != nil || pw != "from-file" {
		t.Errorf("Password(file) = %q, %v", pw, err)
	}
	if _, err := Password("", filepath.Join(dir, "missing"), filepath.Join(dir, "gen"), log); err == nil {
		t.Error("a missing password file was accepted")
	}
	gen := filepath.Join(dir, "gen")
	first, err := Password("", "", gen, log)
	if err != nil || len(first) < 32 {
		t.Fatalf("generated password %q, %v", first, err)
	}
	if fi, err := os.Stat(gen); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("generated password file: %v, %v", fi, err)
	}
	if again, err := Password("", "", gen, log); err != nil || again != first {
		t.Errorf("second start got a different password (%v)", err)
	}
}

// A dump step's stream goes from the dumps bucket into the repository, and
// back into the bucket for a restore's dump step to read.
func TestDumpThroughTheBus(t *testing.T) {
	h := newHarness(t)
	ctx := t.Context()
	objects, err := h.env.Bus.ObjectStore(ctx, bus.BucketDumps)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("INSERT INTO t VALUES (42);\n"), 200000)
	if _, err := objects.Put(ctx, bus.DumpObject("run-d", "mysqldump"), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	cmd := events.New("tidemark/test", "shop/mysql", events.VolumeExportRequested{
		RunID: "run-d", Application: "shop/mysql", Volume: "mysqldump", SourceKind: SourceDump,
		DumpStep: "dump", Repository: "default", IdempotencyKey: "run-d:mysqldump",
	}, time.Now())
	cmd.CorrelationID = "run-d"
	h.env.Publish(t, cmd)
	ev := h.env.WaitFor(t, 30*time.Second, "volume.exported", fact(func(p events.VolumeExported) bool { return p.RunID == "run-d" }))
	exp, _ := events.As[events.VolumeExported](ev)
	if exp.Bytes != int64(len(data)) || exp.Files != 1 || exp.SourceKind != SourceDump || exp.BytesUploaded <= 0 || exp.BytesUploaded >= int64(len(data)) {
		t.Errorf("exported dump = %+v (%d bytes sent; zstd should shrink it)", exp, len(data))
	}
	if _, err := objects.Get(ctx, bus.DumpObject("run-d", "mysqldump")); !errors.Is(err, bus.ErrObjectNotFound) {
		t.Errorf("the exported dump stream is still in the bucket (%v)", err)
	}

	imp := events.New("tidemark/test", "shop/mysql", events.VolumeImportRequested{
		RunID: "restore-d", Volume: "mysqldump", ManifestID: exp.ManifestID, Repository: "default",
		TargetKind: TargetStream, Target: "load-dump", IdempotencyKey: "restore-d:mysqldump",
	}, time.Now())
	imp.CorrelationID = "restore-d"
	h.env.Publish(t, imp)
	// The restore's dump step reads the pipe while the mover fills it.
	r := h.env.Bus.ReadPipe(ctx, bus.DumpObject("restore-d", "mysqldump"), 30*time.Second)
	defer r.Close()
	back, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data) {
		t.Errorf("the dump came back as %d bytes, differing from the %d stored", len(back), len(data))
	}
	ev = h.env.WaitFor(t, 30*time.Second, "volume.imported", fact(func(p events.VolumeImported) bool { return p.RunID == "restore-d" }))
	if got, _ := events.As[events.VolumeImported](ev); got.Bytes != int64(len(data)) {
		t.Errorf("imported dump = %+v", got)
	}

	// A stream whose reader has stopped reading (readBy passed) before a
	// mover took it: nothing is sent, at once, rather than the mover
	// waiting 30 minutes for a reader that is gone.
	gone := time.Now().Add(-time.Second)
	late := events.New("tidemark/test", "shop/mysql", events.VolumeImportRequested{
		RunID: "restore-late", Volume: "mysqldump", ManifestID: exp.ManifestID, Repository: "default",
		TargetKind: TargetStream, Target: "coordinator", ReadBy: &gone, IdempotencyKey: "restore-late:mysqldump",
	}, time.Now())
	late.CorrelationID = "restore-late"
	h.env.Publish(t, late)
	ev = h.env.WaitFor(t, 30*time.Second, "volume.import.failed", fact(func(p events.VolumeImportFailed) bool { return p.RunID == "restore-late" }))
	if f, _ := events.As[events.VolumeImportFailed](ev); !f.Permanent || !strings.Contains(f.Error, "stopped reading") {
		t.Errorf("late stream import: %+v, want a permanent failure saying the reader stopped reading", f)
	}
	// And one whose reader never comes, readBy soon: the mover gives up then.
	soon := time.Now().Add(time.Second)
	unread := events.New("tidemark/test", "shop/mysql", events.VolumeImportRequested{
		RunID: "restore-unread", Volume: "mysqldump", ManifestID: exp.ManifestID, Repository: "default",
		TargetKind: TargetStream, Target: "coordinator", ReadBy: &soon, IdempotencyKey: "restore-unread:mysqldump",
	}, time.Now())
	unread.CorrelationID = "restore-unread"
	h.env.Publish(t, unread)
	h.env.WaitFor(t, 30*time.Second, "volume.import.failed of the unread stream", fact(func(p events.VolumeImportFailed) bool { return p.RunID == "restore-unread" }))
}

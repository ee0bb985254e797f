package local

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform"
)

// logBuffer collects log lines for assertions; it is safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func newSnapshotter(t testing.TB, root string) (*Snapshotter, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	s, err := NewSnapshotter(root, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return s, logs
}

// snapshotDirs lists the snapshot directories under root.
func snapshotDirs(t testing.TB, root string) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(root, "*", "tm-*"))
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// checkTreeSnapshot snapshots a full test tree from base/vol into
// base/snapshots and checks that it comes back identical, sparse, and
// taken with the expected method. It returns the snapshot and how many
// bytes of base's filesystem taking it used.
func checkTreeSnapshot(t *testing.T, base, wantMethod string) (platform.Snapshot, int64) {
	src := filepath.Join(base, "vol")
	buildTree(t, src)
	s, logs := newSnapshotter(t, filepath.Join(base, "snapshots"))
	// Flush the new source first: delayed allocation (btrfs) would
	// otherwise charge its blocks to the snapshot.
	if err := syncFS(base); err != nil {
		t.Fatal(err)
	}
	var before, after unix.Statfs_t
	if err := unix.Statfs(base, &before); err != nil {
		t.Fatal(err)
	}
	snaps, err := s.Snapshot(context.Background(), "run-tree", []events.VolumeRef{{Name: "data", Source: src}})
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Statfs(base, &after); err != nil {
		t.Fatal(err)
	}
	used := (int64(before.Bfree) - int64(after.Bfree)) * before.Bsize
	if len(snaps) != 1 {
		t.Fatalf("got %d snapshots", len(snaps))
	}
	sn := snaps[0]
	if sn.Method != wantMethod {
		t.Errorf("method %q, want %q", sn.Method, wantMethod)
	}
	if sn.Volume != "data" || sn.RunID != "run-tree" || sn.Duration <= 0 || sn.CreatedAt.IsZero() {
		t.Errorf("snapshot %+v", sn)
	}
	if want := int64(10<<20 + sparseSize); sn.Bytes < want {
		t.Errorf("bytes %d, want at least %d", sn.Bytes, want)
	}
	compareTrees(t, src, sn.Path)
	if got := allocated(t, filepath.Join(sn.Path, "sparse.img")); got > 1<<20 {
		t.Errorf("the sparse file's copy allocates %d bytes; holes were filled", got)
	}
	warnings := strings.Count(logs.String(), "level=WARN")
	switch {
	case wantMethod == platform.MethodCopy && warnings != 1:
		t.Errorf("want one warning about the copy, got %d:\n%s", warnings, logs)
	case wantMethod == platform.MethodCopy && !strings.Contains(logs.String(), "volume=data"):
		t.Errorf("the warning does not name the volume:\n%s", logs)
	case wantMethod == platform.MethodReflink && warnings != 0:
		t.Errorf("unexpected warnings:\n%s", logs)
	}
	return sn, used
}

func TestSnapshotOfTempDirPreservesTheTree(t *testing.T) {
	base := t.TempDir()
	want := platform.MethodCopy
	if canReflink(t, base) {
		want = platform.MethodReflink // this machine's temp filesystem clones files
	}
	t.Logf("temporary filesystem at %s: expecting method %q", base, want)
	sn, used := checkTreeSnapshot(t, base, want)
	t.Logf("%s snapshot of %d bytes in %s, using %d bytes of the filesystem", sn.Method, sn.Bytes, sn.Duration, used)
}

func TestSnapshotOnReflinkFilesystemIsAClone(t *testing.T) {
	mnt := reflinkFS(t)
	sn, used := checkTreeSnapshot(t, mnt, platform.MethodReflink)
	// The source tree's data takes more than 10 MiB; shared extents cost
	// only metadata.
	if used > 4<<20 {
		t.Errorf("the clone used %d bytes of the filesystem; extents were not shared", used)
	}
	t.Logf("reflink snapshot of %d bytes in %s, using %d bytes of the filesystem", sn.Bytes, sn.Duration, used)

	// The same volume with the snapshot root on another filesystem
	// cannot be cloned: it is copied, and says so.
	s, logs := newSnapshotter(t, filepath.Join(t.TempDir(), "snapshots"))
	snaps, err := s.Snapshot(context.Background(), "run-cross", []events.VolumeRef{{Name: "data", Source: filepath.Join(mnt, "vol")}})
	if err != nil {
		t.Fatal(err)
	}
	if snaps[0].Method != platform.MethodCopy || !strings.Contains(logs.String(), "another filesystem") {
		t.Errorf("cross-filesystem snapshot: method %q, logs:\n%s", snaps[0].Method, logs)
	}
}

func TestGroupSnapshotListsEveryVolume(t *testing.T) {
	base := t.TempDir()
	var vols []events.VolumeRef
	for _, name := range []string{"data", "wal", "config/extra"} {
		src := filepath.Join(base, strings.ReplaceAll(name, "/", "-"))
		if err := os.MkdirAll(src, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, "f"), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
		vols = append(vols, events.VolumeRef{Name: name, Source: src})
	}
	s, _ := newSnapshotter(t, filepath.Join(base, "snapshots"))
	snaps, err := s.Snapshot(context.Background(), "run-group", vols)
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 3 {
		t.Fatalf("got %d snapshots, want 3", len(snaps))
	}
	ids := map[events.SnapshotID]bool{}
	for i, sn := range snaps {
		if sn.Volume != vols[i].Name {
			t.Errorf("snapshot %d is of %q, want %q", i, sn.Volume, vols[i].Name)
		}
		if got, err := os.ReadFile(filepath.Join(sn.Path, "f")); err != nil || string(got) != vols[i].Name {
			t.Errorf("%s: %q, %v", sn.Path, got, err)
		}
		ids[sn.ID] = true
	}
	listed, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 3 || len(listed) != 3 {
		t.Fatalf("ids %v, listed %+v", ids, listed)
	}
	for _, l := range listed {
		if !ids[l.ID] || l.Incomplete || l.RunID != "run-group" || l.Method == "" || l.CreatedAt.IsZero() {
			t.Errorf("listed %+v", l)
		}
	}
}

func TestGroupWithMissingSourceFailsAndLeavesNothing(t *testing.T) {
	base := t.TempDir()
	ok := filepath.Join(base, "ok")
	if err := os.Mkdir(ok, 0o755); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(base, "snapshots")
	s, _ := newSnapshotter(t, root)
	missing := filepath.Join(base, "x", "y")
	_, err := s.Snapshot(context.Background(), "run-missing", []events.VolumeRef{{Name: "data", Source: ok}, {Name: "wal", Source: missing}})
	if !errors.Is(err, platform.ErrSourceNotFound) || !platform.IsPermanentSnapshotError(err) {
		t.Fatalf("err %v", err)
	}
	if want := "volume wal: " + missing + " does not exist; fix spec.volumes in the Application"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if dirs := snapshotDirs(t, root); len(dirs) != 0 {
		t.Errorf("left behind: %v", dirs)
	}
}

// cancelOn is a log handler that cancels a context when a record names a
// given volume: a way to make a real snapshot fail midway.
type cancelOn struct {
	slog.Handler
	volume string
	cancel context.CancelFunc
}

func (h cancelOn) Handle(ctx context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "volume" && a.Value.String() == h.volume {
			h.cancel()
		}
		return true
	})
	return h.Handler.Handle(ctx, r)
}

func TestGroupFailingMidwayDeletesTheSnapshotsAlreadyTaken(t *testing.T) {
	base := t.TempDir()
	if canReflink(t, base) {
		t.Skip("the temporary filesystem clones files, so no copy warning arrives to fail on")
	}
	var vols []events.VolumeRef
	for _, name := range []string{"first", "second", "third"} {
		src := filepath.Join(base, name)
		if err := os.MkdirAll(filepath.Join(src, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"a", "sub/b"} {
			if err := os.WriteFile(filepath.Join(src, f), bytes.Repeat([]byte(name), 1000), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		vols = append(vols, events.VolumeRef{Name: name, Source: src})
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	root := filepath.Join(base, "snapshots")
	s, err := NewSnapshotter(root, slog.New(cancelOn{slog.NewTextHandler(io.Discard, nil), "second", cancel}))
	if err != nil {
		t.Fatal(err)
	}
	// The copy warning for "second" cancels the context while its first
	// file is being copied: "first" is complete by then.
	_, err = s.Snapshot(ctx, "run-midway", vols)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "volume second") {
		t.Fatalf("err %v", err)
	}
	if dirs := snapshotDirs(t, root); len(dirs) != 0 {
		t.Errorf("left behind: %v", dirs)
	}
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Errorf("the snapshot root still holds %v", entries)
	}
}

func TestInvalidVolumesFailPermanently(t *testing.T) {
	base := t.TempDir()
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "dir")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s, _ := newSnapshotter(t, filepath.Join(base, "snapshots"))
	for name, c := range map[string]struct {
		vols []events.VolumeRef
		want string
	}{
		"none":         {nil, "no volumes"},
		"no name":      {[]events.VolumeRef{{Source: base}}, "has no name"},
		"twice":        {[]events.VolumeRef{{Name: "d", Source: dir}, {Name: "d", Source: dir}}, "named twice"},
		"relative":     {[]events.VolumeRef{{Name: "d", Source: "var/lib"}}, "must be an absolute directory"},
		"not a dir":    {[]events.VolumeRef{{Name: "d", Source: file}}, "is not a directory"},
		"holds itself": {[]events.VolumeRef{{Name: "d", Source: base}}, "inside " + base},
	} {
		_, err := s.Snapshot(context.Background(), "run-bad", c.vols)
		if !errors.Is(err, platform.ErrInvalidVolume) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrInvalidVolume mentioning %q", name, err, c.want)
		}
	}
}

func TestDeleteRemovesDataAndIsIdempotent(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "vol")
	buildTree(t, src) // read-only directories included: deleting must still work
	root := filepath.Join(base, "snapshots")
	s, _ := newSnapshotter(t, root)
	snaps, err := s.Snapshot(context.Background(), "run-del", []events.VolumeRef{{Name: "data", Source: src}})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := s.Delete(context.Background(), snaps[0].ID); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(snaps[0].Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data still there: %v", err)
	}
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Errorf("the snapshot root still holds %v", entries)
	}
	if _, err := os.Stat(filepath.Join(src, "big.bin")); err != nil {
		t.Errorf("the source was touched: %v", err)
	}
	for _, bad := range []events.SnapshotID{"", "../vol", "tm-../../vol", "tm-*", "tm-a/b", "."} {
		if err := s.Delete(context.Background(), bad); !errors.Is(err, platform.ErrInvalidSnapshotID) {
			t.Errorf("Delete(%q): %v, want ErrInvalidSnapshotID", bad, err)
		}
	}
}

func TestListReportsIncompleteSnapshots(t *testing.T) {
	root := filepath.Join(t.TempDir(), "snapshots")
	s, _ := newSnapshotter(t, root)
	crashed := filepath.Join(root, "run-crashed", "tm-run-crashed-data-0badf00d")
	if err := os.MkdirAll(filepath.Join(crashed, "data", "half"), 0o755); err != nil {
		t.Fatal(err)
	}
	listed, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(listed) != 1 || !listed[0].Incomplete || listed[0].RunID != "run-crashed" || listed[0].ID != "tm-run-crashed-data-0badf00d" {
		t.Fatalf("listed %+v", listed)
	}
	if err := s.Delete(context.Background(), listed[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(crashed); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("still there: %v", err)
	}
}

func TestSnapshotIDsAreSafeAndUnique(t *testing.T) {
	seen := map[string]string{}
	for _, name := range []string{"data", "a/b", "a_b", "..", ".", "x:y", "x_y", strings.Repeat("v", 100), strings.Repeat("v", 101), "ünïcode"} {
		tok := token(name)
		if prev, dup := seen[tok]; dup {
			t.Errorf("%q and %q share the token %q", prev, name, tok)
		}
		seen[tok] = name
		if tok == "" || tok[0] == '.' || strings.ContainsAny(tok, "/:*?[\\") || len(tok) > 64 {
			t.Errorf("token(%q) = %q is not a safe path element", name, tok)
		}
		if !validID(events.SnapshotID("tm-" + tok + "-" + tok + "-0011aabb")) {
			t.Errorf("an id made of %q is refused", tok)
		}
	}
	if token("0193a6f2-7c1e-7b3a-9d2e-4f5a6b7c8d9e") != "0193a6f2-7c1e-7b3a-9d2e-4f5a6b7c8d9e" {
		t.Error("a UUID run id should name its directory unchanged")
	}
}

func TestCreatedAtUsesTheInjectedClock(t *testing.T) {
	base := t.TempDir()
	s, _ := newSnapshotter(t, filepath.Join(base, "snapshots"))
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	s.Now = func() time.Time { return at }
	vol := filepath.Join(base, "vol")
	if err := os.Mkdir(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	snaps, err := s.Snapshot(context.Background(), "run-clock", []events.VolumeRef{{Name: "empty", Source: vol}})
	if err != nil {
		t.Fatal(err)
	}
	listed, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !snaps[0].CreatedAt.Equal(at) || len(listed) != 1 || !listed[0].CreatedAt.Equal(at) {
		t.Errorf("created %s, listed %+v", snaps[0].CreatedAt, listed)
	}
	if snaps[0].Method != platform.MethodCopy {
		t.Errorf("a volume without files reports %q: nothing was cloned", snaps[0].Method)
	}
}

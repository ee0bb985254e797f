package repository_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tidemark-dev/tidemark/pkg/repository"
)

const testPassword = "correct horse battery staple"

func open(t *testing.T, path, password string) (*repository.Repository, error) {
	t.Helper()
	r, err := repository.Open(t.Context(), repository.Config{
		Path: path, Password: password, CacheDir: t.TempDir(), ProgressInterval: 50 * time.Millisecond,
	})
	if err == nil {
		t.Cleanup(func() { _ = r.Close(context.Background()) })
	}
	return r, err
}

func mustOpen(t *testing.T, path string) *repository.Repository {
	t.Helper()
	r, err := open(t, path, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// randomBytes returns n reproducible pseudo-random bytes.
func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)}))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// makeTree writes ~2000 small files, a 32 MiB file, a sparse file,
// symlinks and entries with odd modes and times under dir.
func makeTree(t *testing.T, dir string) (totalBytes int64) {
	t.Helper()
	return makeTreeSized(t, dir, 2000, 32<<20)
}

// makeTreeSized is makeTree with small files and a big file of bigSize.
func makeTreeSized(t *testing.T, dir string, small, bigSize int) (totalBytes int64) {
	t.Helper()
	write := func(rel string, data []byte, mode fs.FileMode) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		totalBytes += int64(len(data))
	}
	for i := range small {
		write(fmt.Sprintf("small/d%02d/f%04d.dat", i%40, i), randomBytes(uint64(i), 8*(i%512)+1), 0o644)
	}
	write("big/big.bin", randomBytes(99999, bigSize), 0o640)
	write("modes/readonly", []byte("read only\n"), 0o444)
	write("modes/exec.sh", []byte("#!/bin/sh\necho hi\n"), 0o755)
	write("modes/private", []byte("secret\n"), 0o600)
	write("modes/setgid", []byte("g\n"), 0o2755)
	write("empty", nil, 0o644)

	// Sparse: 64 MiB with two 4 KiB islands of data.
	sp := filepath.Join(dir, "sparse/disk.img")
	if err := os.MkdirAll(filepath.Dir(sp), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(sp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(randomBytes(7, 4096), 10<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(randomBytes(8, 4096), 64<<20-4096); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	totalBytes += 64 << 20

	for name, target := range map[string]string{
		"links/relative": "../modes/exec.sh",
		"links/absolute": "/etc/hostname",
		"links/dangling": "does/not/exist",
		"links/todir":    "../small/d01",
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "modes"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "sticky"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "sticky"), 0o1777); err != nil {
		t.Fatal(err)
	}

	// Fixed odd times, with nanoseconds, set deepest first so setting a
	// file's time does not disturb its directory's afterwards.
	var paths []string
	_ = filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	})
	base := time.Date(2021, 3, 14, 15, 9, 26, 535897932, time.UTC)
	for i := len(paths) - 1; i >= 0; i-- {
		mt := base.Add(time.Duration(i) * 1234567891)
		if err := lchtimes(paths[i], mt); err != nil {
			t.Fatal(err)
		}
	}
	return totalBytes
}

type entry struct {
	Mode   fs.FileMode
	Size   int64
	MTime  int64
	Target string
	SHA256 string
}

// walk describes every entry under dir, dir itself as ".".
func walk(t *testing.T, dir string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		e := entry{Mode: fi.Mode(), MTime: fi.ModTime().UnixNano()}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if e.Target, err = os.Readlink(p); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			e.Size = fi.Size()
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			e.SHA256 = hex.EncodeToString(sum[:])
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestExportImportRoundTrip(t *testing.T) {
	ctx := t.Context()
	src := filepath.Join(t.TempDir(), "volume")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	total := makeTree(t, src)
	want := walk(t, src)

	r := mustOpen(t, filepath.Join(t.TempDir(), "repo"))

	var (
		mu      sync.Mutex
		reports []repository.Progress
	)
	onProgress := func(p repository.Progress) {
		mu.Lock()
		defer mu.Unlock()
		reports = append(reports, p)
	}
	start := time.Now()
	res, err := r.ExportDir(ctx, repository.ExportRequest{App: "shop/postgres", Volume: "data", RunID: "r1", Dir: src, Progress: onProgress})
	if err != nil {
		t.Fatal(err)
	}
	exportTook := time.Since(start)
	t.Logf("export: %d files, %d bytes, %d uploaded in %v (%.1f MB/s)", res.Files, res.Bytes, res.BytesUploaded, exportTook, float64(res.Bytes)/exportTook.Seconds()/1e6)
	if res.ManifestID == "" || res.Files != 2000+7 || res.Bytes != total || res.HashedFiles != res.Files {
		t.Fatalf("export result = %+v, want %d bytes", res, total)
	}
	if res.BytesUploaded <= 0 {
		t.Errorf("first export uploaded %d bytes", res.BytesUploaded)
	}
	mu.Lock()
	if len(reports) == 0 {
		t.Error("no progress reported")
	} else if last := reports[len(reports)-1]; last.BytesDone != total || last.FilesDone != res.Files {
		t.Errorf("last progress = %+v, want %d bytes, %d files", last, total, res.Files)
	}
	reports = nil
	mu.Unlock()

	// Unchanged: every file comes from the hash cache and nothing is new.
	res2, err := r.ExportDir(ctx, repository.ExportRequest{App: "shop/postgres", Volume: "data", RunID: "r2", Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("re-export: %d files, %d hashed again, %d bytes uploaded in %v", res2.Files, res2.HashedFiles, res2.BytesUploaded, res2.FinishedAt.Sub(res2.StartedAt))
	if res2.BytesUploaded != 0 {
		t.Errorf("re-export of an unchanged tree uploaded %d bytes, want 0", res2.BytesUploaded)
	}
	if res2.HashedFiles != 0 || res2.Files != res.Files || res2.Bytes != res.Bytes {
		t.Errorf("re-export = %+v, want the same files as %+v and none hashed again", res2, res)
	}
	if res2.ManifestID == res.ManifestID {
		t.Error("re-export reused the manifest ID")
	}

	dst := filepath.Join(t.TempDir(), "restored")
	start = time.Now()
	ires, err := r.ImportDir(ctx, res.ManifestID, dst, onProgress)
	if err != nil {
		t.Fatal(err)
	}
	importTook := time.Since(start)
	t.Logf("import: %d files, %d bytes in %v (%.1f MB/s)", ires.Files, ires.Bytes, importTook, float64(ires.Bytes)/importTook.Seconds()/1e6)
	if ires.Bytes != total {
		t.Errorf("imported %d bytes, want %d", ires.Bytes, total)
	}
	got := walk(t, dst)
	for rel, w := range want {
		g, ok := got[rel]
		if !ok {
			t.Errorf("%s: missing after import", rel)
			continue
		}
		if comparable(rel, g) != comparable(rel, w) {
			t.Errorf("%s: imported %+v, want %+v", rel, g, w)
		}
	}
	for rel := range got {
		if _, ok := want[rel]; !ok {
			t.Errorf("%s: imported but not in the source", rel)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dst, "sparse/disk.img"), &st); err != nil {
		t.Fatal(err)
	}
	if allocated := st.Blocks * 512; allocated > 8<<20 {
		t.Errorf("the sparse file came back with %d bytes allocated, want holes", allocated)
	}
	mu.Lock()
	if len(reports) == 0 || reports[len(reports)-1].BytesDone != total || reports[len(reports)-1].BytesTotal != total {
		t.Errorf("import progress = %+v", reports)
	}
	mu.Unlock()
}

// A different mover exporting the same volume from another directory (the
// next run's snapshot) still finds the parent and uploads nothing new.
func TestExportParentFoundFromAnotherDirectory(t *testing.T) {
	ctx := t.Context()
	repoPath := filepath.Join(t.TempDir(), "repo")
	a, b := t.TempDir(), t.TempDir()
	for i := range 50 {
		data := randomBytes(uint64(i), 10000)
		for _, d := range []string{a, b} {
			p := filepath.Join(d, fmt.Sprintf("f%02d", i))
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(p, time.Unix(1e9, 0), time.Unix(1e9, int64(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	r1 := mustOpen(t, repoPath)
	if _, err := r1.ExportDir(ctx, repository.ExportRequest{App: "shop/pg", Volume: "data", RunID: "r1", Dir: a}); err != nil {
		t.Fatal(err)
	}
	if err := r1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	r2 := mustOpen(t, repoPath) // another process, its own cache
	res, err := r2.ExportDir(ctx, repository.ExportRequest{App: "shop/pg", Volume: "data", RunID: "r2", Dir: b})
	if err != nil {
		t.Fatal(err)
	}
	if res.BytesUploaded != 0 || res.HashedFiles != 0 || res.Files != 50 {
		t.Errorf("export from another directory: %+v, want 50 files, none hashed, 0 bytes uploaded", res)
	}
}

func TestStreamRoundTrip(t *testing.T) {
	ctx := t.Context()
	r := mustOpen(t, filepath.Join(t.TempDir(), "repo"))
	data := randomBytes(42, 5<<20+123)
	res, err := r.ExportStream(ctx, repository.StreamRequest{App: "shop/mysql", Artifact: "dump", RunID: "r1", Reader: bytes.NewReader(data)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes != int64(len(data)) || res.Files != 1 {
		t.Errorf("stream export = %+v", res)
	}
	var out bytes.Buffer
	var last repository.Progress
	ires, err := r.ImportStream(ctx, res.ManifestID, &out, func(p repository.Progress) { last = p })
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("stream came back as %d bytes, differing from the %d sent", out.Len(), len(data))
	}
	if ires.Bytes != int64(len(data)) || last.BytesDone != int64(len(data)) || last.BytesTotal != int64(len(data)) {
		t.Errorf("import = %+v, last progress %+v", ires, last)
	}

	// The same dump again is deduplicated.
	res2, err := r.ExportStream(ctx, repository.StreamRequest{App: "shop/mysql", Artifact: "dump", RunID: "r2", Reader: bytes.NewReader(data)})
	if err != nil {
		t.Fatal(err)
	}
	if res2.BytesUploaded != 0 {
		t.Errorf("identical stream uploaded %d bytes again", res2.BytesUploaded)
	}
}

func TestWrongPassword(t *testing.T) {
	path := filepath.Join(t.TempDir(), "repo")
	r := mustOpen(t, path)
	if err := r.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	const wrong = "hunter2-not-the-password"
	_, err := open(t, path, wrong)
	if !errors.Is(err, repository.ErrWrongPassword) {
		t.Fatalf("open with a wrong password: %v, want ErrWrongPassword", err)
	}
	if !repository.IsPermanent(err) {
		t.Error("a wrong password is not reported as permanent")
	}
	if msg := err.Error(); strings.Contains(msg, wrong) || strings.Contains(msg, testPassword) || !strings.Contains(msg, "repository password is wrong") {
		t.Errorf("error %q must say the password is wrong without showing it", msg)
	}
}

func TestImportUnknownManifest(t *testing.T) {
	r := mustOpen(t, filepath.Join(t.TempDir(), "repo"))
	_, err := r.ImportDir(t.Context(), "0123456789abcdef0123456789abcdef", t.TempDir(), nil)
	if !errors.Is(err, repository.ErrNotFound) {
		t.Fatalf("import of an unknown manifest: %v, want ErrNotFound", err)
	}
}

func TestSourceHost(t *testing.T) {
	for app, want := range map[string]string{
		"shop/postgres": "shop_postgres",
		"single":        "single",
	} {
		if got := repository.SourceHost(app); got != want {
			t.Errorf("SourceHost(%q) = %q, want %q", app, got, want)
		}
	}
	if a, b := repository.SourceHost("shop/pg"), repository.SourceHost("shop_pg"); a == b {
		t.Errorf("shop/pg and shop_pg share the source host %q", a)
	}
	if h := repository.SourceHost("a b:c@d"); strings.ContainsAny(h, " :@") {
		t.Errorf("SourceHost kept separators: %q", h)
	}
}

// comparable drops what kopia does not restore exactly: a directory below
// the root comes back with the newest mtime found inside it (kopia's
// repository view reports that instead of the directory's own), and a
// symlink's mtime is set with microsecond precision (rounded up).
func comparable(rel string, e entry) entry {
	switch {
	case e.Mode.IsDir() && rel != ".":
		e.MTime = 0
	case e.Mode&fs.ModeSymlink != 0:
		e.MTime = (e.MTime + 999) / 1000
	}
	return e
}

func lchtimes(path string, t time.Time) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return lutimes(path, t)
	}
	return os.Chtimes(path, t, t)
}

func lutimes(path string, t time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// Movers share one Repository: exports run in parallel, each in its own
// write session.
func TestConcurrentExports(t *testing.T) {
	ctx := t.Context()
	r := mustOpen(t, filepath.Join(t.TempDir(), "repo"))
	const n = 4
	dirs := make([]string, n)
	for i := range dirs {
		dirs[i] = t.TempDir()
		for j := range 30 {
			if err := os.WriteFile(filepath.Join(dirs[i], fmt.Sprintf("f%02d", j)), randomBytes(uint64(i*100+j), 50000), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			res, err := r.ExportDir(ctx, repository.ExportRequest{App: "shop/pg", Volume: fmt.Sprintf("v%d", i), RunID: "r1", Dir: dirs[i]})
			ids[i], errs[i] = res.ManifestID, err
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("export %d: %v", i, errs[i])
		}
		dst := t.TempDir()
		if _, err := r.ImportDir(ctx, ids[i], dst, nil); err != nil {
			t.Fatal(err)
		}
		want, got := walk(t, dirs[i]), walk(t, dst)
		for rel, w := range want {
			if comparable(rel, got[rel]) != comparable(rel, w) {
				t.Errorf("volume %d, %s: imported %+v, want %+v", i, rel, got[rel], w)
			}
		}
	}
}

func TestExportCancelled(t *testing.T) {
	r := mustOpen(t, filepath.Join(t.TempDir(), "repo"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := r.ExportStream(ctx, repository.StreamRequest{App: "shop/pg", Artifact: "dump", Reader: bytes.NewReader(randomBytes(1, 1<<20))})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("export with a cancelled context: %v, want context.Canceled", err)
	}
}

// cancelReader cancels its context once the export has begun reading.
type cancelReader struct {
	r      io.Reader
	cancel context.CancelFunc
}

func (c *cancelReader) Read(p []byte) (int, error) {
	c.cancel()
	time.Sleep(time.Millisecond)
	return c.r.Read(p)
}

func TestExportCancelledMidway(t *testing.T) {
	r := mustOpen(t, filepath.Join(t.TempDir(), "repo"))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	_, err := r.ExportStream(ctx, repository.StreamRequest{App: "shop/pg", Artifact: "dump", Reader: &cancelReader{r: bytes.NewReader(randomBytes(1, 64<<20)), cancel: cancel}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("export cancelled midway: %v, want context.Canceled", err)
	}
}

// The password is kept nowhere on disk: not in the repository, not in the
// cache or kopia's connection file.
func TestPasswordNotStored(t *testing.T) {
	repoDir, cacheDir := t.TempDir(), t.TempDir()
	r, err := repository.Open(t.Context(), repository.Config{Path: repoDir, Password: testPassword, CacheDir: cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.ExportStream(t.Context(), repository.StreamRequest{App: "a", Artifact: "x", Reader: strings.NewReader("hello")}); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{repoDir, cacheDir} {
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if bytes.Contains(b, []byte(testPassword)) {
				t.Errorf("%s holds the password", p)
			}
			return nil
		})
	}
}

package local

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sparseSize is the apparent size of the sparse file in the test tree.
const sparseSize = 1 << 30

// buildTree writes a volume with every kind of entry a snapshot must
// preserve: nested directories, a 10 MiB file, a 1 GiB sparse file with a
// few KiB of data, absolute, relative and dangling symlinks, a FIFO, odd
// permissions (0600, 0755, 0555, a setgid directory), a file owned by
// someone else (as root), and a distinct modification time on every entry.
func buildTree(t testing.TB, root string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.NewChaCha8([32]byte{7})
	random := func(n int) []byte {
		b := make([]byte, n)
		_, _ = rng.Read(b)
		return b
	}
	must(os.MkdirAll(filepath.Join(root, "a/b/c"), 0o755))
	must(os.WriteFile(filepath.Join(root, "a/b/c/deep.txt"), []byte("deep\n"), 0o644))
	must(os.WriteFile(filepath.Join(root, "big.bin"), random(10<<20), 0o644))
	must(os.WriteFile(filepath.Join(root, "secret"), []byte("s3cr3t"), 0o600))
	must(os.WriteFile(filepath.Join(root, "run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.WriteFile(filepath.Join(root, "empty"), nil, 0o644))
	must(os.Mkdir(filepath.Join(root, "empty-dir"), 0o750))

	sparse, err := os.Create(filepath.Join(root, "sparse.img"))
	must(err)
	for _, off := range []int64{0, 300 << 20, sparseSize - 4096} {
		_, err := sparse.WriteAt(random(4096), off)
		must(err)
	}
	must(sparse.Truncate(sparseSize))
	must(sparse.Close())

	must(os.Mkdir(filepath.Join(root, "shared"), 0o755))
	must(os.WriteFile(filepath.Join(root, "shared/log"), []byte("entry\n"), 0o664))
	must(unix.Chmod(filepath.Join(root, "shared"), 0o2775))

	must(os.Symlink(filepath.Join(root, "big.bin"), filepath.Join(root, "abs-link")))
	must(os.Symlink("a/b/c/deep.txt", filepath.Join(root, "rel-link")))
	must(os.Symlink("../nowhere", filepath.Join(root, "a/dangling")))
	must(unix.Mkfifo(filepath.Join(root, "pipe"), 0o640))

	must(os.Mkdir(filepath.Join(root, "readonly"), 0o755))
	must(os.WriteFile(filepath.Join(root, "readonly/frozen"), []byte("ice"), 0o444))
	must(os.Chmod(filepath.Join(root, "readonly"), 0o555))

	if os.Geteuid() == 0 {
		must(os.Lchown(filepath.Join(root, "secret"), 1234, 5678))
		must(os.Lchown(filepath.Join(root, "rel-link"), 4321, 8765))
	}

	// Distinct times, children before parents (adding a child changes its
	// directory's mtime), symlinks on the link itself.
	base := time.Date(2024, 3, 1, 12, 0, 0, 123456789, time.UTC)
	var paths []string
	must(filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	}))
	for i := len(paths) - 1; i >= 0; i-- {
		mt := base.Add(time.Duration(i) * time.Hour)
		ts := []unix.Timespec{unix.NsecToTimespec(mt.Add(-time.Minute).UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// entry is what the comparison checks of one path.
type entry struct {
	typ, mode    fs.FileMode
	size         int64
	mtime        time.Time
	uid, gid     uint32
	target, hash string
}

func (e entry) String() string {
	return fmt.Sprintf("%v mode=%v size=%d mtime=%s owner=%d:%d target=%q sha256=%.12s",
		e.typ, e.mode, e.size, e.mtime.Format(time.RFC3339Nano), e.uid, e.gid, e.target, e.hash)
}

// describeTree reads every entry below root, keyed by relative path.
func describeTree(t testing.TB, root string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		e := entry{typ: fi.Mode().Type(), mode: fi.Mode(), mtime: fi.ModTime(), uid: st.Uid, gid: st.Gid}
		switch e.typ {
		case 0:
			e.size = fi.Size()
			e.hash = hashFile(t, p)
		case fs.ModeSymlink:
			e.target, err = os.Readlink(p)
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = e
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func hashFile(t testing.TB, p string) string {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	// A large buffer: the sparse file reads 1 GiB of holes.
	buf := make([]byte, 1<<20)
	for {
		n, err := f.Read(buf)
		h.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// compareTrees fails the test for every path whose type, mode, size,
// mtime, owner, symlink target or content differs, and for every path
// that exists on one side only.
func compareTrees(t testing.TB, want, got string) {
	t.Helper()
	w, g := describeTree(t, want), describeTree(t, got)
	for p, we := range w {
		ge, ok := g[p]
		switch {
		case !ok:
			t.Errorf("%s: missing from the snapshot", p)
		case ge != we:
			t.Errorf("%s differs:\n  source   %s\n  snapshot %s", p, we, ge)
		}
	}
	for p := range g {
		if _, ok := w[p]; !ok {
			t.Errorf("%s: in the snapshot but not in the source", p)
		}
	}
	if len(w) < 10 {
		t.Fatalf("the source tree has only %d entries; the comparison proves little", len(w))
	}
}

// allocated returns the bytes actually allocated to a file.
func allocated(t testing.TB, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// canReflink reports whether dir's filesystem clones files.
func canReflink(t testing.TB, dir string) bool {
	t.Helper()
	a, err := os.CreateTemp(dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(a.Name())
	defer a.Close()
	b, err := os.CreateTemp(dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(b.Name())
	defer b.Close()
	_, _ = a.WriteString("probe")
	return unix.IoctlFileClone(int(b.Fd()), int(a.Fd())) == nil
}

// requireReflinkEnv turns "no reflink filesystem available" from a skip
// into a failure, for machines that are meant to have one.
const requireReflinkEnv = "TIDEMARK_REQUIRE_REFLINK"

// reflinkFS mounts a fresh XFS (reflink=1) or, failing that, btrfs image
// on a loop device and returns the mount point; it is unmounted and
// detached when the test ends. When the machine does not allow it (no
// mkfs, not root, no loop devices) the test is skipped with the command
// that failed and its output.
func reflinkFS(t *testing.T) string {
	t.Helper()
	skip := func(format string, args ...any) {
		t.Helper()
		msg := "no reflink filesystem: " + fmt.Sprintf(format, args...)
		if os.Getenv(requireReflinkEnv) != "" {
			t.Fatal(msg + " (failing, not skipping, because " + requireReflinkEnv + " is set)")
		}
		t.Skip(msg)
	}
	run := func(name string, args ...string) (string, error) {
		out, err := exec.Command(name, args...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if os.Geteuid() != 0 {
		skip("losetup and mount need root; running as uid %d", os.Geteuid())
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	// XFS wants at least 300 MiB; the image is sparse, so it costs little.
	if err := f.Truncate(320 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()

	var tried []string
	formatted := false
	for _, mkfs := range [][]string{{"mkfs.xfs", "-q", "-m", "reflink=1", img}, {"mkfs.btrfs", "-q", img}} {
		out, err := run(mkfs[0], mkfs[1:]...)
		if err == nil {
			formatted = true
			break
		}
		tried = append(tried, fmt.Sprintf("`%s` failed: %v: %s", strings.Join(mkfs, " "), err, out))
	}
	if !formatted {
		skip("%s (install xfsprogs or btrfs-progs)", strings.Join(tried, "; "))
	}
	out, err := run("losetup", "--find", "--show", img)
	if err != nil {
		skip("`losetup --find --show %s` failed: %v: %s", img, err, out)
	}
	dev := out
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := run("mount", dev, mnt); err != nil {
		_, _ = run("losetup", "-d", dev)
		skip("`mount %s %s` failed: %v: %s", dev, mnt, err, out)
	}
	t.Cleanup(func() {
		if out, err := run("umount", mnt); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
		if out, err := run("losetup", "-d", dev); err != nil && !strings.Contains(out, "No such device") {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	if !canReflink(t, mnt) {
		skip("the filesystem mounted from %s at %s does not clone files", dev, mnt)
	}
	return mnt
}

package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/tidemark-dev/tidemark/pkg/platform"
)

// treeCopier recreates a directory tree, cloning regular files with
// FICLONE while the filesystem allows it and copying them otherwise.
type treeCopier struct {
	ctx context.Context
	// reflink is true until a clone fails for want of reflink support.
	reflink bool
	// onFallback is called once, with the reason, when cloning gives way
	// to copying.
	onFallback     func(error)
	cloned, copied int
	bytes          int64
	buf            []byte
}

// method is "reflink" only when every regular file was cloned: a snapshot
// with any copied file (or no file at all to clone) took time in proportion
// to its data, or proved nothing about the filesystem.
func (c *treeCopier) method() string {
	if c.cloned > 0 && c.copied == 0 {
		return platform.MethodReflink
	}
	return platform.MethodCopy
}

// copyTree recreates src (a directory) at dst, which must not exist.
func (c *treeCopier) copyTree(src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	return c.copyEntry(src, dst, fi)
}

func (c *treeCopier) copyEntry(src, dst string, fi fs.FileInfo) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no stat information", src)
	}
	switch fi.Mode().Type() {
	case fs.ModeDir:
		return c.copyDir(src, dst, st)
	case 0:
		return c.copyFile(src, dst, st)
	case fs.ModeSymlink:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := os.Symlink(target, dst); err != nil {
			return err
		}
	case fs.ModeNamedPipe:
		if err := unix.Mkfifo(dst, 0o600); err != nil {
			return fmt.Errorf("mkfifo %s: %w", dst, err)
		}
	case fs.ModeDevice, fs.ModeDevice | fs.ModeCharDevice:
		if err := unix.Mknod(dst, st.Mode&unix.S_IFMT|0o600, int(st.Rdev)); err != nil {
			return fmt.Errorf("mknod %s: %w", dst, err)
		}
	case fs.ModeSocket:
		return nil // a socket file is meaningless without its listener
	default:
		return fmt.Errorf("%s: unsupported file type %s", src, fi.Mode().Type())
	}
	return setAttrs(dst, st, nil)
}

// copyDir creates dst private and writable, fills it, and only then gives
// it the source's owner, mode and times: a read-only directory could not
// be filled, and filling changes its modification time.
func (c *treeCopier) copyDir(src, dst string, st *syscall.Stat_t) error {
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since it was listed
		}
		if err != nil {
			return err
		}
		if err := c.copyEntry(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()), fi); err != nil {
			return err
		}
	}
	return setAttrs(dst, st, nil)
}

func (c *treeCopier) copyFile(src, dst string, st *syscall.Stat_t) error {
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := c.fill(in, out, st.Size); err != nil {
		out.Close()
		return err
	}
	if err := setAttrs(dst, st, out); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	// Times last: closing can still update them on some filesystems.
	if err := setTimes(dst, st); err != nil {
		return err
	}
	c.bytes += st.Size
	return nil
}

// fill gives out the content of in: a clone while reflinks work, a sparse
// copy from the first failure on.
func (c *treeCopier) fill(in, out *os.File, size int64) error {
	if c.reflink {
		err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd()))
		if err == nil {
			c.cloned++
			return nil
		}
		reason, noReflink := reflinkUnsupported(err)
		if !noReflink {
			return fmt.Errorf("cloning %s: %w", in.Name(), err)
		}
		c.reflink = false
		if c.onFallback != nil {
			c.onFallback(fmt.Errorf("cloning %s: %w (%s)", in.Name(), err, reason))
		}
	}
	c.copied++
	return c.copySparse(in, out, size)
}

// reflinkUnsupported reports whether a FICLONE error means this snapshot
// cannot use reflinks at all, and why in words.
func reflinkUnsupported(err error) (string, bool) {
	switch {
	case errors.Is(err, unix.EXDEV):
		return "the snapshot root is on another filesystem than the volume", true
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOTTY), errors.Is(err, unix.ENOSYS):
		return "the filesystem has no reflinks", true
	case errors.Is(err, unix.EINVAL):
		return "the filesystem refused to clone the file", true
	}
	return "", false
}

// copyBlock is the granularity at which all-zero data is left as a hole.
const copyBlock = 4096

// copySparse copies the data extents of in (found with SEEK_DATA and
// SEEK_HOLE, so holes are never read) and, within them, skips all-zero
// blocks, so neither holes nor zeros are allocated in out. Truncating to
// size at the end restores a trailing hole.
func (c *treeCopier) copySparse(in, out *os.File, size int64) error {
	if c.buf == nil {
		c.buf = make([]byte, 1<<20)
	}
	fd := int(in.Fd())
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // nothing but hole from off to the end
		}
		end := size
		if err != nil {
			// No SEEK_DATA on this filesystem: treat the rest as data.
			start = off
		} else if hole, err := unix.Seek(fd, start, unix.SEEK_HOLE); err == nil {
			end = min(hole, size)
		}
		if err := c.copyRange(in, out, start, end); err != nil {
			return err
		}
		off = end
	}
	if err := out.Truncate(size); err != nil {
		return err
	}
	return nil
}

// copyRange copies [start, end) of in to the same offsets of out, writing
// only the blocks that are not all zero.
func (c *treeCopier) copyRange(in, out *os.File, start, end int64) error {
	for pos := start; pos < end; {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		n, err := in.ReadAt(c.buf[:min(int64(len(c.buf)), end-pos)], pos)
		if n == 0 && err != nil {
			if err == io.EOF {
				return nil // the file shrank while it was copied
			}
			return err
		}
		if err := writeNonZero(out, c.buf[:n], pos); err != nil {
			return err
		}
		pos += int64(n)
	}
	return nil
}

// writeNonZero writes the runs of b that are not all-zero blocks at off.
func writeNonZero(out *os.File, b []byte, off int64) error {
	runStart := -1
	flush := func(i int) error {
		if runStart < 0 {
			return nil
		}
		_, err := out.WriteAt(b[runStart:i], off+int64(runStart))
		runStart = -1
		return err
	}
	for i := 0; i < len(b); i += copyBlock {
		blk := b[i:min(i+copyBlock, len(b))]
		if allZero(blk) {
			if err := flush(i); err != nil {
				return err
			}
		} else if runStart < 0 {
			runStart = i
		}
	}
	return flush(len(b))
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// setAttrs gives path the owner and mode of st, through f when it is open.
// Owner first: chown clears setuid and setgid, which chmod then restores.
// Without the right to give files away (not root), files keep the
// snapshotter's owner, as with cp -a.
func setAttrs(path string, st *syscall.Stat_t, f *os.File) error {
	var err error
	if f != nil {
		err = f.Chown(int(st.Uid), int(st.Gid))
	} else {
		err = os.Lchown(path, int(st.Uid), int(st.Gid))
	}
	if err != nil && !errors.Is(err, fs.ErrPermission) {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if f != nil {
			err = unix.Fchmod(int(f.Fd()), st.Mode&0o7777)
		} else {
			err = unix.Fchmodat(unix.AT_FDCWD, path, st.Mode&0o7777, 0)
		}
		if err != nil {
			return fmt.Errorf("chmod %s: %w", path, err)
		}
	}
	if f != nil {
		return nil // the caller sets times once the file is closed
	}
	return setTimes(path, st)
}

// setTimes gives path the access and modification times of st, on the link
// itself for a symlink.
func setTimes(path string, st *syscall.Stat_t) error {
	ts := []unix.Timespec{
		{Sec: st.Atim.Sec, Nsec: st.Atim.Nsec},
		{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec},
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("setting times of %s: %w", path, err)
	}
	return nil
}

// removeTree removes path and everything below it, first making
// directories writable where a read-only one (copied from the volume)
// stops the removal.
func removeTree(path string) error {
	err := os.RemoveAll(path)
	if err == nil || !errors.Is(err, fs.ErrPermission) {
		return err
	}
	_ = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(path)
}

package csidriver

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// CloneTree copies the directory src to dst (which must not exist),
// keeping modes, owners, symlinks and modification times. Regular files
// are reflinked when the filesystem can (btrfs, XFS with reflink, …):
// instant and space-free; elsewhere (ext4, overlayfs) they are copied.
func CloneTree(src, dst string) error {
	type dirTime struct {
		path string
		fi   fs.FileInfo
	}
	var dirs []dirTime
	err := filepath.Walk(src, func(p string, fi fs.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		out := filepath.Join(dst, rel)
		switch {
		case fi.IsDir():
			if err := os.Mkdir(out, fi.Mode().Perm()); err != nil {
				return err
			}
			dirs = append(dirs, dirTime{out, fi})
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, out); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			if err := cloneFile(p, out, fi); err != nil {
				return err
			}
		default:
			// Sockets, FIFOs and devices in a volume belong to a running
			// process, not to its data; a snapshot has no use for them.
			return nil
		}
		return keepAttrs(out, fi)
	})
	if err != nil {
		return err
	}
	// Directory times last: creating the entries changed them.
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Chtimes(dirs[i].path, dirs[i].fi.ModTime(), dirs[i].fi.ModTime()); err != nil {
			return err
		}
	}
	return nil
}

func cloneFile(src, dst string, fi fs.FileInfo) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		if !reflinkUnsupported(err) {
			out.Close()
			return fmt.Errorf("reflink %s: %w", src, err)
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
	}
	return out.Close()
}

// reflinkUnsupported reports whether FICLONE failed because the
// filesystem (or the pair of files) cannot share extents.
func reflinkUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EXDEV) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS)
}

func keepAttrs(p string, fi fs.FileInfo) error {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if err := os.Lchown(p, int(st.Uid), int(st.Gid)); err != nil && !errors.Is(err, fs.ErrPermission) {
			return err
		}
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return nil
	}
	// Mkdir and OpenFile apply the umask, and setuid/setgid/sticky bits
	// need an explicit chmod.
	if err := os.Chmod(p, fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
		return err
	}
	if fi.IsDir() {
		return nil
	}
	return os.Chtimes(p, fi.ModTime(), fi.ModTime())
}

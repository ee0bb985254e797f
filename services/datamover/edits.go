package datamover

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/tidemark-dev/tidemark/events"
)

// ErrInvalidEdits: edits that name a path outside the volume, or that
// cannot be applied as given. Retrying cannot help.
var ErrInvalidEdits = errors.New("invalid volume edits")

// applyEdits makes e's changes in the restored volume at root: removals
// first, then the files, then the tar extractions. Every path stays
// inside the volume; whatever is written is owned like the edits'
// directory, as the application that will start on it expects.
func applyEdits(ctx context.Context, repo Repository, root string, e *events.VolumeEdits) error {
	if e == nil {
		return nil
	}
	dir, err := inside(root, e.Dir, "dir")
	if err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("%w: dir %q: %v (it must exist in the restored volume)", ErrInvalidEdits, e.Dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: dir %q is not a directory", ErrInvalidEdits, e.Dir)
	}
	uid, gid := owner(fi)
	for _, pattern := range e.Remove {
		if _, err := inside(dir, pattern, "remove"); err != nil {
			return err
		}
		if _, err := path.Match(pattern, ""); err != nil {
			return fmt.Errorf("%w: remove %q: %v", ErrInvalidEdits, pattern, err)
		}
		matches, _ := filepath.Glob(filepath.Join(dir, filepath.FromSlash(pattern)))
		for _, m := range matches {
			if fi, err := os.Lstat(m); err == nil && fi.IsDir() {
				return fmt.Errorf("%w: remove %q matches the directory %s; only files are removed", ErrInvalidEdits, pattern, m)
			}
			if err := os.Remove(m); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("removing %s: %w", m, err)
			}
		}
	}
	for name, content := range e.Files {
		p, err := inside(dir, name, "files")
		if err != nil {
			return err
		}
		if err := writeOwned(p, []byte(content), uid, gid); err != nil {
			return err
		}
	}
	for _, x := range e.Extract {
		into, err := inside(dir, x.Into, "extract.into")
		if err != nil {
			return err
		}
		if err := mkdirOwned(into, uid, gid); err != nil {
			return err
		}
		if err := extractArtifact(ctx, repo, x.ManifestID, into, uid, gid); err != nil {
			return fmt.Errorf("extracting %s into %s: %w", x.ManifestID, x.Into, err)
		}
	}
	return nil
}

// inside joins a relative, slash-separated name under root, refusing
// anything that would leave it.
func inside(root, name, field string) (string, error) {
	if path.IsAbs(name) || strings.Contains(name, "\\") {
		return "", fmt.Errorf("%w: %s %q must be a path relative to the volume", ErrInvalidEdits, field, name)
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return "", fmt.Errorf("%w: %s %q leaves the volume (no .. elements)", ErrInvalidEdits, field, name)
		}
	}
	return filepath.Join(root, filepath.FromSlash(path.Clean("/"+name))), nil
}

func owner(fi fs.FileInfo) (uid, gid int) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid), int(st.Gid)
	}
	return -1, -1
}

func writeOwned(p string, data []byte, uid, gid int) error {
	if err := os.WriteFile(p, data, 0o600); err != nil {
		return err
	}
	if err := os.Chmod(p, 0o600); err != nil {
		return err
	}
	return chownIfAllowed(p, uid, gid)
}

func mkdirOwned(p string, uid, gid int) error {
	if err := os.MkdirAll(p, 0o700); err != nil {
		return err
	}
	return chownIfAllowed(p, uid, gid)
}

// chownIfAllowed gives p the owner; a process that may not (not root, and
// not that owner) leaves it as it is, which is the same owner anyway when
// it runs as the volume's owner.
func chownIfAllowed(p string, uid, gid int) error {
	if uid < 0 {
		return nil
	}
	if err := os.Lchown(p, uid, gid); err != nil && !errors.Is(err, fs.ErrPermission) {
		return err
	}
	return nil
}

// extractArtifact streams a tar artifact from the repository into dir:
// regular files and directories only, each inside dir.
func extractArtifact(ctx context.Context, repo Repository, id events.ManifestID, dir string, uid, gid int) error {
	pr, pw := io.Pipe()
	read := make(chan error, 1)
	go func() {
		_, err := repo.ImportStream(ctx, string(id), pw, nil)
		pw.CloseWithError(err)
		read <- err
	}()
	err := untar(pr, dir, uid, gid)
	if err == nil {
		// The end-of-archive blocks are followed by padding to the record
		// size: read it, so the stream ends as a whole.
		_, err = io.Copy(io.Discard, pr)
	}
	pr.CloseWithError(errors.New("extraction stopped"))
	if rerr := <-read; err == nil && rerr != nil && !errors.Is(rerr, io.ErrClosedPipe) {
		err = rerr
	}
	return err
}

func untar(r io.Reader, dir string, uid, gid int) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the tar stream: %w", err)
		}
		p, err := inside(dir, strings.TrimPrefix(h.Name, "./"), "tar entry")
		if err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := mkdirOwned(p, uid, gid); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode)&0o777)
			if err != nil {
				return err
			}
			_, cerr := io.Copy(f, tr)
			if err := errors.Join(cerr, f.Close()); err != nil {
				return fmt.Errorf("writing %s: %w", p, err)
			}
			if err := chownIfAllowed(p, uid, gid); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: tar entry %q is not a regular file or directory", ErrInvalidEdits, h.Name)
		}
	}
}

package repository

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/kopia/kopia/fs"
	"github.com/kopia/kopia/fs/localfs"
	"github.com/kopia/kopia/snapshot"
	"github.com/kopia/kopia/snapshot/restore"
)

// recordingOutput is kopia's filesystem output that also hashes every
// file's content as it comes out of the repository. kopia has already
// authenticated that content against the hashes recorded at backup time
// (every content is addressed by its hash and sealed with the repository
// key), so the SHA-256 of the stream is the backup's content; verify then
// compares it with what landed on disk.
type recordingOutput struct {
	*restore.FilesystemOutput

	mu    sync.Mutex
	files map[string]restoredFile
}

type restoredFile struct {
	size   int64 // recorded at backup time
	read   int64 // delivered by the repository
	sha256 [sha256.Size]byte
}

func (o *recordingOutput) WriteFile(ctx context.Context, relativePath string, f fs.File, progress restore.FileWriteProgress) error {
	h := &hashingFile{File: f}
	if err := o.FilesystemOutput.WriteFile(ctx, relativePath, h, progress); err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.files == nil {
		o.files = map[string]restoredFile{}
	}
	o.files[relativePath] = h.result(f.Size())
	return nil
}

// FinishDirectory is kopia's, except at the root of a target whose parent
// is read-only (a volume mounted in a mover pod with a read-only root
// filesystem): there kopia, after setting the root's attributes, removes
// the shallow-restore placeholder beside it (TARGET.kopia-entry), and
// unlinking in a read-only directory fails even when nothing is there.
// When nothing is there, nothing needed removing.
func (o *recordingOutput) FinishDirectory(ctx context.Context, relativePath string, e fs.Directory) error {
	err := o.FilesystemOutput.FinishDirectory(ctx, relativePath, e)
	if err != nil && relativePath == "" && errors.Is(err, syscall.EROFS) {
		if _, statErr := os.Lstat(o.TargetPath + localfs.ShallowEntrySuffix); errors.Is(statErr, os.ErrNotExist) {
			return nil
		}
	}
	return err
}

// verify checks the restored tree under dir: every file the snapshot
// holds is there, with the size the backup recorded and the content the
// repository delivered; the counts match the snapshot's. It reads every
// restored file once more: the cost of knowing, rather than hoping, that
// the disk holds the backup.
func (o *recordingOutput) verify(ctx context.Context, dir string, man *snapshot.Manifest) error {
	o.mu.Lock()
	files := o.files
	o.mu.Unlock()
	var problems []string
	// The root's summary is computed from the stored tree itself; the
	// manifest's Stats count only what one upload session read, which is
	// less for a snapshot finished from another mover's checkpoint.
	if sum := man.RootEntry.DirSummary; sum != nil && int64(len(files)) != sum.TotalFileCount {
		problems = append(problems, fmt.Sprintf("%d files restored, the backup has %d", len(files), sum.TotalFileCount))
	}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	buf := make([]byte, 1<<20)
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return err
		}
		want := files[p]
		if want.read != want.size {
			problems = append(problems, fmt.Sprintf("%s: the repository delivered %d bytes, the backup recorded %d", p, want.read, want.size))
			continue
		}
		got, size, err := hashFile(filepath.Join(dir, filepath.FromSlash(p)), buf)
		switch {
		case errors.Is(err, os.ErrNotExist):
			problems = append(problems, p+": missing")
		case err != nil:
			problems = append(problems, fmt.Sprintf("%s: %v", p, err))
		case size != want.size:
			problems = append(problems, fmt.Sprintf("%s: %d bytes on disk, the backup has %d", p, size, want.size))
		case got != want.sha256:
			problems = append(problems, p+": content differs from the backup")
		}
		if len(problems) >= 10 {
			problems = append(problems, "…")
			break
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrVerification, strings.Join(problems, "; "))
}

func hashFile(path string, buf []byte) ([sha256.Size]byte, int64, error) {
	var sum [sha256.Size]byte
	f, err := os.Open(path)
	if err != nil {
		return sum, 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, f, buf)
	if err != nil {
		return sum, n, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, n, nil
}

// hashingFile hands out readers that hash what is read through them.
// kopia's file writer reads each file front to back exactly once.
type hashingFile struct {
	fs.File
	mu     sync.Mutex
	reader *hashingReader
}

func (f *hashingFile) Open(ctx context.Context) (fs.Reader, error) {
	r, err := f.File.Open(ctx)
	if err != nil {
		return nil, err
	}
	hr := &hashingReader{Reader: r, h: sha256.New()}
	f.mu.Lock()
	f.reader = hr
	f.mu.Unlock()
	return hr, nil
}

func (f *hashingFile) result(size int64) restoredFile {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := restoredFile{size: size}
	if f.reader == nil {
		// Nothing read: an empty file is written without opening it.
		copy(out.sha256[:], sha256.New().Sum(nil))
		return out
	}
	out.read = f.reader.n
	copy(out.sha256[:], f.reader.h.Sum(nil))
	return out
}

type hashingReader struct {
	fs.Reader
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
	n int64
}

func (r *hashingReader) Read(p []byte) (int, error) {
	n, err := r.Reader.Read(p)
	if n > 0 {
		r.h.Write(p[:n])
		r.n += int64(n)
	}
	return n, err
}

// Seek is refused past the start: a hash of a stream read out of order
// would compare wrong, so a kopia that started seeking must be noticed
// here, not in a user's failed restore.
func (r *hashingReader) Seek(offset int64, whence int) (int64, error) {
	if offset == 0 && (whence == io.SeekCurrent || (whence == io.SeekStart && r.n == 0)) {
		return r.Reader.Seek(offset, whence)
	}
	return 0, fmt.Errorf("restore verification: unexpected seek (%d, %d) while restoring", offset, whence)
}

package repository

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"syscall"
	"time"

	"github.com/kopia/kopia/fs"
	"github.com/kopia/kopia/repo/manifest"
	"github.com/kopia/kopia/snapshot"
	"github.com/kopia/kopia/snapshot/restore"
	"github.com/kopia/kopia/snapshot/snapshotfs"
)

// ImportResult describes a restored snapshot.
type ImportResult struct {
	ManifestID string
	Files      int64
	Bytes      int64
	StartedAt  time.Time
	FinishedAt time.Time
}

// ImportDir restores the snapshot manifestID into targetDir, created if
// missing: files, directories and symlinks with their modes and times (and
// owners, where this process may set them). Files already in targetDir are
// overwritten; other files there are left alone.
//
// The restored tree is then verified against the snapshot (see verify): a
// file that is missing, has another size or other content than the one
// recorded at backup time fails the import with ErrVerification.
func (r *Repository) ImportDir(ctx context.Context, manifestID, targetDir string, progress func(Progress)) (ImportResult, error) {
	if targetDir == "" {
		return ImportResult{}, fmt.Errorf("%w: import needs a target directory", ErrInvalidRequest)
	}
	res := ImportResult{ManifestID: manifestID, StartedAt: time.Now()}
	man, root, err := r.load(ctx, manifestID)
	if err != nil {
		return ImportResult{}, err
	}
	// Created only now, so a restore of a missing snapshot leaves no trace.
	// 0755 like mkdir -p: the restored tree then gets the modes and owners
	// the backup recorded, and the application's own account (not root)
	// must be able to reach it through the parents made here.
	if err := os.MkdirAll(targetDir, 0o755); err != nil {
		return ImportResult{}, fmt.Errorf("restore target %s: %w", targetDir, err)
	}
	var c counters
	c.bytesTotal.Store(man.Stats.TotalFileSize)
	c.filesTotal.Store(int64(man.Stats.TotalFileCount))
	stop := report(&c, r.cfg.ProgressInterval, progress)
	defer stop()

	fsOut := &restore.FilesystemOutput{
		TargetPath:             targetDir,
		OverwriteDirectories:   true,
		OverwriteFiles:         true,
		OverwriteSymlinks:      true,
		IgnorePermissionErrors: true,
		WriteSparseFiles:       true,
	}
	if err := fsOut.Init(ctx); err != nil {
		return ImportResult{}, fmt.Errorf("restore target %s: %w", targetDir, err)
	}
	out := &recordingOutput{FilesystemOutput: fsOut}
	cancel := make(chan struct{})
	stopCancel := context.AfterFunc(ctx, func() { close(cancel) })
	defer stopCancel()

	st, err := restore.Entry(ctx, r.rep, out, root, restore.Options{
		Parallel: 8,
		// The default (0) writes placeholder files for anything below the
		// root instead of the data.
		RestoreDirEntryAtDepth: math.MaxInt32,
		ProgressCallback: func(_ context.Context, s restore.Stats) {
			c.bytesDone.Store(s.RestoredTotalFileSize)
			c.filesDone.Store(int64(s.RestoredFileCount))
		},
		Cancel: cancel,
	})
	if ctx.Err() != nil {
		return ImportResult{}, ctx.Err()
	}
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			return ImportResult{}, fmt.Errorf("restoring %s: %w: no space left in the restore target %s: free space there or restore elsewhere (%v)", manifestID, ErrNoSpace, targetDir, err)
		}
		return ImportResult{}, fmt.Errorf("restoring %s to %s: %w", manifestID, targetDir, r.explain(err))
	}
	c.bytesDone.Store(st.RestoredTotalFileSize)
	c.filesDone.Store(int64(st.RestoredFileCount))
	if r.beforeVerify != nil {
		r.beforeVerify(targetDir)
	}
	if err := out.verify(ctx, targetDir, man); err != nil {
		return ImportResult{}, fmt.Errorf("restoring %s to %s: %w", manifestID, targetDir, err)
	}
	res.Files = int64(st.RestoredFileCount)
	res.Bytes = st.RestoredTotalFileSize
	res.FinishedAt = time.Now()
	return res, nil
}

// CheckSnapshot opens the snapshot manifestID and its root, writing
// nothing: what a restore checks before it changes anything. It returns
// the snapshot's file count and size as stored.
func (r *Repository) CheckSnapshot(ctx context.Context, manifestID string) (ImportResult, error) {
	now := time.Now()
	man, _, err := r.load(ctx, manifestID)
	if err != nil {
		return ImportResult{}, err
	}
	res := ImportResult{ManifestID: manifestID, StartedAt: now, FinishedAt: time.Now()}
	if sum := man.RootEntry.DirSummary; sum != nil {
		res.Files, res.Bytes = sum.TotalFileCount, sum.TotalFileSize
	} else {
		// A stream snapshot's root is its one file.
		res.Files, res.Bytes = 1, man.RootEntry.FileSize
	}
	return res, nil
}

// ImportStream writes the single file of a stream snapshot (one written
// by ExportStream) to w.
func (r *Repository) ImportStream(ctx context.Context, manifestID string, w io.Writer, progress func(Progress)) (ImportResult, error) {
	res := ImportResult{ManifestID: manifestID, StartedAt: time.Now()}
	_, root, err := r.load(ctx, manifestID)
	if err != nil {
		return ImportResult{}, err
	}
	dir, ok := root.(fs.Directory)
	if !ok {
		return ImportResult{}, fmt.Errorf("%w: %s is not a stream snapshot", ErrInvalidRequest, manifestID)
	}
	entries, err := fs.GetAllEntries(ctx, dir)
	if err != nil {
		return ImportResult{}, fmt.Errorf("reading %s: %w", manifestID, err)
	}
	if len(entries) != 1 {
		return ImportResult{}, fmt.Errorf("%w: %s holds %d entries, not one stream", ErrInvalidRequest, manifestID, len(entries))
	}
	f, ok := entries[0].(fs.File)
	if !ok {
		return ImportResult{}, fmt.Errorf("%w: %s is not a stream snapshot", ErrInvalidRequest, manifestID)
	}
	var c counters
	c.bytesTotal.Store(f.Size())
	c.filesTotal.Store(1)
	stop := report(&c, r.cfg.ProgressInterval, progress)
	defer stop()

	rd, err := f.Open(ctx)
	if err != nil {
		return ImportResult{}, fmt.Errorf("opening %s: %w", manifestID, err)
	}
	defer rd.Close()
	n, err := io.Copy(&countingWriter{w: w, c: &c}, ctxReader{ctx: ctx, r: rd})
	if ctx.Err() != nil {
		return ImportResult{}, ctx.Err()
	}
	if err != nil {
		return ImportResult{}, fmt.Errorf("reading %s: %w", manifestID, err)
	}
	c.filesDone.Store(1)
	res.Files, res.Bytes, res.FinishedAt = 1, n, time.Now()
	return res, nil
}

func (r *Repository) load(ctx context.Context, manifestID string) (*snapshot.Manifest, fs.Entry, error) {
	if manifestID == "" {
		return nil, nil, fmt.Errorf("%w: a manifest ID is required", ErrInvalidRequest)
	}
	man, err := snapshot.LoadSnapshot(ctx, r.rep, manifest.ID(manifestID))
	if errors.Is(err, snapshot.ErrSnapshotNotFound) {
		// Another client (a mover in another process) may have written it
		// since this one last looked.
		if err := r.rep.Refresh(ctx); err != nil {
			return nil, nil, fmt.Errorf("refreshing the repository: %w", r.explain(err))
		}
		man, err = snapshot.LoadSnapshot(ctx, r.rep, manifest.ID(manifestID))
	}
	if errors.Is(err, snapshot.ErrSnapshotNotFound) {
		return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, manifestID)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("loading snapshot %s: %w", manifestID, r.explain(err))
	}
	root, err := snapshotfs.SnapshotRoot(r.rep, man)
	if err != nil {
		return nil, nil, fmt.Errorf("loading snapshot %s: %w", manifestID, err)
	}
	return man, root, nil
}

type countingWriter struct {
	w io.Writer
	c *counters
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.c.bytesDone.Add(int64(n))
	return n, err
}

// ctxReader stops a copy once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

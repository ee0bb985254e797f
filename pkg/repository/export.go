package repository

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/kopia/kopia/fs"
	"github.com/kopia/kopia/fs/localfs"
	"github.com/kopia/kopia/fs/virtualfs"
	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/snapshot"
	"github.com/kopia/kopia/snapshot/upload"
)

// Tag names on every snapshot Tidemark writes (kopia shows them as
// tag:tidemark-app and so on).
const (
	TagApp      = "tidemark-app"
	TagVolume   = "tidemark-volume"
	TagArtifact = "tidemark-artifact"
	TagRun      = "tidemark-run"
)

// ExportRequest asks for a directory (a volume's snapshot) to be stored.
type ExportRequest struct {
	App    string // application, e.g. "shop/postgres"
	Volume string
	RunID  string
	Dir    string
	// Progress, when set, is called at most once per ProgressInterval and
	// once more at the end.
	Progress func(Progress)
}

// StreamRequest asks for a stream (a logical dump) to be stored as a
// single file.
type StreamRequest struct {
	App      string
	Artifact string // names the stream, e.g. the dump step
	RunID    string
	Reader   io.Reader
	Progress func(Progress)
}

// ExportResult describes a stored snapshot.
type ExportResult struct {
	ManifestID string
	Files      int64
	Dirs       int64
	Bytes      int64
	// BytesUploaded is what was new after deduplication: bytes written to
	// storage for file contents and directory listings (not counting the
	// snapshot's own manifest).
	BytesUploaded int64
	// HashedFiles were read and hashed; the others were unchanged since
	// the previous snapshot of the same source and were not read again.
	HashedFiles int64
	StartedAt   time.Time
	FinishedAt  time.Time
}

// ExportDir stores the directory req.Dir as a snapshot of the volume
// req.Volume of req.App. The previous snapshot of that volume, if any, is
// the parent: unchanged files are not read again, and only new content is
// uploaded.
func (r *Repository) ExportDir(ctx context.Context, req ExportRequest) (ExportResult, error) {
	if req.App == "" || req.Volume == "" || req.Dir == "" {
		return ExportResult{}, fmt.Errorf("%w: export needs App, Volume and Dir", ErrInvalidRequest)
	}
	dir, err := localfs.Directory(req.Dir)
	if err != nil {
		return ExportResult{}, fmt.Errorf("%w: %s: %v", ErrInvalidRequest, req.Dir, err)
	}
	src := snapshot.SourceInfo{Host: SourceHost(req.App), UserName: Username, Path: "/volumes/" + req.Volume}
	tags := map[string]string{"tag:" + TagApp: req.App, "tag:" + TagVolume: req.Volume, "tag:" + TagRun: req.RunID}
	return r.export(ctx, dir, src, tags, req.Progress)
}

// ExportStream stores everything read from req.Reader as one file named
// req.Artifact.
func (r *Repository) ExportStream(ctx context.Context, req StreamRequest) (ExportResult, error) {
	if req.App == "" || req.Artifact == "" || req.Reader == nil {
		return ExportResult{}, fmt.Errorf("%w: stream export needs App, Artifact and Reader", ErrInvalidRequest)
	}
	name := strings.ReplaceAll(req.Artifact, "/", "_")
	root := virtualfs.NewStaticDirectory(name, []fs.Entry{
		// A fixed time, so an identical dump is an identical snapshot
		// and deduplicates completely; the manifest has the run's time.
		virtualfs.StreamingFileWithModTimeFromReader(name, time.Unix(0, 0).UTC(), io.NopCloser(req.Reader)),
	})
	src := snapshot.SourceInfo{Host: SourceHost(req.App), UserName: Username, Path: "/streams/" + req.Artifact}
	tags := map[string]string{"tag:" + TagApp: req.App, "tag:" + TagArtifact: req.Artifact, "tag:" + TagRun: req.RunID}
	return r.export(ctx, root, src, tags, req.Progress)
}

func (r *Repository) export(ctx context.Context, root fs.Directory, src snapshot.SourceInfo, tags map[string]string, progress func(Progress)) (ExportResult, error) {
	var (
		res      ExportResult
		uploaded atomic.Int64
		c        counters
	)
	res.StartedAt = time.Now()
	stop := report(&c, r.cfg.ProgressInterval, progress)
	defer stop()

	opts := repo.WriteSessionOptions{Purpose: "tidemark export", OnUpload: func(n int64) { uploaded.Add(n) }}
	err := repo.WriteSession(ctx, r.rep, opts, func(ctx context.Context, w repo.RepositoryWriter) error {
		previous, err := snapshot.FindPreviousManifests(ctx, w, src, nil)
		if err != nil {
			return fmt.Errorf("finding the previous snapshot of %s: %w", src, err)
		}
		// The checkpoints of exports that died are superseded by this
		// one. They are deleted now, while the manifests kopia loaded to
		// find them are current (later, after this export's writes, it
		// would load every manifest of the repository again); the
		// deletions take effect only if this export succeeds.
		for _, p := range previous {
			if p.IncompleteReason != "" {
				if err := w.DeleteManifest(ctx, p.ID); err != nil {
					return fmt.Errorf("deleting checkpoint %s of %s: %w", p.ID, src, err)
				}
			}
		}
		uploadStarted := time.Now()
		u := upload.NewUploader(w)
		// The totals of a progress bar: the previous complete snapshot's,
		// when there is one (a volume changes little between two runs,
		// and the last report has the exact figures), which spares kopia's
		// estimate, a second walk of the whole tree; else that estimate.
		estimate := progress != nil
		if estimate {
			for _, p := range previous {
				if s := p.RootEntry.DirSummary; p.IncompleteReason == "" && s != nil {
					c.filesTotal.Store(s.TotalFileCount)
					c.bytesTotal.Store(s.TotalFileSize)
					estimate = false
				}
			}
		}
		u.Progress = &uploadProgress{c: &c, enabled: estimate}
		// A checkpoint is an incomplete snapshot of what is uploaded so
		// far: an export that dies is resumed from it by the next one.
		u.CheckpointInterval = r.cfg.CheckpointInterval
		u.CheckpointLabels = tags
		// A backup missing a file is not a backup: stop at the first error.
		u.FailFast = true
		cancel := context.AfterFunc(ctx, u.Cancel)
		defer cancel()

		man, err := u.Upload(ctx, root, r.cfg.Tuning.exportPolicy(), src, previous...)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return fmt.Errorf("uploading %s: %w", src, err)
		}
		if man.IncompleteReason != "" {
			return fmt.Errorf("uploading %s: incomplete (%s)", src, man.IncompleteReason)
		}
		if s := man.RootEntry.DirSummary; s != nil && s.FatalErrorCount > 0 {
			return fmt.Errorf("uploading %s: %d entries failed", src, s.FatalErrorCount)
		}
		// Write the contents' packs now, so what they cost is known apart
		// from the manifest saved below; their index goes into the one
		// index blob the session writes at its end (every index blob is
		// listed again by each later session until kopia compacts them).
		if dw, ok := w.(repo.DirectRepositoryWriter); ok {
			dw.ContentManager().DisableIndexFlush(ctx)
			err = w.Flush(ctx)
			dw.ContentManager().EnableIndexFlush(ctx)
		} else {
			err = w.Flush(ctx)
		}
		if err != nil {
			return fmt.Errorf("flushing %s: %w", src, err)
		}
		res.BytesUploaded = uploaded.Load()

		man.Tags = tags
		// Tidemark's catalog decides when a snapshot goes. The pin keeps
		// kopia's own retention (which a checkpoint applies, as does
		// `kopia snapshot expire`) from deleting it.
		man.Pins = []string{Pin}
		id, err := snapshot.SaveSnapshot(ctx, w, man)
		if err != nil {
			return fmt.Errorf("saving the snapshot of %s: %w", src, err)
		}
		res.ManifestID = string(id)
		if time.Since(uploadStarted) >= r.cfg.CheckpointInterval {
			// This export may have checkpointed itself.
			if err := dropCheckpoints(ctx, w, src, man.StartTime); err != nil {
				return err
			}
		}
		if s := man.RootEntry.DirSummary; s != nil {
			res.Files, res.Dirs, res.Bytes = s.TotalFileCount, s.TotalDirCount, s.TotalFileSize
		}
		res.HashedFiles = int64(man.Stats.NonCachedFiles)
		// The final report counts what the snapshot holds; the running
		// counts also include symlinks, and the totals were estimates.
		c.filesDone.Store(res.Files)
		c.filesTotal.Store(res.Files)
		c.bytesDone.Store(res.Bytes)
		c.bytesTotal.Store(res.Bytes)
		return nil
	})
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return ExportResult{}, ctx.Err()
		}
		return ExportResult{}, r.explain(err)
	}
	res.FinishedAt = time.Now()
	return res, nil
}

// Pin is the kopia pin on every snapshot Tidemark writes.
const Pin = "tidemark"

// dropCheckpoints deletes the incomplete snapshots (checkpoints of exports
// that died) of src that began before the complete one that began at
// started: it supersedes them.
func dropCheckpoints(ctx context.Context, w repo.RepositoryWriter, src snapshot.SourceInfo, started fs.UTCTimestamp) error {
	mans, err := snapshot.ListSnapshots(ctx, w, src)
	if err != nil {
		return fmt.Errorf("listing the snapshots of %s: %w", src, err)
	}
	for _, m := range mans {
		if m.IncompleteReason != "" && !m.StartTime.After(started) {
			if err := w.DeleteManifest(ctx, m.ID); err != nil {
				return fmt.Errorf("deleting checkpoint %s of %s: %w", m.ID, src, err)
			}
		}
	}
	return nil
}

// SourceHost is the kopia host of an application's snapshots: its name
// with "/" as "_" and anything else outside [A-Za-z0-9.-] as "-". When a
// character had to be replaced, a short hash of the exact name is added,
// so two applications never share a source.
func SourceHost(app string) string {
	var b strings.Builder
	lossy := false
	for _, r := range app {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-':
			b.WriteRune(r)
		case r == '/':
			b.WriteByte('_')
		default:
			b.WriteByte('-')
			lossy = true
		}
	}
	if lossy {
		sum := sha256.Sum256([]byte(app))
		b.WriteString("-" + hex.EncodeToString(sum[:4]))
	}
	return b.String()
}

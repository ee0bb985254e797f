// Package datamover copies volume snapshots and dump streams into the kopia
// repository and back. Each export or import command is one work item on
// the data movers' work queue, so N movers (Concurrency per process, times
// processes) move N volumes at once.
//
// A snapshot export reads the snapshot's directory (found by a Resolver),
// or, on Kubernetes, is handed to a mover pod (Config.Volumes, see
// PodMover); a dump export reads the stream the dump step left in the
// dumps bucket under bus.DumpObject(run, artifact), where the request's
// Volume is the artifact, and deletes it once stored. An import writes a directory, or
// streams a dump through a pipe (bus.Pipes) to the restore's dump step.
//
// Progress is reported about once a second; the result
// (volume.exported/imported or .failed) is kept in KV by idempotency key,
// so a redelivered command repeats its answer instead of moving the data
// again.
package datamover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/repository"
)

// Name is the service's name in `tidemark serve --services`.
const Name = "datamover"

// Source and target kinds of the volume commands.
const (
	SourceSnapshot  = "snapshot"
	SourceDump      = "dump"
	TargetDirectory = "directory"
	TargetReplace   = "replace"
	TargetStream    = "stream"
)

// ErrUnsupported is the failure of a command this mover cannot carry out.
var ErrUnsupported = errors.New("not supported by this data mover")

// ErrSnapshotNotFound is the failure of an export whose snapshot is gone.
var ErrSnapshotNotFound = errors.New("snapshot not found")

// ErrDumpNotFound is the failure of a dump export whose stream is not in
// the dumps bucket (the dump step did not run, or its object expired).
var ErrDumpNotFound = errors.New("dump stream not found")

// permanent reports whether a failed move cannot succeed on a retry.
func permanent(err error) bool {
	var pe *moverError
	if errors.As(err, &pe) && pe.permanent {
		return true
	}
	return repository.IsPermanent(err) || errors.Is(err, ErrUnsupported) || errors.Is(err, ErrSnapshotNotFound) || errors.Is(err, ErrDumpNotFound) || errors.Is(err, ErrInvalidEdits) ||
		errors.Is(err, bus.ErrPipeAborted) || errors.Is(err, bus.ErrPipeRestarted) || errors.Is(err, bus.ErrPipeReaderGone)
}

// Repository is what a mover needs of the repository.
type Repository interface {
	ExportDir(ctx context.Context, req repository.ExportRequest) (repository.ExportResult, error)
	ImportDir(ctx context.Context, manifestID, targetDir string, progress func(repository.Progress)) (repository.ImportResult, error)
	ExportStream(ctx context.Context, req repository.StreamRequest) (repository.ExportResult, error)
	ImportStream(ctx context.Context, manifestID string, w io.Writer, progress func(repository.Progress)) (repository.ImportResult, error)
	CheckSnapshot(ctx context.Context, manifestID string) (repository.ImportResult, error)
}

var _ Repository = (*repository.Repository)(nil)

// Resolver finds the directory holding a snapshot's data.
type Resolver func(ctx context.Context, id events.SnapshotID) (string, error)

// VolumeMover moves volumes somewhere other than this process: snapshot
// exports and directory or replacing imports (dumps and checks stay
// here, they touch no volume). PodMover runs each in a mover pod.
type VolumeMover interface {
	Export(ctx context.Context, req events.VolumeExportRequested, progress func(repository.Progress)) (repository.ExportResult, error)
	// Import returns where a replacing import kept the previous contents.
	Import(ctx context.Context, req events.VolumeImportRequested, progress func(repository.Progress)) (res repository.ImportResult, previous string, err error)
}

// Config configures a data mover.
type Config struct {
	Repository Repository
	// Resolver finds snapshots in this process's reach; not needed with
	// Volumes.
	Resolver Resolver
	// Volumes, when set, moves the volumes instead of this process.
	Volumes VolumeMover
	// Concurrency is how many volumes this process moves at once.
	Concurrency int
	// AckWait is how long a work item stays with a mover that stopped
	// heartbeating it (it died) before another mover gets it
	// (DefaultAckWait when zero). Every mover of a deployment must use the
	// same value: the last one to start sets it on the shared consumer.
	AckWait time.Duration
	Logger  *slog.Logger
}

// DefaultAckWait is Config.AckWait's default.
const DefaultAckWait = 30 * time.Second

// Bus is what the data mover needs of the bus.
type Bus interface {
	bus.Publisher
	bus.Consumer
	bus.KeyValues
	bus.ObjectStores
	bus.Pipes
}

// Service is a data mover instance.
type Service struct {
	cfg     Config
	bus     Bus
	exports *bus.Results
	imports *bus.Results
	dumps   bus.Objects
}

// New returns a data mover.
func New(cfg Config, b Bus) (*Service, error) {
	if cfg.Repository == nil {
		return nil, errors.New("datamover: Repository is required")
	}
	if cfg.Resolver == nil && cfg.Volumes == nil {
		return nil, errors.New("datamover: Resolver or Volumes is required")
	}
	if b == nil {
		return nil, errors.New("datamover: a bus is required")
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 2
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = DefaultAckWait
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, bus: b}, nil
}

func consumer(name string, p events.Payload, concurrency int, ackWait time.Duration) bus.ConsumerSpec {
	d, _ := events.Lookup(p.EventType())
	return bus.ConsumerSpec{
		Name:           name,
		Stream:         bus.StreamVolumeCommands,
		FilterSubjects: []string{d.Subject()},
		AckWait:        ackWait,
		MaxDeliver:     5,
		Concurrency:    concurrency,
		// Moves are long: take only what this process can start now, so
		// other movers get the rest.
		Prefetch:      concurrency,
		ShutdownGrace: 10 * time.Second,
	}
}

// Run consumes export and import commands until ctx is done.
func (s *Service) Run(ctx context.Context) error {
	kv, err := s.bus.KeyValue(ctx, bus.BucketMovers)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	s.exports = bus.NewResults(kv, "export")
	s.imports = bus.NewResults(kv, "import")
	dumps, err := s.bus.ObjectStore(ctx, bus.BucketDumps)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	s.dumps = dumps
	errs := make(chan error, 2)
	go func() {
		errs <- s.bus.Consume(ctx, consumer("datamover-export", events.VolumeExportRequested{}, s.cfg.Concurrency, s.cfg.AckWait), s.handleExport)
	}()
	go func() {
		errs <- s.bus.Consume(ctx, consumer("datamover-import", events.VolumeImportRequested{}, s.cfg.Concurrency, s.cfg.AckWait), s.handleImport)
	}()
	return errors.Join(<-errs, <-errs)
}

func (s *Service) handleExport(ctx context.Context, ev events.Event) ([]events.Event, error) {
	req, ok := events.As[events.VolumeExportRequested](ev)
	if !ok {
		return nil, bus.Permanentf("datamover: unexpected %s", ev.Type())
	}
	if p, done, err := s.exports.Load(ctx, req.IdempotencyKey); err != nil {
		return nil, err
	} else if done {
		s.cfg.Logger.Info("volume already exported; repeating the result", "run", req.RunID, "volume", req.Volume)
		return []events.Event{{Subject: ev.Subject, Data: p}}, nil
	}

	res, err := s.export(ctx, req, func(p repository.Progress) {
		s.progress(ctx, ev, events.VolumeExportProgress(transfer(req.RunID, req.Volume, p)))
	})
	if err != nil && ctx.Err() != nil {
		// Shutting down mid-export: nothing was recorded, so let the
		// command be redelivered (the next export reuses what was uploaded).
		return nil, ctx.Err()
	}
	var result events.Payload
	if err != nil {
		perm := permanent(err)
		s.cfg.Logger.Warn("export failed", "run", req.RunID, "application", req.Application, "volume", req.Volume, "permanent", perm, "err", err)
		result = events.VolumeExportFailed{RunID: req.RunID, Volume: req.Volume, Error: err.Error(), Permanent: perm}
	} else {
		s.cfg.Logger.Info("volume exported", "run", req.RunID, "application", req.Application, "volume", req.Volume,
			"manifest", res.ManifestID, "files", res.Files, "bytes", res.Bytes, "uploaded", res.BytesUploaded,
			"duration", res.FinishedAt.Sub(res.StartedAt))
		result = events.VolumeExported{
			RunID: req.RunID, Volume: req.Volume, SourceKind: req.SourceKind, ManifestID: events.ManifestID(res.ManifestID),
			Files: res.Files, Bytes: res.Bytes, BytesUploaded: res.BytesUploaded,
			StartedAt: res.StartedAt.UTC(), FinishedAt: res.FinishedAt.UTC(),
		}
	}
	out, err := s.finish(ctx, ev, s.exports, req.IdempotencyKey, result)
	if err == nil && req.SourceKind == SourceDump {
		if _, ok := result.(events.VolumeExported); ok {
			// The stream is in the repository now; the bucket's TTL
			// removes it if this fails.
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if derr := s.dumps.Delete(dctx, bus.DumpObject(req.RunID, req.Volume)); derr != nil {
				s.cfg.Logger.Warn("deleting an exported dump stream", "run", req.RunID, "artifact", req.Volume, "err", derr)
			}
		}
	}
	return out, err
}

func (s *Service) export(ctx context.Context, req events.VolumeExportRequested, progress func(repository.Progress)) (repository.ExportResult, error) {
	switch req.SourceKind {
	case SourceSnapshot:
		if s.cfg.Volumes != nil {
			return s.cfg.Volumes.Export(ctx, req, progress)
		}
		dir, err := s.cfg.Resolver(ctx, req.SnapshotID)
		if err != nil {
			return repository.ExportResult{}, err
		}
		return s.cfg.Repository.ExportDir(ctx, repository.ExportRequest{
			App: req.Application, Volume: req.Volume, RunID: string(req.RunID), Dir: dir, Progress: progress,
		})
	case SourceDump:
		// A dump's Volume is its artifact name: the dump step streamed it
		// into the dumps bucket under bus.DumpObject(run, artifact).
		name := bus.DumpObject(req.RunID, req.Volume)
		r, err := s.dumps.Get(ctx, name)
		if errors.Is(err, bus.ErrObjectNotFound) {
			return repository.ExportResult{}, fmt.Errorf("%w: no object %s (dump step %q)", ErrDumpNotFound, name, req.DumpStep)
		}
		if err != nil {
			return repository.ExportResult{}, fmt.Errorf("reading dump %s: %w", name, err)
		}
		defer r.Close()
		return s.cfg.Repository.ExportStream(ctx, repository.StreamRequest{
			App: req.Application, Artifact: req.Volume, RunID: string(req.RunID), Reader: r, Progress: progress,
		})
	default:
		return repository.ExportResult{}, fmt.Errorf("%w: source kind %q", ErrUnsupported, req.SourceKind)
	}
}

func (s *Service) handleImport(ctx context.Context, ev events.Event) ([]events.Event, error) {
	req, ok := events.As[events.VolumeImportRequested](ev)
	if !ok {
		return nil, bus.Permanentf("datamover: unexpected %s", ev.Type())
	}
	if p, done, err := s.imports.Load(ctx, req.IdempotencyKey); err != nil {
		return nil, err
	} else if done {
		s.cfg.Logger.Info("volume already imported; repeating the result", "run", req.RunID, "volume", req.Volume)
		return []events.Event{{Subject: ev.Subject, Data: p}}, nil
	}

	res, previous, err := s.importVolume(ctx, req, func(p repository.Progress) {
		s.progress(ctx, ev, events.VolumeImportProgress(transfer(req.RunID, req.Volume, p)))
	})
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var result events.Payload
	if err != nil {
		perm := permanent(err)
		s.cfg.Logger.Warn("import failed", "run", req.RunID, "volume", req.Volume, "manifest", req.ManifestID, "permanent", perm, "err", err)
		result = events.VolumeImportFailed{RunID: req.RunID, Volume: req.Volume, Error: err.Error(), Permanent: perm}
	} else {
		s.cfg.Logger.Info("volume imported", "run", req.RunID, "volume", req.Volume, "manifest", req.ManifestID,
			"target", req.Target, "files", res.Files, "bytes", res.Bytes, "duration", res.FinishedAt.Sub(res.StartedAt))
		result = events.VolumeImported{
			RunID: req.RunID, Volume: req.Volume, ManifestID: req.ManifestID,
			Files: res.Files, Bytes: res.Bytes, StartedAt: res.StartedAt.UTC(), FinishedAt: res.FinishedAt.UTC(),
			Previous: previous, Checked: req.Check,
		}
	}
	return s.finish(ctx, ev, s.imports, req.IdempotencyKey, result)
}

func (s *Service) importVolume(ctx context.Context, req events.VolumeImportRequested, progress func(repository.Progress)) (res repository.ImportResult, previous string, err error) {
	if req.Check {
		res, err = s.cfg.Repository.CheckSnapshot(ctx, string(req.ManifestID))
		return res, "", err
	}
	if s.cfg.Volumes != nil && (req.TargetKind == TargetDirectory || req.TargetKind == TargetReplace) {
		return s.cfg.Volumes.Import(ctx, req, progress)
	}
	switch req.TargetKind {
	case TargetDirectory:
		if req.Target == "" {
			return res, "", fmt.Errorf("%w: import needs a target directory", repository.ErrInvalidRequest)
		}
		res, err = s.cfg.Repository.ImportDir(ctx, string(req.ManifestID), req.Target, progress)
		if err == nil {
			err = applyEdits(ctx, s.cfg.Repository, req.Target, req.Edits)
		}
		return res, "", err
	case TargetReplace:
		return s.replaceDir(ctx, req, progress)
	case TargetStream:
		res, err = s.importStream(ctx, req, progress)
		return res, "", err
	default:
		return res, "", fmt.Errorf("%w: target kind %q", ErrUnsupported, req.TargetKind)
	}
}

// replaceDir restores into a directory beside the target, verifies it,
// and only then swaps it in; the target's previous contents are renamed,
// not deleted, so a restore that turns out wrong loses nothing. A
// redelivered request finds the previous contents already kept and
// replaces only its own earlier copy.
func (s *Service) replaceDir(ctx context.Context, req events.VolumeImportRequested, progress func(repository.Progress)) (repository.ImportResult, string, error) {
	var res repository.ImportResult
	target := filepath.Clean(req.Target)
	if req.Target == "" || !filepath.IsAbs(target) || target == "/" {
		return res, "", fmt.Errorf("%w: a replacing import needs an absolute directory, not %q", repository.ErrInvalidRequest, req.Target)
	}
	if fi, err := os.Stat(target); err == nil && !fi.IsDir() {
		return res, "", fmt.Errorf("%w: %s is not a directory", repository.ErrInvalidRequest, target)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return res, "", fmt.Errorf("import target: %w", err)
	}
	tag := runTag(req.RunID)
	staging := target + ".tidemark-restore-" + tag
	previous := target + ".tidemark-previous-" + tag
	if err := os.RemoveAll(staging); err != nil {
		return res, "", fmt.Errorf("clearing %s from an earlier attempt: %w", staging, err)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return res, "", fmt.Errorf("import target: %w", err)
	}
	res, err := s.cfg.Repository.ImportDir(ctx, string(req.ManifestID), staging, progress)
	if err == nil {
		// Before the swap: edits that fail leave the target as it was.
		err = applyEdits(ctx, s.cfg.Repository, staging, req.Edits)
	}
	if err != nil {
		_ = os.RemoveAll(staging)
		return res, "", err
	}
	switch _, err := os.Lstat(previous); {
	case err == nil:
		// Kept by an earlier attempt of this run: what is at target now is
		// that attempt's restored copy.
		if err := os.RemoveAll(target); err != nil {
			return res, "", fmt.Errorf("replacing an earlier attempt's copy at %s: %w", target, err)
		}
	case errors.Is(err, os.ErrNotExist):
		if err := os.Rename(target, previous); err != nil && !errors.Is(err, os.ErrNotExist) {
			return res, "", fmt.Errorf("keeping the previous contents of %s: %w", target, err)
		} else if err != nil {
			previous = ""
		}
	default:
		return res, "", err
	}
	if err := os.Rename(staging, target); err != nil {
		return res, "", fmt.Errorf("swapping the restored copy into %s: %w (the previous contents are at %s)", target, err, previous)
	}
	return res, previous, nil
}

// importStream streams a dump from the repository into the pipe
// bus.DumpObject(run, artifact) (the Volume is the artifact), from which the
// restore's dump step (req.Target) feeds its command's stdin while this
// still runs. A failure reaches that step through the pipe, and the import
// succeeds only once the step has received the whole stream.
func (s *Service) importStream(ctx context.Context, req events.VolumeImportRequested, progress func(repository.Progress)) (repository.ImportResult, error) {
	name := bus.DumpObject(req.RunID, req.Volume)
	if req.ReadBy != nil {
		if !time.Now().Before(*req.ReadBy) {
			return repository.ImportResult{}, fmt.Errorf("%w: its reader stopped reading at %s, before a data mover took the request; nothing was sent",
				bus.ErrPipeReaderGone, req.ReadBy.UTC().Format(time.RFC3339))
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, *req.ReadBy)
		defer cancel()
	}
	pr, pw := io.Pipe()
	stored := make(chan error, 1)
	go func() {
		_, err := s.bus.WritePipe(ctx, name, pr)
		pr.CloseWithError(err) // unblock the repository read if the pipe stops early
		stored <- err
	}()
	res, err := s.cfg.Repository.ImportStream(ctx, string(req.ManifestID), pw, progress)
	// A failed read is passed on as the stream's error, so the pipe
	// reports it to the reader instead of ending cleanly.
	if err != nil {
		pw.CloseWithError(err)
	} else {
		pw.Close()
	}
	serr := <-stored
	if err == nil && serr != nil {
		err = fmt.Errorf("streaming dump %s to step %q: %w", name, req.Target, serr)
	}
	if err != nil {
		return repository.ImportResult{}, err
	}
	return res, nil
}

// runTag names a run's staging and kept copies beside a restored volume.
func runTag(run events.RunID) string {
	tag := string(run)
	if len(tag) > 8 {
		tag = tag[:8]
	}
	return tag
}

func transfer(run events.RunID, volume string, p repository.Progress) events.TransferProgress {
	return events.TransferProgress{
		RunID: run, Volume: volume,
		BytesDone: p.BytesDone, BytesTotal: p.BytesTotal, FilesDone: p.FilesDone, FilesTotal: p.FilesTotal,
	}
}

// progress publishes a progress fact. Progress is advisory: a report that
// cannot be published is logged, and the move goes on.
func (s *Service) progress(ctx context.Context, cause events.Event, p events.Payload) {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ev := events.Event{Subject: cause.Subject, Data: p}.CausedBy(cause)
	if _, err := s.bus.Publish(pctx, ev); err != nil && ctx.Err() == nil {
		s.cfg.Logger.Warn("reporting progress", "type", p.EventType(), "err", err)
	}
}

// finish records the result, so a redelivered command repeats it, and
// returns it for the bus to publish.
func (s *Service) finish(ctx context.Context, cause events.Event, results *bus.Results, idempotencyKey string, result events.Payload) ([]events.Event, error) {
	// A finished move must be recorded even if shutdown began meanwhile.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := results.Store(sctx, idempotencyKey, result); err != nil {
		return nil, fmt.Errorf("storing the result of %s: %w", cause.ID, err)
	}
	return []events.Event{{Subject: cause.Subject, Data: result}}, nil
}

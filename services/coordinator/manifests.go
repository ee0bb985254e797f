package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/google/uuid"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/services/catalog"
)

// manifestCapturer captures the objects of an application on a platform
// that has them (Kubernetes): a manifest bundle, kept with its restore
// points so a restore to new can create them again.
type manifestCapturer interface {
	CaptureManifests(ctx context.Context, application string) ([]byte, error)
}

// captureTimeout bounds capturing one application's objects.
const captureTimeout = 30 * time.Second

// captureManifests captures the objects of a backup's application, on a
// platform whose applications have them (Kubernetes), and puts them in the
// dumps bucket where a dump step's stream goes: the run then exports them
// with its volumes, and its restore point lists them (kube.ManifestArtifact),
// so a restore to new can create them again. It returns whether they were
// captured, and a line for the run's history.
//
// A capture that fails leaves the backup going without them: its history
// says so, and a restore of its point to another namespace is refused with
// the reason (a restore to production does not need them).
func (s *Service) captureManifests(ctx context.Context, run events.RunID, app string) (bool, string) {
	c, ok := s.cfg.Apps.(manifestCapturer)
	if !ok {
		return false, ""
	}
	n, err := s.attachManifests(ctx, c, run, app)
	if err != nil {
		if ctx.Err() == nil {
			s.cfg.Logger.Warn("the application's Kubernetes objects were not captured; the backup goes on without them, and its restore point cannot be restored into another namespace (a restore to production does not need them)",
				"run", run, "application", app, "err", err)
		}
		return false, fmt.Sprintf("the application's Kubernetes objects were not captured (%v): this backup's restore point can be restored to production, not into another namespace", err)
	}
	s.cfg.Logger.Info("application objects captured", "run", run, "application", app, "objects", n)
	return true, fmt.Sprintf("captured the application's %d Kubernetes objects; they are stored with the restore point as %s", n, kube.ManifestArtifact)
}

func (s *Service) attachManifests(ctx context.Context, c manifestCapturer, run events.RunID, app string) (int, error) {
	cctx, cancel := context.WithTimeout(ctx, captureTimeout)
	defer cancel()
	bundle, err := c.CaptureManifests(cctx, app)
	if err != nil {
		return 0, err
	}
	objs, err := kube.ParseManifests(bundle)
	if err != nil {
		return 0, err
	}
	objects, err := s.bus.ObjectStore(ctx, bus.BucketDumps)
	if err != nil {
		return 0, err
	}
	if _, err := objects.Put(ctx, bus.DumpObject(run, kube.ManifestArtifact), bytes.NewReader(bundle)); err != nil {
		return 0, fmt.Errorf("storing the captured objects: %w", err)
	}
	return len(objs), nil
}

// discardManifests deletes a failed backup's captured objects.
func (s *Service) discardManifests(ctx context.Context, run events.RunID) {
	objects, err := s.bus.ObjectStore(ctx, bus.BucketDumps)
	if err == nil {
		err = objects.Delete(ctx, bus.DumpObject(run, kube.ManifestArtifact))
	}
	if err != nil && !errors.Is(err, bus.ErrObjectNotFound) && ctx.Err() == nil {
		// The bucket's TTL removes it.
		s.cfg.Logger.Warn("deleting the captured objects of a failed backup", "run", run, "err", err)
	}
}

// artifactReadTimeout bounds reading an artifact through a data mover: it
// may first wait for a free data mover.
const artifactReadTimeout = 2 * time.Minute

// maxArtifactRead bounds what readArtifact keeps in memory.
const maxArtifactRead = 64 << 20

// readArtifact reads a small artifact of a restore point (the Kubernetes
// objects it was taken with) for run: a data mover streams it out of the
// repository (the coordinator never opens the repository itself) into a
// pipe that this reads. The pipe's name is new for each read, so a request
// redelivered after a crash never meets an earlier read's writer.
func (s *Service) readArtifact(ctx context.Context, run events.RunID, a catalog.Artifact) ([]byte, error) {
	pipes, ok := s.bus.(bus.Pipes)
	if !ok {
		return nil, errors.New("this coordinator's bus cannot stream artifacts")
	}
	ctx, cancel := context.WithTimeout(ctx, artifactReadTimeout)
	defer cancel()
	nonce := uuid.NewString()[:8]
	name := a.Name + "@" + nonce
	key := fmt.Sprintf("%s/read/%s", run, name)
	readBy := s.cfg.Now().Add(artifactReadTimeout).UTC()
	req := events.VolumeImportRequested{
		RunID: run, Volume: name, ManifestID: a.ManifestID, Repository: s.cfg.Repository,
		TargetKind: "stream", Target: "coordinator", ReadBy: &readBy, IdempotencyKey: key,
	}
	rc := pipes.ReadPipe(ctx, bus.DumpObject(run, name), artifactReadTimeout)
	defer rc.Close()
	ev := events.New(s.cfg.Source, string(run), req, s.cfg.Now())
	ev.ID, ev.CorrelationID = key, string(run)
	if _, err := s.bus.Publish(ctx, ev); err != nil {
		return nil, fmt.Errorf("asking a data mover for %s: %w", a.Name, err)
	}
	data, err := io.ReadAll(io.LimitReader(rc, maxArtifactRead+1))
	switch {
	case errors.Is(err, bus.ErrPipeWriterGone) || (err != nil && ctx.Err() != nil):
		return nil, fmt.Errorf("no data mover delivered %s within %s (is one running, and free? volume moves ahead of it in the queue delay it): %w", a.Name, artifactReadTimeout, err)
	case err != nil:
		return nil, err
	case len(data) > maxArtifactRead:
		return nil, fmt.Errorf("%s is larger than %d MiB", a.Name, maxArtifactRead>>20)
	}
	return data, nil
}

// Package snapshotter takes volume snapshots (one volume or a group of them,
// in one pass while the application is quiesced) and deletes them once their
// data has been exported or their run has failed. It reports each result as
// an event. At start it sweeps away snapshots a crashed run left behind.
//
// A request's volumes are always taken in one pass, in order, all or
// nothing; on the local platform that is also what Group asks for, since
// the application stays quiesced for the whole call. On a platform with
// group snapshots (a platform.GroupSnapshotter: Kubernetes'
// VolumeGroupSnapshot), a request with Group set is taken through it, and
// snapshot.ready says whether it became one group snapshot or one snapshot
// per volume, and why. Results are kept in KV by idempotency key, so a
// redelivered request repeats its answer instead of taking new snapshots.
package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/platform"
)

// Name is the service's name in `tidemark serve --services`.
const Name = "snapshotter"

// DefaultMaxAge is how old a snapshot may grow before the startup sweep
// deletes it. It must exceed the longest export: a run still exporting a
// snapshot when the snapshotter restarts would lose it.
const DefaultMaxAge = 24 * time.Hour

// Config configures a snapshotter.
type Config struct {
	Snapshotter platform.Snapshotter
	// MaxAge is the age past which the startup sweep deletes a snapshot.
	MaxAge time.Duration
	// Concurrency is how many snapshot requests are handled at once.
	Concurrency int
	Logger      *slog.Logger
	// Now is the sweep's clock.
	Now func() time.Time
}

// Bus is what the snapshotter needs of the bus.
type Bus interface {
	bus.Consumer
	bus.KeyValues
}

// Service is a snapshotter instance.
type Service struct {
	cfg     Config
	bus     Bus
	results *bus.Results
}

// New returns a snapshotter.
func New(cfg Config, b Bus) (*Service, error) {
	if cfg.Snapshotter == nil {
		return nil, errors.New("snapshotter: Snapshotter is required")
	}
	if b == nil {
		return nil, errors.New("snapshotter: a bus is required")
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Service{cfg: cfg, bus: b}, nil
}

func consumer(name string, p events.Payload, concurrency int) bus.ConsumerSpec {
	d, _ := events.Lookup(p.EventType())
	return bus.ConsumerSpec{
		Name:           name,
		Stream:         bus.StreamSnapshotCommands,
		FilterSubjects: []string{d.Subject()},
		AckWait:        30 * time.Second,
		MaxDeliver:     5,
		Concurrency:    concurrency,
	}
}

// Run sweeps away leftover snapshots, then consumes snapshot and delete
// commands until ctx is done.
func (s *Service) Run(ctx context.Context) error {
	kv, err := s.bus.KeyValue(ctx, bus.BucketSnapshots)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	s.results = bus.NewResults(kv, "result")
	// The sweep is housekeeping: when it fails the service still works,
	// and the next start tries again.
	if _, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
		s.cfg.Logger.Error("sweeping leftover snapshots", "err", err)
	}
	errs := make(chan error, 2)
	go func() {
		errs <- s.bus.Consume(ctx, consumer("snapshotter", events.SnapshotRequested{}, s.cfg.Concurrency), s.handleRequest)
	}()
	go func() {
		errs <- s.bus.Consume(ctx, consumer("snapshotter-delete", events.SnapshotDeleteRequested{}, 1), s.handleDelete)
	}()
	return errors.Join(<-errs, <-errs)
}

// handleRequest takes the snapshots of one request. A snapshot that fails
// is a result (snapshot.failed), not a handler error: only trouble with
// Tidemark's own infrastructure is retried by redelivery.
func (s *Service) handleRequest(ctx context.Context, ev events.Event) ([]events.Event, error) {
	req, ok := events.As[events.SnapshotRequested](ev)
	if !ok {
		return nil, bus.Permanentf("snapshotter: unexpected %s", ev.Type())
	}
	if p, done, err := s.results.Load(ctx, req.IdempotencyKey); err != nil {
		return nil, err
	} else if done {
		s.cfg.Logger.Info("snapshots already taken; repeating the result", "run", req.RunID, "step", req.Step)
		return []events.Event{{Subject: ev.Subject, Data: p}}, nil
	}

	snaps, grouping, err := s.take(ctx, req)
	if err != nil && ctx.Err() != nil {
		// Shutting down mid-snapshot: nothing is left behind, so let the
		// command be redelivered rather than record a failure.
		return nil, ctx.Err()
	}
	var result events.Payload
	if err != nil {
		permanent := platform.IsPermanentSnapshotError(err)
		s.cfg.Logger.Warn("snapshot failed", "run", req.RunID, "application", req.Application, "step", req.Step, "permanent", permanent, "err", err)
		result = events.SnapshotFailed{RunID: req.RunID, Step: req.Step, Error: err.Error(), Permanent: permanent}
	} else {
		r := ready(req, snaps)
		r.Group = grouping
		result = r
		s.logTaken(req, snaps, grouping)
	}

	// Snapshots taken must be recorded even if shutdown began meanwhile,
	// so the redelivered command repeats them instead of taking new ones.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.results.Store(sctx, req.IdempotencyKey, result); err != nil {
		s.discard(sctx, snaps)
		return nil, fmt.Errorf("storing the result of %s/%s: %w", req.RunID, req.Step, err)
	}
	return []events.Event{{Subject: ev.Subject, Data: result}}, nil
}

// take snapshots a request's volumes: as a group where the request asks
// for one and the platform has group snapshots, else in one pass. grouping
// is nil unless the group method was used.
func (s *Service) take(ctx context.Context, req events.SnapshotRequested) ([]platform.Snapshot, *events.SnapshotGrouping, error) {
	g, ok := s.cfg.Snapshotter.(platform.GroupSnapshotter)
	if !req.Group || !ok {
		snaps, err := s.cfg.Snapshotter.Snapshot(ctx, req.RunID, req.Volumes)
		return snaps, nil, err
	}
	res, err := g.SnapshotGroup(ctx, req.RunID, req.Volumes)
	if err != nil {
		return nil, nil, err
	}
	if res.Group != "" {
		return res.Snapshots, &events.SnapshotGrouping{SnapshotID: res.Group}, nil
	}
	fallback := res.Fallback
	if fallback == "" {
		// A platform that took neither a group nor said why: the schema
		// wants one of the two, and readers want to know.
		fallback = "the platform took no group snapshot and gave no reason"
	}
	return res.Snapshots, &events.SnapshotGrouping{Fallback: fallback}, nil
}

func ready(req events.SnapshotRequested, snaps []platform.Snapshot) events.SnapshotReady {
	r := events.SnapshotReady{RunID: req.RunID, Step: req.Step, Snapshots: make([]events.VolumeSnapshot, len(snaps))}
	for i, sn := range snaps {
		r.Snapshots[i] = events.VolumeSnapshot{
			Volume: sn.Volume, SnapshotID: sn.ID, Method: sn.Method,
			Bytes: sn.Bytes, Duration: events.Duration(sn.Duration), Consistency: sn.Consistency,
		}
	}
	return r
}

func (s *Service) logTaken(req events.SnapshotRequested, snaps []platform.Snapshot, grouping *events.SnapshotGrouping) {
	if grouping != nil {
		if grouping.SnapshotID != "" {
			s.cfg.Logger.Info("group snapshot taken", "run", req.RunID, "application", req.Application, "group", grouping.SnapshotID, "volumes", len(snaps))
		} else {
			s.cfg.Logger.Warn("group snapshot asked for; snapshotted per volume", "run", req.RunID, "application", req.Application, "reason", grouping.Fallback)
		}
	}
	for _, sn := range snaps {
		s.cfg.Logger.Info("snapshot taken", "run", req.RunID, "application", req.Application, "volume", sn.Volume,
			"snapshot", sn.ID, "method", sn.Method, "consistency", sn.Consistency, "bytes", sn.Bytes, "duration", sn.Duration, "group", req.Group)
	}
}

// discard deletes snapshots whose result could not be recorded: the
// redelivered command will take them again.
func (s *Service) discard(ctx context.Context, snaps []platform.Snapshot) {
	for _, sn := range snaps {
		if err := s.cfg.Snapshotter.Delete(ctx, sn.ID); err != nil {
			s.cfg.Logger.Error("deleting an unrecorded snapshot; the startup sweep will retry", "run", sn.RunID, "snapshot", sn.ID, "err", err)
		}
	}
}

// handleDelete deletes snapshots. Deleting is idempotent: a snapshot that
// is already gone counts as deleted, so a redelivered command succeeds.
func (s *Service) handleDelete(ctx context.Context, ev events.Event) ([]events.Event, error) {
	req, ok := events.As[events.SnapshotDeleteRequested](ev)
	if !ok {
		return nil, bus.Permanentf("snapshotter: unexpected %s", ev.Type())
	}
	var errs []error
	for _, id := range req.SnapshotIDs {
		if err := s.cfg.Snapshotter.Delete(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		if platform.IsPermanentSnapshotError(err) {
			return nil, bus.Permanent(err)
		}
		return nil, err
	}
	s.cfg.Logger.Info("snapshots deleted", "run", req.RunID, "snapshots", req.SnapshotIDs, "reason", req.Reason)
	return []events.Event{{Subject: ev.Subject, Data: events.SnapshotDeleted{RunID: req.RunID, SnapshotIDs: req.SnapshotIDs}}}, nil
}

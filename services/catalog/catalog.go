// Package catalog materializes restore points from the facts of backup
// runs. While a run is going, it gathers what a restore will need: the
// artifacts each volume export stored, and the outputs of the steps (a
// PostgreSQL backup label, a snapshot name). When the run completes, it
// records the restore point and announces it with restorepoint.recorded.
// A failed run's gathered facts are dropped: a failed backup never becomes
// a restore point.
package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
)

// Name is the service's name in `tidemark serve --services`.
const Name = "catalog"

// Bus is what the catalog needs of the bus.
type Bus interface {
	bus.Consumer
	bus.KeyValues
}

// Config configures the catalog.
type Config struct {
	Logger *slog.Logger
}

// Service is the catalog.
type Service struct {
	cfg   Config
	bus   Bus
	store *Store
}

// New returns a catalog.
func New(cfg Config, b Bus) (*Service, error) {
	if b == nil {
		return nil, errors.New("catalog: a bus is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, bus: b}, nil
}

// consumedTypes are the facts a restore point is made of.
var consumedTypes = []events.Payload{
	events.VolumeExported{}, events.HookSucceeded{}, events.HookReleased{},
	events.BackupCompleted{}, events.BackupFailed{}, events.BackupCancelled{},
}

func consumer() bus.ConsumerSpec {
	var subjects []string
	for _, p := range consumedTypes {
		d, _ := events.Lookup(p.EventType())
		subjects = append(subjects, d.Subject())
	}
	return bus.ConsumerSpec{
		Name:           "catalog",
		Stream:         bus.StreamEvents,
		FilterSubjects: subjects,
		AckWait:        30 * time.Second,
		MaxDeliver:     10,
		// One at a time, in stream order: a run's facts arrive before its
		// completion, and the completion must see them all.
		Concurrency: 1,
	}
}

// Run materializes restore points until ctx is done.
func (s *Service) Run(ctx context.Context) error {
	kv, err := s.bus.KeyValue(ctx, bus.BucketCatalog)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	s.store = NewStore(kv)
	return s.bus.Consume(ctx, consumer(), s.handle)
}

func (s *Service) handle(ctx context.Context, ev events.Event) ([]events.Event, error) {
	switch p := ev.Data.(type) {
	case events.VolumeExported:
		return nil, s.store.updatePending(ctx, p.RunID, func(r *pendingRun) {
			kind := "volume"
			if p.SourceKind == "dump" {
				kind = "dump"
			}
			r.Artifacts[p.Volume] = Artifact{Name: p.Volume, Kind: kind, ManifestID: p.ManifestID, Bytes: p.Bytes, Files: p.Files}
		})
	case events.HookSucceeded:
		return nil, s.store.updatePending(ctx, p.RunID, func(r *pendingRun) {
			r.record(p.Step, p.Outputs)
			if p.Holding {
				r.Quiesced = true
			}
		})
	case events.HookReleased:
		return nil, s.store.updatePending(ctx, p.RunID, func(r *pendingRun) { r.record(p.Step, p.Outputs) })
	case events.BackupFailed:
		return nil, s.store.dropPending(ctx, p.RunID)
	case events.BackupCancelled:
		return nil, s.store.dropPending(ctx, p.RunID)
	case events.BackupCompleted:
		return s.complete(ctx, ev, p)
	}
	return nil, bus.Permanentf("catalog: unexpected %s", ev.Type())
}

func (s *Service) complete(ctx context.Context, ev events.Event, done events.BackupCompleted) ([]events.Event, error) {
	if existing, err := s.store.Get(ctx, done.RestorePointID); err == nil {
		// Redelivered completion: announce the point already recorded.
		return []events.Event{{Subject: ev.Subject, Data: existing.recordedEvent()}}, nil
	} else if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	run, err := s.store.pending(ctx, done.RunID)
	if err != nil {
		return nil, err
	}
	if len(run.Artifacts) == 0 {
		// Nothing a restore could use: recording it would promise a
		// restore that cannot happen.
		return nil, bus.Permanentf("catalog: run %s completed with no exported artifacts; no restore point recorded", done.RunID)
	}
	point := RestorePoint{
		ID:          done.RestorePointID,
		RunID:       done.RunID,
		Application: done.Application,
		CreatedAt:   done.FinishedAt,
		Artifacts:   run.sortedArtifacts(),
		StepOutputs: run.StepOutputs,
		Consistency: run.consistency(),
		Status:      StatusAvailable,
	}
	if err := s.store.Put(ctx, point); err != nil {
		return nil, err
	}
	if err := s.store.dropPending(ctx, done.RunID); err != nil {
		s.cfg.Logger.Warn("dropping a completed run's gathered facts", "run", done.RunID, "err", err)
	}
	s.cfg.Logger.Info("restore point recorded", "id", point.ID, "application", point.Application, "artifacts", len(point.Artifacts), "consistency", point.Consistency)
	return []events.Event{{Subject: ev.Subject, Data: point.recordedEvent()}}, nil
}

// pendingRun is what a run has gathered so far.
type pendingRun struct {
	Artifacts   map[string]Artifact          `json:"artifacts"`
	StepOutputs map[string]map[string]string `json:"stepOutputs,omitempty"`
	// Quiesced is true once a step held the application still (a lock).
	Quiesced bool `json:"quiesced,omitempty"`
}

func (r *pendingRun) record(step string, outputs map[string]string) {
	if len(outputs) == 0 {
		return
	}
	if r.StepOutputs == nil {
		r.StepOutputs = map[string]map[string]string{}
	}
	merged := r.StepOutputs[step]
	if merged == nil {
		merged = map[string]string{}
	}
	for k, v := range outputs {
		merged[k] = v
	}
	r.StepOutputs[step] = merged
}

func (r *pendingRun) sortedArtifacts() []Artifact {
	out := make([]Artifact, 0, len(r.Artifacts))
	for _, a := range r.Artifacts {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// consistency says what the restore point guarantees: application when the
// application was held still during its snapshots, logical when it holds
// only dumps, crash otherwise.
func (r *pendingRun) consistency() string {
	if r.Quiesced {
		return ConsistencyApplication
	}
	dumpsOnly := len(r.Artifacts) > 0
	for _, a := range r.Artifacts {
		if a.Kind != "dump" {
			dumpsOnly = false
		}
	}
	if dumpsOnly {
		return ConsistencyLogical
	}
	return ConsistencyCrash
}

func (p RestorePoint) recordedEvent() events.RestorePointRecorded {
	arts := make([]events.Artifact, 0, len(p.Artifacts))
	for _, a := range p.Artifacts {
		arts = append(arts, events.Artifact{Name: a.Name, Kind: a.Kind, ManifestID: a.ManifestID, Bytes: a.Bytes})
	}
	return events.RestorePointRecorded{
		RestorePointID: p.ID, RunID: p.RunID, Application: p.Application,
		CreatedAt: p.CreatedAt, Artifacts: arts, Consistency: p.Consistency,
	}
}

func marshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	return b, nil
}

// Package catalog materializes restore points from the facts of backup
// runs. While a run is going, it gathers what a restore will need: the
// artifacts each volume export stored, and the outputs of the steps (a
// PostgreSQL backup label, a snapshot name). When the run completes, it
// records the restore point and announces it with restorepoint.recorded.
// A failed run's gathered facts are dropped: a failed backup never becomes
// a restore point.
//
// The catalog also looks after the repository the points live in:
//   - it writes each point's record into the repository beside its
//     snapshots, so Rebuild can restore the catalog from the repository
//     alone (a fresh install, a lost NATS cluster);
//   - it applies the retention policies (see Retention): an expired point's
//     snapshots are deleted and restorepoint.expired is emitted; a
//     deletion that fails leaves the point listed as "deleting" and is
//     retried;
//   - it runs kopia maintenance on a schedule, as the repository's one
//     maintenance owner, never twice at once (see Service.Maintain).
//
// The catalog holds its own repository handle rather than asking a data
// mover to delete snapshots by command: it must read and write restore
// point records in the repository anyway, a deletion is a metadata
// operation that takes milliseconds (not a work item worth queueing), and
// a synchronous call lets the catalog know for certain whether a point's
// snapshots are gone before it drops the point, with no result events to
// correlate. A data mover's repository handle and the catalog's are two
// kopia clients of one repository, which kopia supports.
package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/repository"
)

// Name is the service's name in `tidemark serve --services`.
const Name = "catalog"

// RecordKind is the kind of the restore point records the catalog writes
// into the repository (kopia manifests labelled type=tidemark-restorepoint).
const RecordKind = "restorepoint"

// DefaultMaintenanceInterval is how often the catalog asks kopia whether
// maintenance is due. kopia's own schedule in the repository decides what
// runs: quick maintenance hourly and full maintenance daily by default
// (`kopia maintenance set` changes them).
const DefaultMaintenanceInterval = 15 * time.Minute

// Lease lengths. A lease is renewed every third of its length while held,
// so a holder that dies blocks the others for at most this long.
const (
	housekeepingLeaseTTL = time.Minute
	maintenanceLeaseTTL  = 2 * time.Minute
)

// ErrMaintenanceBusy is returned by Maintain while maintenance is already
// running, in this process or another catalog instance.
var ErrMaintenanceBusy = errors.New("repository maintenance is already running")

// Repository is what the catalog needs of the repository.
type Repository interface {
	PutRecord(ctx context.Context, kind, id string, labels map[string]string, data json.RawMessage) error
	DeleteRecord(ctx context.Context, kind, id string) error
	Records(ctx context.Context, kind string) ([]repository.Record, error)
	DeleteSnapshot(ctx context.Context, manifestID string) error
	HasSnapshot(ctx context.Context, manifestID string) (bool, error)
	Maintain(ctx context.Context, mode repository.MaintenanceMode) (repository.MaintenanceResult, error)
}

var _ Repository = (*repository.Repository)(nil)

// Bus is what the catalog needs of the bus.
type Bus interface {
	bus.Publisher
	bus.Consumer
	bus.KeyValues
	bus.VersionedKeyValues
}

// Config configures the catalog.
type Config struct {
	// Repository holds the points' snapshots. Required.
	Repository Repository
	// Retention says which points to keep; the zero value keeps all.
	Retention Retention
	// MaintenanceInterval is how often kopia maintenance is considered
	// (DefaultMaintenanceInterval when zero; negative: never).
	MaintenanceInterval time.Duration
	// InstanceID names this instance in the leases it holds.
	InstanceID string
	Logger     *slog.Logger
}

// Service is the catalog.
type Service struct {
	cfg   Config
	bus   Bus
	store *Store

	ready        chan struct{} // closed once Run has opened the bucket
	housekeeping *lease
	maintenance  *lease
	poke         chan struct{}
	maintaining  sync.Mutex
	// maintainHook, when set by a test, runs inside the maintenance
	// lease, before kopia maintenance.
	maintainHook func(context.Context)
}

// New returns a catalog.
func New(cfg Config, b Bus) (*Service, error) {
	if b == nil {
		return nil, errors.New("catalog: a bus is required")
	}
	if cfg.Repository == nil {
		return nil, errors.New("catalog: Repository is required (the catalog records points in it, deletes expired snapshots and maintains it)")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Retention.Interval <= 0 {
		cfg.Retention.Interval = DefaultRetentionInterval
	}
	if cfg.Retention.Location == nil {
		cfg.Retention.Location = time.UTC
	}
	if cfg.MaintenanceInterval == 0 {
		cfg.MaintenanceInterval = DefaultMaintenanceInterval
	}
	if cfg.InstanceID == "" {
		cfg.InstanceID = "catalog"
	}
	return &Service{cfg: cfg, bus: b, ready: make(chan struct{}), poke: make(chan struct{}, 1)}, nil
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

// Run materializes restore points, applies retention and maintains the
// repository until ctx is done.
func (s *Service) Run(ctx context.Context) error {
	kv, err := s.bus.VersionedKeyValue(ctx, bus.BucketCatalog)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	s.store = NewStore(kv)
	holder := s.cfg.InstanceID + "/" + uuid.NewString()
	s.housekeeping = &lease{kv: kv, key: lockKeys + ".housekeeping", holder: holder, ttl: housekeepingLeaseTTL, now: time.Now}
	s.maintenance = &lease{kv: kv, key: lockKeys + ".maintenance", holder: holder, ttl: maintenanceLeaseTTL, now: time.Now}
	close(s.ready)
	s.cfg.Logger.Info("catalog retention", "policy", s.cfg.Retention.Describe(), "interval", s.cfg.Retention.Interval)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A first pass at start finishes deletions a previous run left.
	s.pokeHousekeeping()
	var wg sync.WaitGroup
	wg.Go(func() { s.housekeepingLoop(ctx) })
	if s.cfg.MaintenanceInterval > 0 {
		wg.Go(func() { s.maintenanceLoop(ctx) })
	}
	err = s.bus.Consume(ctx, consumer(), s.handle)
	cancel()
	wg.Wait()
	return err
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
	artifacts, outputs, consistency := run.sortedArtifacts(), run.StepOutputs, run.consistency()
	if len(done.Artifacts) > 0 {
		// The completion carries the point itself: what was gathered from
		// earlier facts is only a fallback (a coordinator of an earlier
		// version), so a lost fact cannot lose a point.
		artifacts = artifacts[:0]
		for _, a := range done.Artifacts {
			artifacts = append(artifacts, Artifact{Name: a.Name, Kind: a.Kind, ManifestID: a.ManifestID, Bytes: a.Bytes, Files: a.Files, Consistency: a.Consistency})
		}
		merged := map[string]map[string]string{}
		for step, out := range run.StepOutputs {
			merged[step] = out
		}
		for step, out := range done.StepOutputs {
			merged[step] = out
		}
		outputs = merged
		if done.Consistency != "" {
			consistency = done.Consistency
		}
	}
	if len(artifacts) == 0 {
		// Nothing a restore could use: recording it would promise a
		// restore that cannot happen.
		return nil, bus.Permanentf("catalog: run %s completed with no exported artifacts; no restore point recorded", done.RunID)
	}
	point := RestorePoint{
		ID:          done.RestorePointID,
		RunID:       done.RunID,
		Application: done.Application,
		CreatedAt:   done.FinishedAt,
		Artifacts:   artifacts,
		StepOutputs: outputs,
		Consistency: consistency,
		Status:      StatusAvailable,
	}
	// Noted before the point is, so a crash in between leaves a note to
	// the sweep rather than a point without a record in the repository.
	if err := s.store.markUnsynced(ctx, point.ID); err != nil {
		return nil, err
	}
	if err := s.store.Put(ctx, point); err != nil {
		return nil, err
	}
	if err := s.store.dropPending(ctx, done.RunID); err != nil {
		s.cfg.Logger.Warn("dropping a completed run's gathered facts", "run", done.RunID, "err", err)
	}
	// The point is usable now; if its record cannot be written to the
	// repository yet, housekeeping writes it later.
	_ = s.writeRecord(ctx, point)
	s.checkArtifacts(ctx, point)
	s.cfg.Logger.Info("restore point recorded", "id", point.ID, "application", point.Application, "artifacts", len(point.Artifacts), "consistency", point.Consistency)
	s.pokeHousekeeping()
	return []events.Event{{Subject: ev.Subject, Data: point.recordedEvent()}}, nil
}

// checkArtifacts says loudly when the catalog's repository does not hold a
// new point's snapshots: the catalog and the data movers were given
// different repositories, so retention could not free the snapshots'
// space and a rebuild from the movers' repository would miss the point.
func (s *Service) checkArtifacts(ctx context.Context, p RestorePoint) {
	var missing []string
	for _, a := range p.Artifacts {
		ok, err := s.cfg.Repository.HasSnapshot(ctx, string(a.ManifestID))
		if err != nil {
			s.cfg.Logger.Warn("checking a new point's snapshots in the repository", "id", p.ID, "err", err)
			return
		}
		if !ok {
			missing = append(missing, a.Name+"="+string(a.ManifestID))
		}
	}
	if len(missing) > 0 {
		s.cfg.Logger.Error("the catalog's repository does not hold this restore point's snapshots: give the catalog and the data movers the same repository (TIDEMARK_REPOSITORY_PATH and password), or retention cannot free their space and a rebuild will miss the point",
			"id", p.ID, "application", p.Application, "missing", missing)
	}
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
		arts = append(arts, events.Artifact{Name: a.Name, Kind: a.Kind, ManifestID: a.ManifestID, Bytes: a.Bytes, Files: a.Files, Consistency: a.Consistency})
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

// Package coordinator runs the backup saga: it turns a backup request into a
// run, drives the run's steps through the hookrunner, snapshotter, datamover
// and catalog only by events, and guarantees that every owed inverse step
// (an unlock, a scale back up) runs after any failure, including its own
// crash.
//
// The durable state of a run lives in the runs bucket and is written with
// compare-and-set on its revision. Every transition is computed in memory
// (saga), persisted, and only then are its commands published, so a
// command's intent and the inverse it implies exist before the command does.
// Any coordinator instance may apply a result to a run: compare-and-set
// serializes them. Each run also has exactly one owner at a time, named by a
// lease; the owner keeps the run's clock (step deadlines, the freeze
// deadline, retries) and, when another instance dies, a survivor takes its
// leases and resumes or compensates its runs.
package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/application"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
)

// Name is the service's name in `tidemark serve --services`.
const Name = "coordinator"

// Bus is what the coordinator needs of the bus.
type Bus interface {
	bus.Publisher
	bus.Consumer
	bus.KeyValues
	bus.VersionedKeyValues
	// ObjectStores: a backup on Kubernetes puts the application's
	// captured objects in the dumps bucket.
	bus.ObjectStores
}

// Config configures a coordinator. Zero values take the defaults below.
type Config struct {
	// InstanceID names this coordinator among its peers; it must be unique
	// among live instances.
	InstanceID string
	// Apps resolves application names.
	Apps application.Source
	// BlueprintDir resolves relative blueprint file names.
	BlueprintDir string
	Logger       *slog.Logger
	Now          func() time.Time
	// Source is the CloudEvents source of what the coordinator publishes.
	Source string
	// Repository names the repository exports go to.
	Repository string
	// AnswerGrace is added to a step's own timeout before the coordinator
	// gives up waiting for its answer (the hookrunner enforces the timeout
	// itself; this covers a lost hookrunner or a lost answer).
	AnswerGrace time.Duration
	// RetryBackoff is the first pause before a retry, doubling after.
	RetryBackoff time.Duration
	// InverseAttempts and InverseTimeout bound each inverse step (at least;
	// a blueprint may ask for more attempts).
	InverseAttempts int
	InverseTimeout  time.Duration
	// ExportAttempts and ExportTimeout bound each volume export.
	ExportAttempts int
	ExportTimeout  time.Duration
	// CleanupTimeout bounds a snapshot deletion.
	CleanupTimeout time.Duration
	// BackgroundRetry is the first pause before an inverse that failed all
	// its attempts is tried again; it doubles up to BackgroundRetryMax.
	BackgroundRetry    time.Duration
	BackgroundRetryMax time.Duration
	// LeaseTTL is how long an instance counts as alive after its last
	// heartbeat; its runs are taken over after that.
	LeaseTTL time.Duration
	// Recheck bounds how long an owner goes without looking at a run it
	// owns (another instance may have moved it).
	Recheck time.Duration
	// Tick is the resolution of the owner's clock.
	Tick time.Duration
	// Concurrency is how many events are handled at once.
	Concurrency int
}

func (c *Config) defaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Source == "" {
		c.Source = "/tidemark/coordinator"
	}
	if c.Repository == "" {
		c.Repository = "default"
	}
	setDefault(&c.AnswerGrace, 5*time.Second)
	setDefault(&c.RetryBackoff, time.Second)
	if c.InverseAttempts <= 0 {
		c.InverseAttempts = 3
	}
	setDefault(&c.InverseTimeout, 30*time.Second)
	if c.ExportAttempts <= 0 {
		c.ExportAttempts = 3
	}
	setDefault(&c.ExportTimeout, 12*time.Hour)
	setDefault(&c.CleanupTimeout, 2*time.Minute)
	setDefault(&c.BackgroundRetry, 30*time.Second)
	setDefault(&c.BackgroundRetryMax, 10*time.Minute)
	setDefault(&c.LeaseTTL, 10*time.Second)
	setDefault(&c.Recheck, 5*time.Second)
	setDefault(&c.Tick, 50*time.Millisecond)
	if c.Concurrency <= 0 {
		c.Concurrency = 16
	}
}

func setDefault(d *time.Duration, v time.Duration) {
	if *d <= 0 {
		*d = v
	}
}

// Service is a coordinator instance.
type Service struct {
	cfg         Config
	bus         Bus
	incarnation string

	runs, leases bus.VersionedKV
	hooks        bus.KV
	snapResults  *bus.Results

	blueprints blueprintCache
	sources    storedBlueprints
	locks      [64]sync.Mutex
	// cache holds the last revision of each run this instance wrote, with
	// the run decoded, so a transition costs one compare-and-set instead of
	// a read, a decode and a write. Another instance's write makes it
	// stale; the compare-and-set then fails and the run is read again.
	// An entry is taken out while a transition works on it and put back
	// only once written, so a failed transition never leaves a half-changed
	// run behind.
	cache sync.Map // events.RunID -> cachedRun

	mu    sync.Mutex
	owned map[events.RunID]time.Time // run -> when it next needs its owner
	// leaseRevs holds the revision of each run lease this instance wrote.
	leaseRevs map[events.RunID]uint64
}

// New returns a coordinator.
func New(cfg Config, b Bus) (*Service, error) {
	if b == nil {
		return nil, errors.New("coordinator: a bus is required")
	}
	if cfg.InstanceID == "" {
		return nil, errors.New("coordinator: InstanceID is required (it names the owner of each run)")
	}
	if cfg.Apps == nil {
		return nil, errors.New("coordinator: Apps is required (where applications are defined)")
	}
	cfg.defaults()
	return &Service{cfg: cfg, bus: b, incarnation: uuid.Must(uuid.NewV7()).String(), owned: map[events.RunID]time.Time{}, leaseRevs: map[events.RunID]uint64{}}, nil
}

// Run coordinates runs until ctx is done. Runs it owns are left to the
// instance that takes them over (or to itself, restarted).
func (s *Service) Run(ctx context.Context) error {
	var err error
	if s.runs, err = s.bus.VersionedKeyValue(ctx, bus.BucketRuns); err != nil {
		return ignoreCancel(ctx, err)
	}
	if s.leases, err = s.bus.VersionedKeyValue(ctx, bus.BucketLeases); err != nil {
		return ignoreCancel(ctx, err)
	}
	if s.hooks, err = s.bus.KeyValue(ctx, bus.BucketHooks); err != nil {
		return ignoreCancel(ctx, err)
	}
	snapKV, err := s.bus.KeyValue(ctx, bus.BucketSnapshots)
	if err != nil {
		return ignoreCancel(ctx, err)
	}
	// The snapshotter's result store (see services/snapshotter).
	s.snapResults = bus.NewResults(snapKV, "result")
	if err := s.heartbeat(ctx); err != nil {
		return ignoreCancel(ctx, err)
	}
	if w, ok := s.cfg.Apps.(interface{ Warm() (int, error) }); ok {
		n, err := w.Warm()
		if err != nil {
			s.cfg.Logger.Warn("some application files are not valid; backups of what they define are rejected until they are fixed", "err", err)
		}
		s.cfg.Logger.Info("applications read", "count", n)
	}
	// Take over the runs of dead instances (this one's previous life
	// included) before handling any answer: a run left inside the freeze
	// must be compensated, not carried on by whichever answer comes first.
	s.scan(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	wg.Go(func() { s.livenessLoop(ctx) })
	wg.Go(func() { s.clockLoop(ctx) })
	wg.Go(func() { errs <- s.bus.Consume(ctx, commandConsumer(), s.handleCommand) })
	wg.Go(func() { errs <- s.bus.Consume(ctx, s.resultConsumer(), s.handleResult) })
	wg.Go(func() { errs <- s.bus.Consume(ctx, deadLetterConsumer(), s.handleResult) })
	wg.Wait()
	close(errs)
	var all []error
	for e := range errs {
		all = append(all, e)
	}
	return errors.Join(all...)
}

func ignoreCancel(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func commandConsumer() bus.ConsumerSpec {
	var subjects []string
	for _, p := range []events.Payload{events.BackupRequested{}, events.RestoreRequested{}, events.RunCancelRequested{}} {
		d, _ := events.Lookup(p.EventType())
		subjects = append(subjects, d.Subject())
	}
	return bus.ConsumerSpec{Name: "coordinator", Stream: bus.StreamCoordinatorCommands, FilterSubjects: subjects, AckWait: 30 * time.Second, MaxDeliver: 10, Concurrency: 16}
}

// resultTypes are the answers a run waits for.
var resultTypes = []events.Payload{
	events.HookSucceeded{}, events.HookFailed{}, events.HookReleased{},
	events.SnapshotReady{}, events.SnapshotFailed{}, events.SnapshotDeleted{},
	events.VolumeExported{}, events.VolumeExportFailed{},
	events.RestorePointRecorded{},
	events.VolumeImported{}, events.VolumeImportFailed{},
}

func (s *Service) resultConsumer() bus.ConsumerSpec {
	var subjects []string
	for _, p := range resultTypes {
		d, _ := events.Lookup(p.EventType())
		subjects = append(subjects, d.Subject())
	}
	return bus.ConsumerSpec{Name: "coordinator-results", Stream: bus.StreamEvents, FilterSubjects: subjects, AckWait: 30 * time.Second, MaxDeliver: 20, Concurrency: s.cfg.Concurrency}
}

func deadLetterConsumer() bus.ConsumerSpec {
	return bus.ConsumerSpec{Name: "coordinator-deadletters", Stream: bus.StreamDeadLetter, FilterSubjects: []string{events.DeadLetterSubjectPrefix + ">"}, AckWait: 30 * time.Second, MaxDeliver: 20, Concurrency: 2}
}

// --- keys -----------------------------------------------------------------

func runKey(id events.RunID) string   { return "run." + string(id) }
func appKey(app string) string        { return bus.KeyFor("app", app) }
func leaseKey(id events.RunID) string { return "run." + string(id) }
func instanceKey(id string) string    { return "instance." + id }
func (s *Service) lock(id events.RunID) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(id))
	return &s.locks[h.Sum32()%uint32(len(s.locks))]
}

// runIDNamespace derives a run's id from its request's event id, so a
// redelivered request finds the run it already started.
var runIDNamespace = uuid.MustParse("6f1c2a9e-3b7d-4e58-9a0c-2d4b6e8f1a35")

// --- handlers -------------------------------------------------------------

func (s *Service) handleCommand(ctx context.Context, ev events.Event) ([]events.Event, error) {
	switch p := ev.Data.(type) {
	case events.BackupRequested:
		return s.startBackup(ctx, ev, p)
	case events.RestoreRequested:
		return nil, s.startRestore(ctx, ev, p)
	case events.RunCancelRequested:
		err := s.update(ctx, p.RunID, false, func(sg *saga) { sg.cause = ev.ID; sg.cancel(p.RequestedBy, p.Reason) })
		if errors.Is(err, bus.ErrKeyNotFound) {
			s.cfg.Logger.Warn("cancel of an unknown run ignored", "run", p.RunID)
			return nil, nil
		}
		return nil, err
	}
	return nil, bus.Permanentf("coordinator: unexpected %s", ev.Type())
}

func (s *Service) reject(ev events.Event, req events.BackupRequested, running events.RunID, reason string) []events.Event {
	s.cfg.Logger.Warn("backup rejected", "application", req.Application, "reason", reason)
	return []events.Event{{Subject: req.Application, Data: events.BackupRejected{Application: req.Application, Reason: reason, RunningRunID: running, RequestedBy: req.RequestedBy}}}
}

func (s *Service) startBackup(ctx context.Context, ev events.Event, req events.BackupRequested) ([]events.Event, error) {
	id := events.RunID(uuid.NewSHA1(runIDNamespace, []byte(ev.ID)).String())
	if _, err := s.runs.Entry(ctx, runKey(id)); err == nil {
		// A redelivered request: the run exists; make sure its first
		// commands went out.
		return nil, s.update(ctx, id, true, func(*saga) {})
	} else if !errors.Is(err, bus.ErrKeyNotFound) {
		return nil, err
	}
	app, err := s.cfg.Apps.Application(req.Application)
	if err != nil {
		return s.reject(ev, req, "", fmt.Sprintf("application %s: %v", req.Application, err)), nil
	}
	ref := req.Blueprint
	if ref == "" {
		ref = app.Spec.Blueprint
	}
	source, bp, err := s.blueprints.load(ref, s.cfg.BlueprintDir)
	if err != nil {
		return s.reject(ev, req, "", err.Error()), nil
	}
	digest, err := s.storeBlueprint(ctx, source)
	if err != nil {
		return nil, err
	}
	info, err := appInfo(app, bp)
	if err != nil {
		return s.reject(ev, req, "", err.Error()), nil
	}
	// Before any step acts (a scale step has not stopped the workload) and
	// before the run's clock starts: capturing takes seconds.
	captured, captureNote := s.captureManifests(ctx, id, req.Application)
	// After the application is resolved (on Kubernetes, seconds of
	// discovery): the run's clock starts here, and with it the freeze
	// window its quiesce steps are measured from.
	now := s.cfg.Now()
	maxFreeze := bp.MaxFreeze()
	if req.MaxFreeze != nil {
		if req.MaxFreeze.Std() <= 0 {
			return s.reject(ev, req, "", fmt.Sprintf("maxFreeze %s must be positive", req.MaxFreeze)), nil
		}
		maxFreeze = req.MaxFreeze.Std()
	}
	running, claim, err := s.claimApplication(ctx, req.Application, id)
	if err != nil {
		return nil, err
	} else if running != "" {
		return s.reject(ev, req, running, fmt.Sprintf("a backup or restore to production of %s is already running (run %s); this request was rejected, not queued", req.Application, running)), nil
	}
	r := &Run{
		ID: id, Kind: "backup", Application: req.Application, Blueprint: bp.Metadata.Name,
		BlueprintDigest: digest, Request: req, App: info, Time: now.UTC().Truncate(time.Second),
		MaxFreeze: events.Duration(maxFreeze), CreatedAt: now.UTC(), UpdatedAt: now.UTC(), ClaimRevision: claim,
	}
	if err := s.takeLease(ctx, id); err != nil {
		return nil, err
	}
	s.own(id)
	if captured {
		// Exported with the run's dumps: startExports stores every
		// artifact named here from the dumps bucket.
		r.Artifacts = append(r.Artifacts, kube.ManifestArtifact)
	}
	sg := &saga{r: r, bp: bp, now: now, cfg: &s.cfg, holders: s.holderLookup(ctx), cause: ev.ID}
	sg.start()
	if captureNote != "" {
		r.log(now, "%s", captureNote)
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	// Held until the first commands are out: their answers are handled
	// under the same lock, so none of them works on r while it is read here.
	mu := s.lock(id)
	mu.Lock()
	defer mu.Unlock()
	rev, err := s.runs.Create(ctx, runKey(id), raw)
	if err != nil {
		if errors.Is(err, bus.ErrConflict) {
			return nil, nil
		}
		return nil, err
	}
	s.schedule(r)
	// Once cached, r belongs to the transitions of the run: the answers to
	// the commands published below may arrive before this returns.
	s.cache.Store(id, cachedRun{entry: bus.Entry{Key: runKey(id), Value: raw, Revision: rev}, run: r})
	s.cfg.Logger.Info("backup accepted", "run", id, "application", req.Application, "blueprint", r.Blueprint)
	return nil, s.publish(ctx, sg.out)
}

// holdsApplication says whether r still acts on its application. A backup
// whose restore point is recorded only deletes its own snapshots: the next
// run of the application need not wait for that.
func (r *Run) holdsApplication() bool {
	if r.Status.Terminal() {
		return false
	}
	if r.Kind == KindBackup {
		if rec := r.task("record"); rec != nil && rec.State == TaskSucceeded {
			return false
		}
	}
	return true
}

// claimApplication records run as the application's running backup. It
// returns the run already holding it, if one does, else the revision of the
// claim, with which the run gives it back (releaseApplication).
func (s *Service) claimApplication(ctx context.Context, app string, run events.RunID) (events.RunID, uint64, error) {
	for range 10 {
		rev, err := s.runs.Create(ctx, appKey(app), []byte(run))
		if err == nil {
			return "", rev, nil
		}
		if !errors.Is(err, bus.ErrConflict) {
			return "", 0, err
		}
		e, err := s.runs.Entry(ctx, appKey(app))
		if errors.Is(err, bus.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return "", 0, err
		}
		holder := events.RunID(e.Value)
		if holder == run {
			return "", e.Revision, nil
		}
		other, err := s.load(ctx, holder)
		if err == nil && other.holdsApplication() {
			return holder, 0, nil
		}
		if err != nil && !errors.Is(err, bus.ErrKeyNotFound) {
			return "", 0, err
		}
		// The recorded run ended (or never got written): take its place.
		if rev, err := s.runs.Update(ctx, appKey(app), []byte(run), e.Revision); err == nil {
			return "", rev, nil
		} else if !errors.Is(err, bus.ErrConflict) {
			return "", 0, err
		}
	}
	return "", 0, errors.New("coordinator: application claim kept changing under us; retrying")
}

// releaseApplication gives back r's claim on its application, if it still
// holds it. The claim's revision, when the run recorded it, makes that one
// conditional delete; a claim changed since is someone else's.
func (s *Service) releaseApplication(ctx context.Context, r *Run) {
	if r.ClaimRevision != 0 {
		if err := s.runs.DeleteAt(ctx, appKey(r.Application), r.ClaimRevision); err == nil || errors.Is(err, bus.ErrKeyNotFound) {
			return
		}
	}
	e, err := s.runs.Entry(ctx, appKey(r.Application))
	if err != nil || events.RunID(e.Value) != r.ID {
		return
	}
	_ = s.runs.DeleteAt(ctx, appKey(r.Application), e.Revision)
}

// runOf names the run an answer belongs to.
func runOf(ev events.Event) events.RunID {
	switch p := ev.Data.(type) {
	case events.HookSucceeded:
		return p.RunID
	case events.HookFailed:
		return p.RunID
	case events.HookReleased:
		return p.RunID
	case events.SnapshotReady:
		return p.RunID
	case events.SnapshotFailed:
		return p.RunID
	case events.SnapshotDeleted:
		return p.RunID
	case events.VolumeExported:
		return p.RunID
	case events.VolumeExportFailed:
		return p.RunID
	case events.RestorePointRecorded:
		return p.RunID
	case events.VolumeImported:
		return p.RunID
	case events.VolumeImportFailed:
		return p.RunID
	}
	if ev.CorrelationID != "" {
		return events.RunID(ev.CorrelationID)
	}
	return events.RunID(ev.Subject)
}

func (s *Service) handleResult(ctx context.Context, ev events.Event) ([]events.Event, error) {
	id := runOf(ev)
	if id == "" {
		return nil, nil
	}
	err := s.update(ctx, id, true, func(sg *saga) { sg.cause = ev.ID; sg.apply(ev) })
	if errors.Is(err, bus.ErrKeyNotFound) {
		// Not a run of ours (a service driven directly, or a run long gone).
		return nil, nil
	}
	return nil, err
}

// --- the transition loop ----------------------------------------------------

func (s *Service) load(ctx context.Context, id events.RunID) (*Run, error) {
	e, err := s.runs.Entry(ctx, runKey(id))
	if err != nil {
		return nil, err
	}
	var r Run
	if err := json.Unmarshal(e.Value, &r); err != nil {
		return nil, fmt.Errorf("run %s: stored state does not decode: %w", id, err)
	}
	return &r, nil
}

// update applies fn to the run under compare-and-set, persists the result,
// then publishes what it produced. With republish, an input that changed
// nothing (a redelivery) publishes the run's outstanding commands again: a
// crash between persisting and publishing must not strand them. Their ids
// are deterministic, so JetStream drops copies it already has.
func (s *Service) update(ctx context.Context, id events.RunID, republish bool, fn func(*saga)) error {
	mu := s.lock(id)
	mu.Lock()
	defer mu.Unlock()
	for attempt := range 20 {
		var e bus.Entry
		var r *Run
		cached := false
		if c, ok := s.cache.LoadAndDelete(id); ok && attempt == 0 {
			e, r, cached = c.(cachedRun).entry, c.(cachedRun).run, true
		} else {
			var err error
			if e, err = s.runs.Entry(ctx, runKey(id)); err != nil {
				return err
			}
			r = new(Run)
			if err := json.Unmarshal(e.Value, r); err != nil {
				return bus.Permanent(fmt.Errorf("run %s: stored state does not decode: %w", id, err))
			}
		}
		bp, err := s.runBlueprint(ctx, r)
		if errors.Is(err, errBlueprintUnavailable) {
			return err
		}
		if err != nil {
			if r.Status.Terminal() {
				return nil // refused before it had a blueprint: nothing to do
			}
			return bus.Permanent(fmt.Errorf("run %s: %w", id, err))
		}
		wasTerminal := r.Status.Terminal()
		sg := &saga{r: r, bp: bp, now: s.cfg.Now(), cfg: &s.cfg, holders: s.holderLookup(ctx), snapshots: s.snapshotLookup(ctx)}
		fn(sg)
		before := r.UpdatedAt
		r.UpdatedAt = sg.now.UTC()
		after, err := json.Marshal(r)
		if err != nil {
			return err
		}
		if sameRunState(after, e.Value) {
			r.UpdatedAt = before
			if cached {
				// "Nothing to do" is only true of the latest state: another
				// instance may have moved the run past what this one saw.
				continue
			}
			if !r.Status.Terminal() {
				s.cache.Store(id, cachedRun{entry: e, run: r})
			}
			if republish {
				return s.publish(ctx, outstanding(r, sg, s.cfg.Now().Add(-republishWindow)))
			}
			s.schedule(r)
			return nil
		}
		rev, err := s.runs.Update(ctx, runKey(id), after, e.Revision)
		if errors.Is(err, bus.ErrConflict) {
			continue
		} else if err != nil {
			return err
		}
		if !r.Status.Terminal() {
			s.cache.Store(id, cachedRun{entry: bus.Entry{Key: runKey(id), Value: after, Revision: rev}, run: r})
		}
		if err := s.publish(ctx, sg.out); err != nil {
			return err
		}
		if !wasTerminal && r.Status.Terminal() {
			s.finished(ctx, r)
		}
		s.schedule(r)
		return nil
	}
	return fmt.Errorf("coordinator: run %s kept changing concurrently; will retry", id)
}

// cachedRun is a run as this instance last wrote it: the stored entry and
// the same state decoded. Only a transition holding the run's lock uses it.
type cachedRun struct {
	entry bus.Entry
	run   *Run
}

// sameRunState reports whether two encodings of a run differ at most in
// updatedAt, the first field of a Run (see Run): what follows the first
// comma is the rest of the state, since a timestamp holds no comma. A record
// written with another field order compares as changed, which costs one
// write.
func sameRunState(a, b []byte) bool {
	const prefix = `{"updatedAt":`
	if !bytes.HasPrefix(a, []byte(prefix)) || !bytes.HasPrefix(b, []byte(prefix)) {
		return false
	}
	i, j := bytes.IndexByte(a, ','), bytes.IndexByte(b, ',')
	return i > 0 && j > 0 && bytes.Equal(a[i:], b[j:])
}

// republishWindow is how far back an unanswered command is published again
// on a redelivery: well inside the streams' 10-minute duplicate window, so a
// copy that did go out is dropped, and a long export is never started twice.
const republishWindow = 5 * time.Minute

// outstanding returns the commands of tasks still waiting for an answer
// that were sent after since, and the run's terminal fact.
func outstanding(r *Run, sg *saga, since time.Time) []events.Event {
	var out []events.Event
	for _, t := range r.Tasks {
		if t.State != TaskSent || t.SentAt.Before(since) {
			continue
		}
		p, err := events.DecodePayload(t.Type, t.Command)
		if err != nil {
			continue
		}
		ev := events.New(sg.cfg.Source, string(r.ID), p, t.SentAt)
		ev.ID, ev.CorrelationID = t.CommandID, string(r.ID)
		out = append(out, ev)
	}
	return out
}

func (s *Service) publish(ctx context.Context, evs []events.Event) error {
	for _, ev := range evs {
		if _, err := s.bus.Publish(ctx, ev); err != nil {
			if ctx.Err() == nil {
				s.cfg.Logger.Error("publishing failed; the triggering message will be redelivered", "type", ev.Type(), "subject", ev.Subject, "err", err)
			}
			return fmt.Errorf("publishing %s: %w", ev.Type(), err)
		}
	}
	return nil
}

// finished runs once when a run ends.
func (s *Service) finished(ctx context.Context, r *Run) {
	s.releaseApplication(ctx, r)
	if r.Kind == KindBackup && r.Status != StatusCompleted && slices.Contains(r.Artifacts, kube.ManifestArtifact) {
		// The captured objects hold the application's Secrets; an
		// exported copy the data mover already deleted.
		s.discardManifests(ctx, r.ID)
	}
	s.cfg.Logger.Info("run ended", "run", r.ID, "application", r.Application, "status", r.Status, "cause", r.Cause, "freeze", r.FreezeWindow())
}

// holderLookup reads the hold record the hookrunner writes before it takes
// a lock.
func (s *Service) holderLookup(ctx context.Context) HolderLookup {
	return func(run events.RunID, step string) (string, bool, error) {
		raw, err := s.hooks.Get(ctx, bus.KeyFor("hold", string(run)+"\x00"+step))
		if errors.Is(err, bus.ErrKeyNotFound) {
			return "", false, nil
		}
		if err != nil {
			return "", false, err
		}
		var st struct {
			Holder string `json:"holder"`
			State  string `json:"state"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return "", false, err
		}
		if st.State != "holding" || st.Holder == "" {
			return "", false, nil
		}
		return st.Holder, true, nil
	}
}

// snapshotLookup reads the snapshotter's stored answer to a request.
func (s *Service) snapshotLookup(ctx context.Context) SnapshotLookup {
	return func(key string) (events.SnapshotReady, bool, error) {
		p, ok, err := s.snapResults.Load(ctx, key)
		if err != nil || !ok {
			return events.SnapshotReady{}, false, err
		}
		ready, isReady := p.(events.SnapshotReady)
		return ready, isReady, nil
	}
}

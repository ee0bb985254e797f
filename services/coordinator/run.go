package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/application"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"github.com/tidemark-dev/tidemark/pkg/bus"
)

// Status is where a run is in its life.
type Status string

const (
	// StatusRunning: steps are going forward.
	StatusRunning Status = "running"
	// StatusCompensating: something failed (or the run was cancelled) and
	// the owed inverse steps are running, newest first.
	StatusCompensating Status = "compensating"
	StatusCompleted    Status = "completed"
	StatusFailed       Status = "failed"
	StatusCancelled    Status = "cancelled"
)

// Terminal reports whether the run has ended.
func (s Status) Terminal() bool {
	return s == StatusCompleted || s == StatusFailed || s == StatusCancelled
}

// Stage is the part of the plan a running run is in.
type Stage string

const (
	// StageSteps runs the action's steps in order (quiesce steps before the
	// snapshot, other steps after the thaw).
	StageSteps Stage = "steps"
	// StageSnapshot waits for the snapshot barrier.
	StageSnapshot Stage = "snapshot"
	// StageThaw runs the quiesce steps' inverses, newest first.
	StageThaw Stage = "thaw"
	// StageLiveExport exports the volumes that have no snapshot (read
	// live) while the application is still quiesced.
	StageLiveExport Stage = "live-export"
	// StageExport moves every snapshot and dump into the repository.
	StageExport Stage = "export"
	// StageCheck opens every artifact of a restore in the repository
	// before any step runs (a restore's pre-flight).
	StageCheck Stage = "check"
	// StageImport restores a restore point's volumes (a restore's barrier).
	StageImport Stage = "import"
	// StageRecord waits for the catalog to record the restore point.
	StageRecord Stage = "record"
	// StageCompensate runs owed inverses after a failure.
	StageCompensate Stage = "compensate"
	// StageCleanup deletes what a failed run left (its snapshots).
	StageCleanup Stage = "cleanup"
	StageDone    Stage = "done"
)

// TaskState is where one command is.
type TaskState string

const (
	// TaskSent: the intent is persisted and the command published (or about
	// to be: a crash in between is repaired by publishing it again).
	TaskSent TaskState = "sent"
	// TaskWaiting: a failed attempt waits for its retry.
	TaskWaiting   TaskState = "waiting"
	TaskSucceeded TaskState = "succeeded"
	TaskFailed    TaskState = "failed"
	// TaskAbandoned: the run stopped waiting for it (it failed meanwhile);
	// a late answer is cleaned up (a late lock released, a late snapshot
	// deleted).
	TaskAbandoned TaskState = "abandoned"
)

// Task roles.
const (
	RoleStep     = "step"
	RoleSnapshot = "snapshot"
	RoleInverse  = "inverse"
	RoleExport   = "export"
	RoleImport   = "import"
	RoleCheck    = "check"
	RoleCleanup  = "cleanup"
	RoleRecord   = "record"
)

// Task is one command of a run: its intent, persisted before it is sent,
// and what came back.
type Task struct {
	// Key names the task within the run: "step/lock", "inverse/lock",
	// "export/data", "cleanup/snapshots", "record".
	Key string `json:"key"`
	// Name is what users see: the step's name, or the inverse's.
	Name string `json:"name"`
	Role string `json:"role"`
	// Type and Command are the command as published; Command is kept so a
	// command whose publication is in doubt can be sent again verbatim.
	Type      events.Type     `json:"type"`
	Command   json.RawMessage `json:"command"`
	CommandID string          `json:"commandId"`
	Attempt   int             `json:"attempt"`
	// MaxAttempts and Backoff say how a failed attempt is retried.
	MaxAttempts int             `json:"maxAttempts"`
	Backoff     events.Duration `json:"backoff,omitempty"`
	Timeout     events.Duration `json:"timeout"`
	State       TaskState       `json:"state"`
	SentAt      time.Time       `json:"sentAt"`
	// Deadline is when the coordinator stops waiting for an answer: the
	// step's own timeout plus a grace for the answer to travel.
	Deadline time.Time         `json:"deadline"`
	RetryAt  *time.Time        `json:"retryAt,omitempty"`
	DoneAt   *time.Time        `json:"doneAt,omitempty"`
	Outputs  map[string]string `json:"outputs,omitempty"`
	// Holding and Holder: a step whose session holds a lock, and the
	// hookrunner instance holding it.
	Holding bool   `json:"holding,omitempty"`
	Holder  string `json:"holder,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Owed is one entry of the compensation stack: the inverse a step implies,
// pushed when the step is sent, not when it succeeds.
type Owed struct {
	// Step names the forward step the inverse undoes.
	Step string `json:"step"`
	// Index is the step's position in the action.
	Index int `json:"index"`
	// Release is set for a held session: the inverse is a release routed
	// to the holder.
	Release bool `json:"release,omitempty"`
	// Inverse is the rendered inverse step, when the step has one that did
	// not need the step's own outputs.
	Inverse *blueprint.RenderedStep `json:"inverse,omitempty"`
	// Deferred: the inverse is rendered from the step's outputs once known.
	Deferred bool `json:"deferred,omitempty"`
}

// AppInfo is what the run needs of the application, fixed when the run
// starts so a file edited mid-run cannot change a run's plan.
type AppInfo struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace,omitempty"`
	Volumes   map[string]string `json:"volumes,omitempty"`
	Params    map[string]string `json:"params,omitempty"`
	Targets   []string          `json:"targets,omitempty"`
	// Platform is the platform's part of the template context
	// (.StatefulSet, .Deployment, .Object on Kubernetes), fixed when the
	// run starts so every transition, on whichever coordinator, renders
	// the same steps, even after a scale step took the pods away.
	Platform *application.PlatformContext `json:"platform,omitempty"`
}

// Event is one line of a run's history, for `tidemark runs show`.
type Event struct {
	At      time.Time `json:"at"`
	Message string    `json:"message"`
}

// Run is the durable state of one backup run, kept in the runs bucket and
// written with compare-and-set on its revision.
type Run struct {
	// UpdatedAt comes first: a transition tells a changed run from an
	// unchanged one by comparing the encodings after it (sameRunState).
	UpdatedAt   time.Time    `json:"updatedAt"`
	ID          events.RunID `json:"id"`
	Kind        string       `json:"kind"`
	Application string       `json:"application"`
	Blueprint   string       `json:"blueprint"`
	// BlueprintDigest names the blueprint file as read when the run
	// started, stored apart (see runBlueprint); every step of the run
	// renders from it.
	BlueprintDigest string `json:"blueprintDigest,omitempty"`
	// BlueprintSource is the blueprint itself, in runs written before
	// sources were stored apart.
	BlueprintSource []byte                 `json:"blueprintSource,omitempty"`
	Request         events.BackupRequested `json:"request"`
	App             AppInfo                `json:"app"`
	Status          Status                 `json:"status"`
	Stage           Stage                  `json:"stage"`
	// Cursor is the index of the action step being run.
	Cursor int `json:"cursor"`
	// Time is the run's .Time in templates.
	Time      time.Time       `json:"time"`
	MaxFreeze events.Duration `json:"maxFreeze"`
	// The freeze: from the first quiesce step sent to the last thaw done.
	FreezeStart    *time.Time `json:"freezeStart,omitempty"`
	FreezeDeadline *time.Time `json:"freezeDeadline,omitempty"`
	FreezeEnd      *time.Time `json:"freezeEnd,omitempty"`
	// HeldFor is the longest lock a hookrunner reported holding.
	HeldFor   events.Duration         `json:"heldFor,omitempty"`
	Tasks     []*Task                 `json:"tasks"`
	Owed      []Owed                  `json:"owed,omitempty"`
	Snapshots []events.VolumeSnapshot `json:"snapshots,omitempty"`
	// SnapshotsDeleted is true once the snapshotter confirmed the deletion.
	SnapshotsDeleted bool     `json:"snapshotsDeleted,omitempty"`
	Artifacts        []string `json:"artifacts,omitempty"`
	// Cause is the first failure, in words a user can act on.
	Cause         string                `json:"cause,omitempty"`
	FailedStep    string                `json:"failedStep,omitempty"`
	CancelledBy   string                `json:"cancelledBy,omitempty"`
	Compensations []events.Compensation `json:"compensations,omitempty"`
	// Unresolved lists inverses that failed every retry; the owner keeps
	// retrying them in the background.
	Unresolved     []Unresolved          `json:"unresolved,omitempty"`
	RestorePointID events.RestorePointID `json:"restorePointId,omitempty"`
	// Restore holds what a restore run restores and where.
	Restore       *RestorePlan `json:"restore,omitempty"`
	BytesRead     int64        `json:"bytesRead,omitempty"`
	BytesUploaded int64        `json:"bytesUploaded,omitempty"`
	CreatedAt     time.Time    `json:"createdAt"`
	// ClaimRevision is the revision of the run's claim on its application
	// (a backup, or a restore to production), which it deletes when it ends.
	ClaimRevision uint64     `json:"claimRevision,omitempty"`
	FinishedAt    *time.Time `json:"finishedAt,omitempty"`
	History       []Event    `json:"history,omitempty"`
}

// Run kinds.
const (
	KindBackup  = "backup"
	KindRestore = "restore"
)

// RestorePlan is what a restore run restores and where.
type RestorePlan struct {
	Target events.RestoreTarget `json:"target"`
	// Replace: the volumes' directories are replaced (staged, verified,
	// swapped in, the previous contents kept): production, or --force.
	Replace bool `json:"replace,omitempty"`
	// Artifacts are the point's volumes and dumps being restored (after
	// --only), with what the backup recorded of each, to verify against.
	Artifacts []RestoreArtifact `json:"artifacts"`
	// BackupSteps and BackupTime are what the backup recorded: the restore
	// action's .Backup.
	BackupSteps map[string]map[string]string `json:"backupSteps,omitempty"`
	BackupTime  time.Time                    `json:"backupTime"`
	// BytesRestored adds up what the imports wrote.
	BytesRestored int64 `json:"bytesRestored,omitempty"`
}

// RestoreArtifact is one volume or dump of a restore point.
type RestoreArtifact struct {
	Name       string            `json:"name"`
	Kind       string            `json:"kind"` // volume or dump
	ManifestID events.ManifestID `json:"manifestId"`
	Files      int64             `json:"files,omitempty"`
	Bytes      int64             `json:"bytes"`
	// Location is where a volume is restored to.
	Location string `json:"location,omitempty"`
	// Previous is where a production restore kept what Location held.
	Previous string `json:"previous,omitempty"`
}

// artifact returns the named artifact of the plan, or nil.
func (p *RestorePlan) artifact(name string) *RestoreArtifact {
	for i := range p.Artifacts {
		if p.Artifacts[i].Name == name {
			return &p.Artifacts[i]
		}
	}
	return nil
}

// Unresolved is an inverse that failed all its retries after the run ended.
type Unresolved struct {
	Task    string    `json:"task"`
	RetryAt time.Time `json:"retryAt"`
	Rounds  int       `json:"rounds"`
}

// task returns the task with key, or nil.
func (r *Run) task(key string) *Task {
	for _, t := range r.Tasks {
		if t.Key == key {
			return t
		}
	}
	return nil
}

// taskByCommand returns the task whose current attempt is the command id.
func (r *Run) taskByCommand(id string) *Task {
	if id == "" {
		return nil
	}
	for _, t := range r.Tasks {
		if t.CommandID == id {
			return t
		}
	}
	return nil
}

// inFlight reports whether any task of the given roles has not ended.
func (r *Run) inFlight(roles ...string) bool {
	for _, t := range r.Tasks {
		if t.State != TaskSent && t.State != TaskWaiting {
			continue
		}
		for _, role := range roles {
			if t.Role == role {
				return true
			}
		}
	}
	return false
}

// Frozen reports whether the application is (or may be) quiesced: a
// quiesce step was sent and the thaw has not finished.
func (r *Run) Frozen() bool { return r.FreezeStart != nil && r.FreezeEnd == nil }

// snapshotsComplete reports whether the snapshot barrier has passed.
func (r *Run) snapshotsComplete() bool {
	t := r.snapshotTask()
	return t != nil && t.State == TaskSucceeded
}

// quiescedWorkDone reports whether everything that needs the application
// quiesced is done: the snapshots, and the exports of volumes read live.
func (r *Run) quiescedWorkDone() bool {
	return r.snapshotsComplete() && r.Stage != StageLiveExport
}

func (r *Run) snapshotTask() *Task {
	for _, t := range r.Tasks {
		if t.Role == RoleSnapshot {
			return t
		}
	}
	return nil
}

func (r *Run) log(now time.Time, format string, args ...any) {
	r.History = append(r.History, Event{At: now.UTC(), Message: fmt.Sprintf(format, args...)})
}

// FreezeWindow is how long the application was quiesced: the lock time a
// hookrunner measured when a session lock was held, else the coordinator's
// view from the first quiesce to the end of the thaw.
func (r *Run) FreezeWindow() time.Duration {
	if r.HeldFor > 0 {
		return r.HeldFor.Std()
	}
	if r.FreezeStart != nil && r.FreezeEnd != nil {
		return r.FreezeEnd.Sub(*r.FreezeStart)
	}
	return 0
}

// nextWake is when the run next needs attention from its owner, zero when
// it needs none (it waits only for answers with no deadline).
func (r *Run) nextWake() time.Time {
	var next time.Time
	consider := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if r.Status.Terminal() {
		for _, u := range r.Unresolved {
			consider(u.RetryAt)
		}
		for _, t := range r.Tasks {
			if t.State == TaskSent && t.Role == RoleInverse {
				consider(t.Deadline)
			}
		}
		return next
	}
	if r.Frozen() && r.FreezeDeadline != nil && !r.quiescedWorkDone() {
		consider(*r.FreezeDeadline)
	}
	for _, t := range r.Tasks {
		switch t.State {
		case TaskSent:
			consider(t.Deadline)
		case TaskWaiting:
			if t.RetryAt != nil {
				consider(*t.RetryAt)
			}
		}
	}
	return next
}

// LoadRun reads one run from the runs bucket.
func LoadRun(ctx context.Context, kv bus.KV, id events.RunID) (Run, error) {
	raw, err := kv.Get(ctx, runKey(id))
	if errors.Is(err, bus.ErrKeyNotFound) {
		return Run{}, fmt.Errorf("%w: no run %s (see `tidemark runs list`)", ErrRunNotFound, id)
	}
	if err != nil {
		return Run{}, err
	}
	var r Run
	if err := json.Unmarshal(raw, &r); err != nil {
		return Run{}, fmt.Errorf("run %s: stored state does not decode: %w", id, err)
	}
	return r, nil
}

// ListRuns reads every run, newest first.
func ListRuns(ctx context.Context, kv bus.KV) ([]Run, error) {
	keys, err := kv.Keys(ctx)
	if err != nil {
		return nil, err
	}
	var out []Run
	for _, k := range keys {
		id, ok := strings.CutPrefix(k, "run.")
		if !ok {
			continue
		}
		r, err := LoadRun(ctx, kv, events.RunID(id))
		if errors.Is(err, ErrRunNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out, nil
}

// ErrRunNotFound is returned for a run id the runs bucket does not hold.
var ErrRunNotFound = errors.New("run not found")

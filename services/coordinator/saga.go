package coordinator

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

// HolderLookup finds which hookrunner instance holds (or held) the session
// of a step, from the record the hookrunner writes before it takes a lock.
// ok is false when no lock was ever taken for the step.
type HolderLookup func(run events.RunID, step string) (holder string, ok bool, err error)

// SnapshotLookup finds the snapshotter's stored answer to a snapshot
// request, by its idempotency key; ok is false when it has not answered.
type SnapshotLookup func(idempotencyKey string) (ready events.SnapshotReady, ok bool, err error)

// saga applies one input (a result, a timer, a cancellation) to a run. It
// changes the run in memory and collects the events to publish; the caller
// persists the run first and publishes after, so every command's intent, and
// the inverse it implies, is durable before the command exists.
type saga struct {
	r       *Run
	bp      *blueprint.Blueprint
	now     time.Time
	cfg     *Config
	holders HolderLookup
	// snapshots is consulted when a run is taken over inside the freeze.
	snapshots SnapshotLookup
	// cause is the id of the event being applied; what the saga emits
	// carries it as causation id.
	cause string
	out   []events.Event
}

// emit queues an event of the run. id makes it deterministic, so publishing
// it again after a crash is dropped by JetStream's duplicate window.
func (s *saga) emit(id string, p events.Payload) {
	ev := events.New(s.cfg.Source, string(s.r.ID), p, s.now)
	if id != "" {
		ev.ID = id
	}
	ev.CorrelationID = string(s.r.ID)
	ev.CausationID = s.cause
	s.out = append(s.out, ev)
}

func (s *saga) action() blueprint.Action {
	if s.r.Kind == KindRestore {
		return s.bp.Action(blueprint.ActionRestore)
	}
	return s.bp.Action(blueprint.ActionBackup)
}

func (s *saga) snapshotIndex() int { return s.action().SnapshotIndex() }

// --- sending ---------------------------------------------------------------

func idempotencyKey(run events.RunID, key string, attempt int) string {
	if attempt <= 1 {
		return string(run) + "/" + key
	}
	return fmt.Sprintf("%s/%s#%d", run, key, attempt)
}

// withKey returns the command with its idempotency key for an attempt.
func withKey(p events.Payload, key string) events.Payload {
	switch c := p.(type) {
	case events.HookRequested:
		c.IdempotencyKey = key
		return c
	case events.HookReleaseRequested:
		c.IdempotencyKey = key
		return c
	case events.SnapshotRequested:
		c.IdempotencyKey = key
		return c
	case events.VolumeExportRequested:
		c.IdempotencyKey = key
		return c
	case events.VolumeImportRequested:
		c.IdempotencyKey = key
		return c
	}
	return p
}

// newTask records a task's intent and queues its first attempt.
func (s *saga) newTask(key, name, role string, p events.Payload, timeout time.Duration, maxAttempts int, backoff time.Duration) *Task {
	if maxAttempts < 1 {
		maxAttempts = 1
	}
	t := &Task{Key: key, Name: name, Role: role, Type: p.EventType(), MaxAttempts: maxAttempts, Backoff: events.Duration(backoff), Timeout: events.Duration(timeout)}
	if old := s.r.task(key); old != nil {
		// A task key used again (a late release): keep the history apart.
		t.Key = fmt.Sprintf("%s@%d", key, len(s.r.Tasks))
	}
	s.r.Tasks = append(s.r.Tasks, t)
	s.send(t, p)
	return t
}

// send queues the next attempt of t.
func (s *saga) send(t *Task, p events.Payload) {
	t.Attempt++
	p = withKey(p, idempotencyKey(s.r.ID, t.Key, t.Attempt))
	raw, err := json.Marshal(p)
	if err != nil {
		panic(fmt.Sprintf("coordinator: command %s does not marshal: %v", p.EventType(), err))
	}
	t.Command = raw
	t.CommandID = fmt.Sprintf("%s/%s/%d", s.r.ID, t.Key, t.Attempt)
	t.State = TaskSent
	t.SentAt = s.now
	t.RetryAt = nil
	t.Deadline = time.Time{}
	if t.Timeout > 0 {
		t.Deadline = s.now.Add(t.Timeout.Std() + s.cfg.AnswerGrace)
	}
	s.emit(t.CommandID, p)
}

// resend sends t's command again for its next attempt.
func (s *saga) resend(t *Task) {
	p, err := events.DecodePayload(t.Type, t.Command)
	if err != nil {
		// The command was valid when first sent; the catalogue changed.
		s.failTask(t, fmt.Sprintf("cannot send %s again: %v", t.Name, err))
		return
	}
	s.send(t, p)
}

// scheduleRetry puts t in waiting when it has attempts left.
func (s *saga) scheduleRetry(t *Task, errText string) bool {
	if t.Attempt >= t.MaxAttempts {
		return false
	}
	backoff := t.Backoff.Std()
	if backoff <= 0 {
		backoff = s.cfg.RetryBackoff
	}
	for i := 1; i < t.Attempt && backoff < time.Minute; i++ {
		backoff *= 2
	}
	at := s.now.Add(backoff)
	t.State = TaskWaiting
	t.RetryAt = &at
	t.Error = errText
	s.r.log(s.now, "%s attempt %d failed (%s); retrying in %s", t.Name, t.Attempt, errText, backoff)
	return true
}

func (s *saga) done(t *Task, state TaskState, errText string) {
	t.State = state
	t.Error = errText
	now := s.now
	t.DoneAt = &now
}

// --- forward ---------------------------------------------------------------

// start begins a new run.
func (s *saga) start() {
	s.r.Status = StatusRunning
	s.r.Stage = StageSteps
	steps := make([]string, 0, len(s.action()))
	for _, st := range s.action() {
		steps = append(steps, st.Name)
	}
	if s.r.Kind == KindRestore {
		p := s.r.Restore
		var names []string
		for _, a := range p.Artifacts {
			names = append(names, a.Name)
		}
		s.r.log(s.now, "accepted: restore of point %s to %s %s: %v; blueprint %s, steps %v", s.r.RestorePointID, p.Target.Mode, p.Target.Name, names, s.r.Blueprint, steps)
		s.emit(string(s.r.ID)+"/accepted", events.RestoreAccepted{RunID: s.r.ID, RestorePointID: s.r.RestorePointID, Application: s.r.Application, Target: p.Target})
		s.startChecks()
		return
	} else {
		s.r.log(s.now, "accepted: blueprint %s, steps %v, maxFreeze %s", s.r.Blueprint, steps, s.r.MaxFreeze)
		s.emit(string(s.r.ID)+"/accepted", events.BackupAccepted{RunID: s.r.ID, Application: s.r.Application, Blueprint: s.r.Blueprint, Steps: steps})
	}
	s.advance()
}

// advance moves a running run as far as it can go without waiting.
func (s *saga) advance() {
	r := s.r
	for r.Status == StatusRunning {
		switch r.Stage {
		case StageSteps:
			if r.inFlight(RoleStep, RoleSnapshot, RoleImport) {
				return
			}
			action := s.action()
			if r.Cursor >= len(action) {
				if r.Kind == KindRestore {
					s.completeRestore()
					return
				}
				s.startExports()
				continue
			}
			st := &action[r.Cursor]
			if st.Kind == blueprint.KindSnapshot {
				if r.Kind == KindRestore {
					edits, err := s.importEdits(st)
					if err != nil {
						s.fail(fmt.Sprintf("step %s: %v", st.Name, err), st.Name)
						return
					}
					s.startImports(edits)
					continue
				}
				s.sendSnapshot(st)
				return
			}
			rs, err := st.Render(r.templateContext(s.bp))
			if err != nil {
				s.fail(fmt.Sprintf("step %s cannot be rendered: %v", st.Name, err), st.Name)
				return
			}
			if rs.Skip {
				r.log(s.now, "step %s skipped (its when: condition is false)", st.Name)
				r.Cursor++
				continue
			}
			if r.Kind == KindRestore && r.Restore.Target.Mode == "new" {
				if p := touchesSource(rs, r.App.Volumes); p != "" {
					s.fail(fmt.Sprintf("step %s would act on the original application's volume %s during a restore to new; nothing was run (point the blueprint's parameters at the restored copy under %s, e.g. with --param)", st.Name, p, r.Restore.Target.Name), st.Name)
					return
				}
			}
			if r.Kind == KindRestore && st.Kind == blueprint.KindDump {
				ready, skip := s.dumpSource(st, &rs)
				if skip {
					r.Cursor++
					continue
				}
				if !ready {
					return
				}
			}
			s.sendStep(st, rs)
			return
		case StageCheck:
			if r.inFlight(RoleCheck) {
				return
			}
			r.log(s.now, "every artifact is readable in the repository")
			r.Stage = StageSteps
		case StageImport:
			if r.inFlight(RoleImport) {
				return
			}
			r.log(s.now, "volumes restored and verified")
			r.Stage = StageSteps
			r.Cursor = s.snapshotIndex() + 1
		case StageThaw:
			if r.inFlight(RoleInverse) {
				return
			}
			if len(r.Owed) == 0 {
				now := s.now
				r.FreezeEnd = &now
				r.log(s.now, "thawed: the application was quiesced for %s", r.FreezeWindow())
				r.Stage = StageSteps
				r.Cursor = s.snapshotIndex() + 1
				continue
			}
			if s.sendInverse(r.Owed[len(r.Owed)-1]) {
				return
			}
		case StageLiveExport:
			if r.inFlight(RoleExport) {
				return
			}
			r.log(s.now, "live volumes exported while the application was quiesced")
			r.Stage = StageThaw
		case StageExport:
			if r.inFlight(RoleExport) {
				return
			}
			s.startRecord()
			return
		default:
			return
		}
	}
}

func (s *saga) sendStep(st *blueprint.Step, rs blueprint.RenderedStep) {
	r := s.r
	req := events.HookRequested{RunID: r.ID, Application: r.Application, Step: rs.Name, Kind: rs.Kind, Spec: rs.Spec, Timeout: rs.Timeout}
	if rs.Hold {
		// The dead man's switch: the hookrunner lets go by itself when the
		// freeze bound passes, even if every coordinator is gone.
		hold := r.MaxFreeze
		req.HoldFor = &hold
	}
	attempts, backoff := 1, time.Duration(0)
	if rs.Retry != nil {
		attempts, backoff = rs.Retry.Attempts, rs.Retry.Backoff.Std()
	}
	// The inverse is owed from the moment the step is sent: a lock whose
	// answer was lost is still a lock.
	owed := Owed{Step: st.Name, Index: r.Cursor}
	switch {
	case rs.Hold:
		owed.Release = true
	case rs.Inverse != nil:
		owed.Inverse = rs.Inverse
	case rs.InverseDeferred:
		owed.Deferred = true
	}
	if owed.Release || owed.Inverse != nil || owed.Deferred {
		r.Owed = append(r.Owed, owed)
		if r.Kind == KindBackup && r.Cursor < s.snapshotIndex() && r.FreezeStart == nil {
			now := s.now
			deadline := now.Add(r.MaxFreeze.Std())
			r.FreezeStart, r.FreezeDeadline = &now, &deadline
		}
	}
	r.log(s.now, "step %s (%s) sent", st.Name, st.Kind)
	s.newTask("step/"+st.Name, st.Name, RoleStep, req, rs.Timeout.Std(), attempts, backoff)
}

func (s *saga) sendSnapshot(st *blueprint.Step) {
	r := s.r
	names := make([]string, 0, len(r.App.Volumes))
	for n := range r.App.Volumes {
		names = append(names, n)
	}
	slices.Sort(names)
	if len(names) == 0 {
		s.fail(fmt.Sprintf("step %s: application %s has no volumes to snapshot (add spec.volumes to its Application file)", st.Name, r.Application), st.Name)
		return
	}
	vols := make([]events.VolumeRef, 0, len(names))
	for _, n := range names {
		vols = append(vols, events.VolumeRef{Name: n, Source: r.App.Volumes[n]})
	}
	r.Stage = StageSnapshot
	r.log(s.now, "snapshot of %v sent", names)
	s.newTask("step/"+st.Name, st.Name, RoleSnapshot, events.SnapshotRequested{RunID: r.ID, Application: r.Application, Step: st.Name, Volumes: vols, Group: true}, st.TimeoutOrDefault().Std(), 1, 0)
}

// startLiveExports exports, before the thaw, each volume the platform
// could not snapshot (method live: a CSI driver without a snapshot class):
// its data is read in place, so the application must stay quiesced until
// it is in the repository. It reports whether there were any.
func (s *saga) startLiveExports() bool {
	r := s.r
	var live []string
	for _, snap := range r.Snapshots {
		if snap.Method != "live" {
			continue
		}
		live = append(live, snap.Volume)
		s.newTask("export/"+snap.Volume, "export "+snap.Volume, RoleExport, events.VolumeExportRequested{
			RunID: r.ID, Application: r.Application, Volume: snap.Volume, SourceKind: "snapshot", SnapshotID: snap.SnapshotID, Repository: s.cfg.Repository,
		}, s.cfg.ExportTimeout, s.cfg.ExportAttempts, 0)
	}
	if len(live) > 0 {
		r.log(s.now, "volumes %v have no snapshot: exporting them while the application stays quiesced (maxFreeze %s still applies)", live, r.MaxFreeze)
	}
	return len(live) > 0
}

func (s *saga) startExports() {
	r := s.r
	r.Stage = StageExport
	for _, snap := range r.Snapshots {
		if r.task("export/"+snap.Volume) != nil {
			continue // a live volume, exported before the thaw
		}
		s.newTask("export/"+snap.Volume, "export "+snap.Volume, RoleExport, events.VolumeExportRequested{
			RunID: r.ID, Application: r.Application, Volume: snap.Volume, SourceKind: "snapshot", SnapshotID: snap.SnapshotID, Repository: s.cfg.Repository,
		}, s.cfg.ExportTimeout, s.cfg.ExportAttempts, 0)
	}
	for _, a := range r.Artifacts {
		s.newTask("export/"+a, "export "+a, RoleExport, events.VolumeExportRequested{
			RunID: r.ID, Application: r.Application, Volume: a, SourceKind: "dump", DumpStep: a, Repository: s.cfg.Repository,
		}, s.cfg.ExportTimeout, s.cfg.ExportAttempts, 0)
	}
	if len(r.Snapshots)+len(r.Artifacts) == 0 {
		s.fail("the blueprint produced nothing to store: it has no snapshot step and no dump step", "")
		return
	}
	r.log(s.now, "exporting %d volumes and %d dumps", len(r.Snapshots), len(r.Artifacts))
}

func (s *saga) startRecord() {
	r := s.r
	r.Stage = StageRecord
	r.RestorePointID = events.RestorePointID(uuid.Must(uuid.NewV7()).String())
	started := r.CreatedAt
	completed := events.BackupCompleted{
		RunID: r.ID, Application: r.Application, RestorePointID: r.RestorePointID,
		StartedAt: started, FinishedAt: s.now.UTC(), FreezeWindow: events.Duration(r.FreezeWindow()),
		BytesRead: r.BytesRead, BytesUploaded: r.BytesUploaded,
		Artifacts: r.artifacts(), StepOutputs: r.stepOutputs(), Consistency: r.consistency(),
	}
	// The catalog records the point from this fact; the run is complete
	// when it says so (restorepoint.recorded).
	t := &Task{Key: "record", Name: "record restore point", Role: RoleRecord, Type: completed.EventType(), State: TaskSent, SentAt: s.now, Attempt: 1, MaxAttempts: 1}
	t.Command, _ = json.Marshal(completed)
	t.CommandID = string(r.ID) + "/completed"
	r.Tasks = append(r.Tasks, t)
	s.emit(t.CommandID, completed)
	r.log(s.now, "exports done; restore point %s sent to the catalog", r.RestorePointID)
	s.deleteSnapshots("the run's data is in the repository")
}

// deleteSnapshots asks for the run's snapshots to go, once.
func (s *saga) deleteSnapshots(reason string) bool {
	r := s.r
	if len(r.Snapshots) == 0 || r.SnapshotsDeleted {
		return false
	}
	for _, t := range r.Tasks {
		if t.Role == RoleCleanup && (t.State == TaskSent || t.State == TaskWaiting) {
			return true
		}
	}
	ids := make([]events.SnapshotID, 0, len(r.Snapshots))
	for _, v := range r.Snapshots {
		ids = append(ids, v.SnapshotID)
	}
	s.newTask("cleanup/snapshots", "delete snapshots", RoleCleanup, events.SnapshotDeleteRequested{RunID: r.ID, SnapshotIDs: ids, Reason: reason}, s.cfg.CleanupTimeout, 3, 0)
	return true
}

// maybeComplete ends a recorded run once its snapshots are gone (or their
// deletion gave up, leaving them to the snapshotter's sweep).
func (s *saga) maybeComplete() {
	r := s.r
	rec := r.task("record")
	if r.Status != StatusRunning || rec == nil || rec.State != TaskSucceeded || r.inFlight(RoleCleanup) {
		return
	}
	r.Status, r.Stage = StatusCompleted, StageDone
	now := s.now
	r.FinishedAt = &now
	r.log(s.now, "completed: restore point %s, freeze window %s", r.RestorePointID, r.FreezeWindow())
}

// --- failure and compensation --------------------------------------------

// fail starts compensation with cause as the first failure. Later failures
// do not replace the first cause.
func (s *saga) fail(cause, step string) {
	r := s.r
	if r.Status != StatusRunning {
		return
	}
	r.Status = StatusCompensating
	r.Stage = StageCompensate
	r.Cause, r.FailedStep = cause, step
	r.log(s.now, "failed: %s; compensating %d owed inverse(s)", cause, len(r.Owed))
	for _, t := range r.Tasks {
		if (t.State == TaskSent || t.State == TaskWaiting) && t.Role != RoleInverse && t.Role != RoleCleanup {
			s.done(t, TaskAbandoned, "the run failed before it answered")
		}
	}
	s.compensate()
}

// cancel compensates at the user's request.
func (s *saga) cancel(by, reason string) {
	if s.r.Status != StatusRunning {
		return
	}
	s.r.CancelledBy = by
	cause := "cancelled"
	if by != "" {
		cause += " by " + by
	}
	if reason != "" {
		cause += ": " + reason
	}
	s.fail(cause, "")
}

// compensate runs the owed inverses newest first, one at a time, then
// cleans up and ends the run.
func (s *saga) compensate() {
	r := s.r
	for r.Status == StatusCompensating && r.Stage == StageCompensate {
		if r.inFlight(RoleInverse) {
			return
		}
		if len(r.Owed) == 0 {
			r.Stage = StageCleanup
			if s.deleteSnapshots("the run failed") {
				return
			}
			s.finishFailed()
			return
		}
		if s.sendInverse(r.Owed[len(r.Owed)-1]) {
			return
		}
	}
}

// sendInverse sends the inverse o stands for. It returns false when there
// was nothing to send; o has then been settled and popped.
func (s *saga) sendInverse(o Owed) bool {
	r := s.r
	step := r.task("step/" + o.Step)
	switch {
	case o.Release:
		holder := ""
		if step != nil {
			holder = step.Holder
		}
		if holder == "" && s.holders != nil {
			h, ok, err := s.holders(r.ID, o.Step)
			switch {
			case err != nil:
				// Unknown is not "no lock": try again at the next tick.
				s.settleOwed(o, "release "+o.Step, "failed", 0, "cannot read who holds the lock: "+err.Error())
				return false
			case ok:
				holder = h
			}
		}
		if holder == "" {
			s.settleOwed(o, "release "+o.Step, "skipped", 0, "no lock was taken")
			return false
		}
		s.newTask("inverse/"+o.Step, "release "+o.Step, RoleInverse, events.HookReleaseRequested{RunID: r.ID, Step: o.Step, Holder: holder, Reason: s.inverseReason()}, s.cfg.InverseTimeout, s.cfg.InverseAttempts, 0)
		return true
	case o.Deferred:
		bpStep := s.action().Step(o.Step)
		// A step that failed after it acted reported what it changed.
		if step == nil || bpStep == nil || (step.State != TaskSucceeded && len(step.Outputs) == 0) {
			s.settleOwed(o, o.Step+"-inverse", "failed", 0, "its inverse needs the step's outputs, which never arrived")
			return false
		}
		ctx := r.templateContext(s.bp)
		if step.State != TaskSucceeded {
			ctx.Steps[step.Name] = blueprint.StepResult{Output: step.Outputs}
		}
		inv, err := bpStep.RenderInverse(ctx)
		if err != nil || inv == nil {
			s.settleOwed(o, o.Step+"-inverse", "failed", 0, fmt.Sprintf("its inverse cannot be rendered: %v", err))
			return false
		}
		o.Inverse = inv
	}
	if o.Inverse == nil {
		s.settleOwed(o, o.Step, "skipped", 0, "nothing to undo")
		return false
	}
	inv := o.Inverse
	attempts, backoff := s.cfg.InverseAttempts, time.Duration(0)
	if inv.Retry != nil {
		attempts = max(attempts, inv.Retry.Attempts)
		backoff = inv.Retry.Backoff.Std()
	}
	s.newTask("inverse/"+o.Step, inv.Name, RoleInverse, events.HookRequested{
		RunID: r.ID, Application: r.Application, Step: inv.Name, Kind: inv.Kind, Spec: inv.Spec, Timeout: inv.Timeout,
	}, inv.Timeout.Std(), attempts, backoff)
	return true
}

func (s *saga) inverseReason() string {
	if s.r.Status == StatusRunning {
		return "thaw after the snapshot"
	}
	return "compensation: " + s.r.Cause
}

// settleOwed pops o and records how its inverse ended.
func (s *saga) settleOwed(o Owed, name, outcome string, attempts int, errText string) {
	r := s.r
	for i := len(r.Owed) - 1; i >= 0; i-- {
		if r.Owed[i].Step == o.Step {
			r.Owed = slices.Delete(r.Owed, i, i+1)
			break
		}
	}
	if r.Status == StatusRunning {
		if outcome == "failed" {
			r.Compensations = append(r.Compensations, events.Compensation{Step: name, Outcome: outcome, Attempts: attempts, Error: errText})
			s.fail(fmt.Sprintf("thaw step %s failed: %s", name, errText), name)
		} else {
			r.log(s.now, "thaw: %s %s", name, outcome)
		}
		return
	}
	r.Compensations = append(r.Compensations, events.Compensation{Step: name, Outcome: outcome, Attempts: attempts, Error: errText})
	r.log(s.now, "compensation: %s %s%s", name, outcome, suffix(errText))
}

func suffix(errText string) string {
	if errText == "" {
		return ""
	}
	return " (" + errText + ")"
}

// inverseEnded settles the inverse task t.
func (s *saga) inverseEnded(t *Task, ok bool, errText string) {
	r := s.r
	if ok {
		s.done(t, TaskSucceeded, "")
	} else {
		s.done(t, TaskFailed, errText)
	}
	if i := slices.IndexFunc(r.Unresolved, func(u Unresolved) bool { return u.Task == t.Key }); i >= 0 {
		// A background retry after the run ended.
		if ok {
			r.Unresolved = slices.Delete(r.Unresolved, i, i+1)
			r.log(s.now, "compensation %s finally succeeded (attempt %d)", t.Name, t.Attempt)
			if len(r.Unresolved) == 0 && r.FreezeStart != nil && r.FreezeEnd == nil {
				now := s.now
				r.FreezeEnd = &now
			}
			return
		}
		u := &r.Unresolved[i]
		u.Rounds++
		s.loud(t, u)
		return
	}
	step := t.Key[len("inverse/"):]
	o := Owed{Step: step}
	if ok {
		s.settleOwed(o, t.Name, "succeeded", t.Attempt, "")
	} else {
		s.settleOwed(o, t.Name, "failed", t.Attempt, errText)
		u := Unresolved{Task: t.Key}
		r.Unresolved = append(r.Unresolved, u)
		s.loud(t, &r.Unresolved[len(r.Unresolved)-1])
	}
	s.continueAfterInverse()
}

// loud raises run.compensation_failed and schedules the next background try.
func (s *saga) loud(t *Task, u *Unresolved) {
	backoff := s.cfg.BackgroundRetry
	for i := 0; i < u.Rounds && backoff < s.cfg.BackgroundRetryMax; i++ {
		backoff *= 2
	}
	backoff = min(backoff, s.cfg.BackgroundRetryMax)
	u.RetryAt = s.now.Add(backoff)
	s.r.log(s.now, "COMPENSATION FAILED: %s after %d attempt(s): %s; a human must act; retrying at %s", t.Name, t.Attempt, t.Error, u.RetryAt.Format(time.RFC3339))
	s.emit(fmt.Sprintf("%s/compensation-failed/%s/%d", s.r.ID, t.Key, t.Attempt), events.RunCompensationFailed{
		RunID: s.r.ID, Application: s.r.Application, Step: t.Name, Attempts: t.Attempt, Error: t.Error, NextRetryAt: u.RetryAt.UTC(),
	})
}

func (s *saga) continueAfterInverse() {
	switch s.r.Status {
	case StatusRunning:
		s.advance()
	case StatusCompensating:
		s.compensate()
	}
}

// finishFailed ends a compensated run and announces it.
func (s *saga) finishFailed() {
	r := s.r
	now := s.now
	r.FinishedAt = &now
	r.Stage = StageDone
	comps := r.Compensations
	if r.FreezeStart != nil && r.FreezeEnd == nil && len(r.Unresolved) == 0 {
		// Every inverse ran: the application is released.
		r.FreezeEnd = &now
	}
	if r.Kind == KindRestore {
		if r.CancelledBy != "" {
			r.Status = StatusCancelled
			r.log(s.now, "cancelled")
			s.emit(string(r.ID)+"/cancelled", events.RestoreCancelled{RunID: r.ID, RestorePointID: r.RestorePointID, Application: r.Application, CancelledBy: r.CancelledBy, Compensations: comps})
			return
		}
		r.Status = StatusFailed
		r.log(s.now, "failed: %s", r.Cause)
		s.emit(string(r.ID)+"/failed", events.RestoreFailed{RunID: r.ID, RestorePointID: r.RestorePointID, Application: r.Application, Reason: r.Cause, FailedStep: r.FailedStep, Compensations: comps})
		return
	}
	if r.CancelledBy != "" || r.Cause == "cancelled" {
		r.Status = StatusCancelled
		r.log(s.now, "cancelled")
		s.emit(string(r.ID)+"/cancelled", events.BackupCancelled{RunID: r.ID, Application: r.Application, CancelledBy: r.CancelledBy, Compensations: comps})
		return
	}
	r.Status = StatusFailed
	r.log(s.now, "failed: %s", r.Cause)
	s.emit(string(r.ID)+"/failed", events.BackupFailed{RunID: r.ID, Application: r.Application, Reason: r.Cause, FailedStep: r.FailedStep, Compensations: comps})
}

// failTask ends a forward task for good and fails the run.
func (s *saga) failTask(t *Task, errText string) {
	s.done(t, TaskFailed, errText)
	switch t.Role {
	case RoleInverse:
		s.inverseEnded(t, false, errText)
	case RoleCleanup:
		s.r.log(s.now, "snapshots not deleted (%s); the snapshotter's sweep removes them later", errText)
		s.afterCleanup()
	default:
		s.fail(errText, t.Name)
	}
}

func (s *saga) afterCleanup() {
	r := s.r
	switch {
	case r.Status == StatusRunning:
		s.maybeComplete()
	case r.Status == StatusCompensating && r.Stage == StageCleanup:
		s.finishFailed()
	}
}

// --- restore ---------------------------------------------------------------

// startImports restores every volume of the plan, in parallel: the restore
// action's barrier.
func (s *saga) startImports(edits map[string]*events.VolumeEdits) {
	r := s.r
	r.Stage = StageImport
	n := 0
	for _, a := range r.Restore.Artifacts {
		if a.Kind != "volume" {
			continue
		}
		n++
		kind := "directory"
		if r.Restore.Replace {
			kind = "replace"
		}
		s.newTask("import/"+a.Name, "import "+a.Name, RoleImport, events.VolumeImportRequested{
			RunID: r.ID, Volume: a.Name, ManifestID: a.ManifestID, Repository: s.cfg.Repository, TargetKind: kind, Target: a.Location,
			Edits: edits[a.Name],
		}, s.cfg.ExportTimeout, s.cfg.ExportAttempts, 0)
	}
	r.log(s.now, "importing %d volume(s)", n)
}

// importEdits renders a restore's snapshot step and maps its edits onto
// the volumes it imports, naming each extracted artifact by its snapshot.
func (s *saga) importEdits(st *blueprint.Step) (map[string]*events.VolumeEdits, error) {
	r := s.r
	rs, err := st.Render(r.templateContext(s.bp))
	if err != nil {
		return nil, fmt.Errorf("cannot be rendered: %w", err)
	}
	if len(rs.Spec) == 0 {
		return nil, nil
	}
	var spec blueprint.SnapshotSpec
	if err := json.Unmarshal(rs.Spec, &spec); err != nil {
		return nil, fmt.Errorf("its snapshot spec does not decode: %w", err)
	}
	out := map[string]*events.VolumeEdits{}
	for _, e := range spec.Edits {
		a := r.Restore.artifact(e.Volume)
		switch {
		case a == nil:
			r.log(s.now, "step %s: edits of volume %s skipped: this restore does not import it", st.Name, e.Volume)
			continue
		case a.Kind != "volume":
			return nil, fmt.Errorf("edits name %q, which is a %s, not a volume", e.Volume, a.Kind)
		}
		ve := &events.VolumeEdits{Dir: e.Dir, Remove: e.Remove, Files: e.Files}
		for _, x := range e.Extract {
			t := r.Restore.artifact(x.Artifact)
			if t == nil {
				return nil, fmt.Errorf("edits of volume %s extract artifact %q, which this restore does not hold (left out with --only, or not in the point)", e.Volume, x.Artifact)
			}
			ve.Extract = append(ve.Extract, events.TarExtract{ManifestID: t.ManifestID, Into: x.Into})
		}
		out[e.Volume] = ve
	}
	return out, nil
}

// startChecks opens each artifact of the restore in the repository before
// any step runs: a wrong password or a deleted snapshot then fails the
// restore while nothing has changed (a restore to production has not yet
// stopped the application).
func (s *saga) startChecks() {
	r := s.r
	r.Stage = StageCheck
	for _, a := range r.Restore.Artifacts {
		s.newTask("check/"+a.Name, "check "+a.Name, RoleCheck, events.VolumeImportRequested{
			RunID: r.ID, Volume: a.Name, ManifestID: a.ManifestID, Repository: s.cfg.Repository, TargetKind: "stream", Target: "check", Check: true,
		}, s.cfg.CleanupTimeout, 3, 0)
	}
	s.advance()
}

// dumpSource prepares a restore's dump step: the datamover's stream import
// of its artifact and the step, sent with FromArtifact, run together. It
// returns skip for an artifact the restore leaves out (--only).
func (s *saga) dumpSource(st *blueprint.Step, rs *blueprint.RenderedStep) (ready, skip bool) {
	r := s.r
	var spec blueprint.DumpSpec
	if err := json.Unmarshal(rs.Spec, &spec); err != nil {
		s.fail(fmt.Sprintf("step %s: its dump spec does not decode: %v", st.Name, err), st.Name)
		return false, false
	}
	a := r.Restore.artifact(spec.Artifact)
	if a == nil {
		r.log(s.now, "step %s skipped: artifact %s is not part of this restore", st.Name, spec.Artifact)
		return false, true
	}
	// The mover streams the artifact through a pipe that the step reads as
	// it fills: both are sent together and run at once. One attempt only:
	// a second writer cannot feed a reader that consumed part of the first.
	if r.task("import/"+a.Name) == nil {
		s.newTask("import/"+a.Name, "import "+a.Name, RoleImport, events.VolumeImportRequested{
			RunID: r.ID, Volume: a.Name, ManifestID: a.ManifestID, Repository: s.cfg.Repository, TargetKind: "stream", Target: st.Name,
		}, s.cfg.ExportTimeout, 1, 0)
	}
	spec.FromArtifact = true
	raw, err := json.Marshal(spec)
	if err != nil {
		s.fail(fmt.Sprintf("step %s: %v", st.Name, err), st.Name)
		return false, false
	}
	rs.Spec = raw
	return true, false
}

// completeRestore ends a restore whose steps all ran.
func (s *saga) completeRestore() {
	r := s.r
	r.Status, r.Stage = StatusCompleted, StageDone
	now := s.now
	r.FinishedAt = &now
	// The inverses owed by restore steps are for failures only.
	r.Owed = nil
	r.log(s.now, "restore completed: %d bytes restored to %s %s", r.Restore.BytesRestored, r.Restore.Target.Mode, r.Restore.Target.Name)
	s.emit(string(r.ID)+"/completed", events.RestoreCompleted{
		RunID: r.ID, RestorePointID: r.RestorePointID, Application: r.Application, Target: r.Restore.Target,
		StartedAt: r.CreatedAt, FinishedAt: s.now.UTC(), BytesRestored: r.Restore.BytesRestored,
	})
}

// touchesSource returns the original volume path a rendered restore step
// names, if any: a restore to new must never change the original.
func touchesSource(rs blueprint.RenderedStep, volumes map[string]string) string {
	spec := string(rs.Spec)
	for _, p := range volumes {
		quoted, _ := json.Marshal(p)
		inner := strings.Trim(string(quoted), `"`)
		if p == "" || p == "/" {
			continue
		}
		// The path itself or below it, not a longer name that starts the
		// same (/srv/db vs /srv/db-restore).
		for i := strings.Index(spec, inner); i >= 0; {
			rest := spec[i+len(inner):]
			if rest == "" || strings.ContainsAny(rest[:1], `/"' :;`) || strings.HasPrefix(rest, `\n`) {
				return p
			}
			next := strings.Index(rest, inner)
			if next < 0 {
				break
			}
			i += len(inner) + next
		}
	}
	return ""
}

// artifacts lists what the exports stored, by name.
func (r *Run) artifacts() []events.Artifact {
	var out []events.Artifact
	consistency := map[string]string{}
	for _, sn := range r.Snapshots {
		consistency[sn.Volume] = sn.Consistency
	}
	for _, t := range r.Tasks {
		if t.Role != RoleExport || t.State != TaskSucceeded {
			continue
		}
		bytes, _ := strconv.ParseInt(t.Outputs["bytes"], 10, 64)
		files, _ := strconv.ParseInt(t.Outputs["files"], 10, 64)
		a := events.Artifact{Name: t.Outputs["volume"], Kind: t.Outputs["kind"], ManifestID: events.ManifestID(t.Outputs["manifestId"]), Bytes: bytes, Files: files}
		if a.Kind == "volume" {
			a.Consistency = consistency[a.Name]
		}
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b events.Artifact) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// stepOutputs are the outputs of the backup's steps (a held step's include
// what its release returned, such as PostgreSQL's backup label).
func (r *Run) stepOutputs() map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, t := range r.Tasks {
		if t.Role == RoleStep && t.State == TaskSucceeded && len(t.Outputs) > 0 {
			out[t.Name] = t.Outputs
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// consistency is what the point guarantees: application when the
// application was quiesced for the snapshot (and, for a volume read live,
// for its whole export), logical when it holds only dumps, crash
// otherwise.
func (r *Run) consistency() string {
	switch {
	case r.FreezeStart != nil && len(r.Snapshots) > 0:
		for _, sn := range r.Snapshots {
			if sn.Method == "live" {
				return "application-live"
			}
		}
		return "application"
	case len(r.Snapshots) == 0 && len(r.Artifacts) > 0:
		return "logical"
	}
	return "crash"
}

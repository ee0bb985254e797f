package coordinator

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

// apply dispatches one event to the run.
func (s *saga) apply(ev events.Event) {
	switch p := ev.Data.(type) {
	case events.HookSucceeded:
		s.onHookSucceeded(ev, p)
	case events.HookFailed:
		s.onHookFailed(ev, p)
	case events.HookReleased:
		s.onHookReleased(ev, p)
	case events.SnapshotReady:
		s.onSnapshotReady(ev, p)
	case events.SnapshotFailed:
		s.onFailure(ev, p.Step, fmt.Sprintf("snapshot failed: %s", p.Error), p.Permanent)
	case events.SnapshotDeleted:
		s.onSnapshotDeleted(ev, p)
	case events.VolumeExported:
		s.onVolumeExported(ev, p)
	case events.VolumeExportFailed:
		s.onFailure(ev, "export "+p.Volume, fmt.Sprintf("export of %s failed: %s", p.Volume, p.Error), p.Permanent)
	case events.RestorePointRecorded:
		s.onRecorded(p)
	case events.VolumeImported:
		s.onVolumeImported(ev, p)
	case events.VolumeImportFailed:
		if t := s.r.taskByCommand(ev.CausationID); t != nil && t.Role == RoleCheck {
			s.onFailure(ev, t.Name, fmt.Sprintf("%s of the restore point cannot be read from the repository, so nothing was changed: %s", p.Volume, p.Error), p.Permanent)
			return
		}
		s.onFailure(ev, "import "+p.Volume, fmt.Sprintf("import of %s failed: %s", p.Volume, p.Error), p.Permanent)
	case events.DeadLettered:
		s.onDeadLettered(ev, p)
	}
}

// match finds the task an answer belongs to: by the command it answers
// (its causation id, exact to the attempt), else by name for answers that
// lost their causation.
func (s *saga) match(ev events.Event, name string) *Task {
	if t := s.r.taskByCommand(ev.CausationID); t != nil {
		return t
	}
	for i := len(s.r.Tasks) - 1; i >= 0; i-- {
		t := s.r.Tasks[i]
		if t.Name == name && t.Role != RoleInverse {
			return t
		}
	}
	return nil
}

func (s *saga) onHookSucceeded(ev events.Event, p events.HookSucceeded) {
	t := s.match(ev, p.Step)
	if t == nil {
		return
	}
	if p.Holding {
		t.Holding, t.Holder = true, p.Holder
	}
	switch {
	case t.State == TaskSent && t.Role == RoleInverse:
		s.inverseEnded(t, true, "")
	case t.State == TaskSent:
		s.done(t, TaskSucceeded, "")
		t.Outputs = p.Outputs
		s.r.log(s.now, "step %s succeeded%s", t.Name, holdingNote(p))
		s.stepSucceeded(t)
	case (t.State == TaskAbandoned || t.State == TaskFailed) && p.Holding:
		// A lock taken after the run stopped waiting for it (it timed out,
		// or the run failed meanwhile): release it now.
		s.lateLock(t)
	}
}

func holdingNote(p events.HookSucceeded) string {
	if p.Holding {
		return " (holding its lock in hookrunner " + p.Holder + ")"
	}
	return ""
}

// stepSucceeded moves past a forward step that succeeded.
func (s *saga) stepSucceeded(t *Task) {
	r := s.r
	bpStep := s.action().Step(t.Name)
	if bpStep != nil && bpStep.Kind == blueprint.KindDump {
		var spec blueprint.DumpSpec
		var req events.HookRequested
		if json.Unmarshal(t.Command, &req) == nil && json.Unmarshal(req.Spec, &spec) == nil && spec.Artifact != "" {
			r.Artifacts = append(r.Artifacts, spec.Artifact)
		}
	}
	if r.Status != StatusRunning {
		return
	}
	r.Cursor++
	s.advance()
}

// lateLock releases a lock that arrived after its owed release was settled.
func (s *saga) lateLock(t *Task) {
	r := s.r
	for _, o := range r.Owed {
		if o.Step == t.Name && o.Release {
			// Still owed: compensation will route the release to t.Holder.
			return
		}
	}
	r.log(s.now, "a late lock of step %s (hookrunner %s): releasing it", t.Name, t.Holder)
	s.newTask("inverse/"+t.Name, "release "+t.Name, RoleInverse, events.HookReleaseRequested{RunID: r.ID, Step: t.Name, Holder: t.Holder, Reason: "late lock after the run stopped"}, s.cfg.InverseTimeout, s.cfg.InverseAttempts, 0)
}

func (s *saga) onHookFailed(ev events.Event, p events.HookFailed) {
	t := s.match(ev, p.Step)
	if t == nil || t.State != TaskSent {
		return
	}
	errText := fmt.Sprintf("step %s failed: %s", t.Name, p.Error)
	// What a step changed before it failed is kept: its inverse is
	// rendered from it.
	t.Outputs = mergeOutputs(t.Outputs, p.Outputs)
	if t.Role == RoleInverse {
		if !p.Permanent && s.scheduleRetry(t, p.Error) {
			return
		}
		s.inverseEnded(t, false, p.Error)
		return
	}
	if !p.Permanent && s.scheduleRetry(t, p.Error) {
		return
	}
	if bpStep := s.action().Step(t.Name); bpStep != nil && bpStep.OnError == blueprint.OnErrorContinue && s.r.Status == StatusRunning {
		s.done(t, TaskFailed, p.Error)
		s.r.log(s.now, "%s; going on (onError: continue)", errText)
		s.r.Cursor++
		s.advance()
		return
	}
	s.failTask(t, errText)
}

func (s *saga) onHookReleased(ev events.Event, p events.HookReleased) {
	r := s.r
	if p.HeldFor > r.HeldFor {
		r.HeldFor = p.HeldFor
	}
	step := r.task("step/" + p.Step)
	if step != nil {
		step.Holding = false
		step.Outputs = mergeOutputs(step.Outputs, p.Outputs)
	}
	var t *Task
	if c := r.taskByCommand(ev.CausationID); c != nil && c.Role == RoleInverse {
		t = c
	}
	if t == nil && p.By != "deadline" && p.By != "shutdown" {
		for i := len(r.Tasks) - 1; i >= 0; i-- {
			if c := r.Tasks[i]; c.Role == RoleInverse && c.Name == "release "+p.Step && c.State == TaskSent {
				t = c
				break
			}
		}
	}
	if t == nil {
		s.spontaneousRelease(p)
		return
	}
	if t.State != TaskSent {
		return
	}
	t.Outputs = p.Outputs
	s.inverseEnded(t, true, "")
	if r.Status != StatusRunning {
		return
	}
	switch {
	case p.By == "disconnect":
		s.fail(fmt.Sprintf("the session holding the lock of step %s had ended before the thaw (%s); the snapshot cannot be shown to be consistent", p.Step, p.Error), p.Step)
	case p.Error != "":
		// The session was closed anyway, so the lock is gone; but what the
		// release should have returned (a backup label) is missing.
		s.fail(fmt.Sprintf("release of step %s failed: %s", p.Step, p.Error), p.Step)
	}
}

// spontaneousRelease handles a lock its hookrunner let go by itself (the
// dead man's switch, or its shutdown), or that ended with a lost
// hookrunner's session (another hookrunner says so: "disconnect").
func (s *saga) spontaneousRelease(p events.HookReleased) {
	r := s.r
	// A lost hookrunner ("disconnect") is noticed some seconds after it
	// died, so its session may have ended before the snapshots even if
	// they are complete now: the run cannot show it was consistent.
	lost := p.By == "disconnect"
	if r.Status == StatusRunning && (lost || !r.quiescedWorkDone()) {
		// The lock is gone already: its release is not owed any more (for a
		// lost hookrunner it could not be delivered anywhere).
		for _, o := range r.Owed {
			if o.Step == p.Step && o.Release {
				s.settleOwed(o, "release "+p.Step, "succeeded", 0, "")
				r.Compensations = append(r.Compensations, events.Compensation{Step: "release " + p.Step, Outcome: "succeeded"})
				break
			}
		}
		if lost {
			s.fail(fmt.Sprintf("the hookrunner holding the lock of step %s was lost (%s); the lock ended with its session, so the snapshot cannot be shown to be consistent", p.Step, p.Error), p.Step)
			return
		}
		s.fail(fmt.Sprintf("the lock of step %s was released by its hookrunner (%s) after %s, before the snapshots (and the exports of volumes read live) were complete; what is read now would not be consistent", p.Step, p.By, p.HeldFor), p.Step)
		return
	}
	// After the snapshot it is the thaw we wanted: settle the owed release
	// (its outputs, such as pg_backup_stop's label, are on the step).
	for _, o := range r.Owed {
		if o.Step == p.Step && o.Release {
			s.settleOwed(o, "release "+p.Step, "succeeded", 0, "")
			s.continueAfterInverse()
			return
		}
	}
}

// mergeOutputs adds a release's outputs to its step's, so later steps and
// the restore point see .Steps.<step>.Output.labelfile.
func mergeOutputs(into, from map[string]string) map[string]string {
	if len(from) == 0 {
		return into
	}
	if into == nil {
		into = map[string]string{}
	}
	for k, v := range from {
		into[k] = v
	}
	return into
}

func (s *saga) onSnapshotReady(ev events.Event, p events.SnapshotReady) {
	r := s.r
	t := s.match(ev, p.Step)
	if t == nil {
		return
	}
	switch t.State {
	case TaskSent:
		s.done(t, TaskSucceeded, "")
		r.Snapshots = p.Snapshots
		var methods []string
		for _, v := range p.Snapshots {
			methods = append(methods, v.Volume+":"+v.Method+" "+v.Duration.String())
		}
		r.log(s.now, "snapshots ready: %v", methods)
		if r.Status == StatusRunning {
			r.Stage = StageThaw
			if s.startLiveExports() {
				r.Stage = StageLiveExport
			}
			s.advance()
		}
	case TaskAbandoned, TaskFailed:
		// The run stopped waiting for the snapshot (it timed out, or the
		// run failed meanwhile): delete it.
		r.Snapshots = p.Snapshots
		r.SnapshotsDeleted = false
		r.log(s.now, "a late snapshot arrived after the run stopped waiting for it: deleting it")
		if r.Status.Terminal() || r.Stage == StageCleanup {
			s.deleteSnapshots("late snapshot of a failed run")
		}
		// Otherwise the run is still compensating, and its cleanup deletes
		// r.Snapshots.
	}
}

func (s *saga) onSnapshotDeleted(ev events.Event, p events.SnapshotDeleted) {
	r := s.r
	t := r.taskByCommand(ev.CausationID)
	if t == nil || t.State != TaskSent {
		return
	}
	s.done(t, TaskSucceeded, "")
	r.SnapshotsDeleted = true
	r.log(s.now, "snapshots deleted: %v", p.SnapshotIDs)
	s.afterCleanup()
}

func (s *saga) onVolumeExported(ev events.Event, p events.VolumeExported) {
	r := s.r
	t := s.match(ev, "export "+p.Volume)
	if t == nil || t.State != TaskSent {
		return
	}
	s.done(t, TaskSucceeded, "")
	kind := "volume"
	if p.SourceKind == "dump" {
		kind = "dump"
	}
	t.Outputs = map[string]string{"manifestId": string(p.ManifestID), "kind": kind, "bytes": strconv.FormatInt(p.Bytes, 10), "files": strconv.FormatInt(p.Files, 10), "volume": p.Volume}
	r.BytesRead += p.Bytes
	r.BytesUploaded += p.BytesUploaded
	r.log(s.now, "exported %s: %d files, %d bytes, %d new", p.Volume, p.Files, p.Bytes, p.BytesUploaded)
	s.advance()
}

// onFailure handles a failed snapshot or export.
func (s *saga) onFailure(ev events.Event, name, errText string, permanent bool) {
	t := s.match(ev, name)
	if t == nil || t.State != TaskSent {
		return
	}
	if !permanent && s.scheduleRetry(t, errText) {
		return
	}
	s.failTask(t, errText)
}

func (s *saga) onRecorded(p events.RestorePointRecorded) {
	t := s.r.task("record")
	if t == nil || t.State != TaskSent {
		return
	}
	s.done(t, TaskSucceeded, "")
	s.r.log(s.now, "restore point %s recorded (%s consistent)", p.RestorePointID, p.Consistency)
	s.maybeComplete()
}

// onDeadLettered fails the command the bus gave up on.
func (s *saga) onDeadLettered(ev events.Event, p events.DeadLettered) {
	t := s.r.taskByCommand(ev.CausationID)
	if t == nil || t.State != TaskSent {
		return
	}
	errText := fmt.Sprintf("%s was set aside after %d deliveries: %s", t.Name, p.Deliveries, p.Reason)
	if t.Role == RoleInverse || t.Role == RoleExport || t.Role == RoleImport || t.Role == RoleCheck || t.Role == RoleCleanup {
		if s.scheduleRetry(t, errText) {
			return
		}
	}
	s.failTask(t, errText)
}

// tick acts on every deadline that has passed.
func (s *saga) tick() {
	r := s.r
	if r.Status == StatusRunning && r.Frozen() && r.FreezeDeadline != nil && !r.quiescedWorkDone() && !s.now.Before(*r.FreezeDeadline) {
		s.fail(fmt.Sprintf("the freeze deadline passed: the application stayed quiesced for maxFreeze (%s) before the snapshots (and the exports of volumes read live) were complete; it was thawed", r.MaxFreeze), "")
	}
	for _, t := range slices.Clone(r.Tasks) {
		switch {
		case t.State == TaskSent && !t.Deadline.IsZero() && !s.now.Before(t.Deadline):
			s.timedOut(t)
		case t.State == TaskWaiting && t.RetryAt != nil && !s.now.Before(*t.RetryAt):
			s.resend(t)
		}
	}
	for i := range r.Unresolved {
		u := &r.Unresolved[i]
		if t := r.task(u.Task); t != nil && t.State != TaskSent && !s.now.Before(u.RetryAt) {
			r.log(s.now, "retrying compensation %s in the background (round %d)", t.Name, u.Rounds+1)
			t.MaxAttempts = t.Attempt + 1
			s.resend(t)
		}
	}
	if r.Status == StatusCompensating {
		s.compensate()
	}
}

func (s *saga) timedOut(t *Task) {
	service := map[string]string{RoleStep: "hookrunner", RoleInverse: "hookrunner", RoleSnapshot: "snapshotter", RoleExport: "data mover", RoleImport: "data mover", RoleCheck: "data mover", RoleCleanup: "snapshotter"}[t.Role]
	errText := fmt.Sprintf("%s timed out after %s: no answer from the %s", t.Name, t.Timeout, service)
	switch t.Role {
	case RoleInverse, RoleExport, RoleImport, RoleCheck, RoleCleanup:
		// Safe to send again: inverses are idempotent, and an export or a
		// deletion carries its idempotency key.
		if s.scheduleRetry(t, errText) {
			return
		}
	}
	s.failTask(t, errText)
}

func (s *saga) onVolumeImported(ev events.Event, p events.VolumeImported) {
	r := s.r
	t := s.match(ev, "import "+p.Volume)
	if t == nil || t.State != TaskSent || r.Restore == nil {
		return
	}
	if t.Role == RoleCheck {
		s.done(t, TaskSucceeded, "")
		r.log(s.now, "checked %s: %d files, %d bytes in the repository", p.Volume, p.Files, p.Bytes)
		s.advance()
		return
	}
	a := r.Restore.artifact(p.Volume)
	if a != nil && a.Kind == "volume" && (a.Files > 0 || a.Bytes > 0) && (p.Files != a.Files || p.Bytes != a.Bytes) {
		s.failTask(t, fmt.Sprintf("verification of %s failed: the restore wrote %d files and %d bytes, the backup recorded %d files and %d bytes", p.Volume, p.Files, p.Bytes, a.Files, a.Bytes))
		return
	}
	s.done(t, TaskSucceeded, "")
	r.Restore.BytesRestored += p.Bytes
	r.log(s.now, "imported %s: %d files, %d bytes", p.Volume, p.Files, p.Bytes)
	if p.Previous != "" {
		if a != nil {
			a.Previous = p.Previous
		}
		r.log(s.now, "the previous contents of %s are kept at %s; delete them once the restored application is verified", p.Volume, p.Previous)
	}
	s.advance()
}

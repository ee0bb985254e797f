package events

import "time"

func init() {
	register[BackupRequested](Command, "Asks the coordinator to back up one application.")
	register[BackupAccepted](Fact, "The coordinator accepted a backup request and started a run.")
	register[BackupCompleted](Fact, "A backup run finished and recorded a restore point.")
	register[BackupFailed](Fact, "A backup run failed; every owed inverse step has been attempted.")
	register[BackupCancelled](Fact, "A backup run was cancelled and compensated.")
	register[RunCancelRequested](Command, "Asks the coordinator to cancel a backup or restore run.")
}

// BackupRequested asks for one backup of one application.
type BackupRequested struct {
	Application string `json:"application"`
	// Blueprint overrides the blueprint bound to the application.
	Blueprint string `json:"blueprint,omitempty"`
	// Policy names the policy that scheduled the backup; empty for manual runs.
	Policy string `json:"policy,omitempty"`
	// MaxFreeze bounds how long the application may stay quiesced.
	MaxFreeze *Duration `json:"maxFreeze,omitempty"`
	// Labels are copied onto the restore point.
	Labels map[string]string `json:"labels,omitempty"`
	// RequestedBy says who or what asked (a user, a schedule, a webhook).
	RequestedBy string `json:"requestedBy,omitempty"`
}

// EventType implements Payload.
func (BackupRequested) EventType() Type { return "io.tidemark.backup.requested.v1" }

// BackupAccepted reports that a run was created for a backup request.
type BackupAccepted struct {
	RunID       RunID  `json:"runId"`
	Application string `json:"application"`
	Blueprint   string `json:"blueprint"`
	// Steps lists the planned steps by name, in order.
	Steps []string `json:"steps,omitempty"`
}

// EventType implements Payload.
func (BackupAccepted) EventType() Type { return "io.tidemark.backup.accepted.v1" }

// BackupCompleted reports a finished backup.
type BackupCompleted struct {
	RunID          RunID          `json:"runId"`
	Application    string         `json:"application"`
	RestorePointID RestorePointID `json:"restorePointId"`
	StartedAt      time.Time      `json:"startedAt"`
	FinishedAt     time.Time      `json:"finishedAt"`
	// FreezeWindow is how long the application was quiesced.
	FreezeWindow Duration `json:"freezeWindow"`
	// BytesRead and BytesUploaded show deduplication at work.
	BytesRead     int64 `json:"bytesRead"`
	BytesUploaded int64 `json:"bytesUploaded"`
	// Artifacts, StepOutputs and Consistency are the restore point itself,
	// so recording it depends on this event alone.
	Artifacts   []Artifact                   `json:"artifacts,omitempty"`
	StepOutputs map[string]map[string]string `json:"stepOutputs,omitempty"`
	// Consistency is "application" (quiesced), "application-live"
	// (quiesced, some volumes read in place: RestorePointRecorded),
	// "crash" or "logical".
	Consistency string `json:"consistency,omitempty"`
}

// EventType implements Payload.
func (BackupCompleted) EventType() Type { return "io.tidemark.backup.completed.v1" }

// Compensation is the outcome of one inverse step run after a failure.
type Compensation struct {
	Step string `json:"step"`
	// Outcome is "succeeded", "failed" or "skipped".
	Outcome  string `json:"outcome"`
	Attempts int    `json:"attempts"`
	Error    string `json:"error,omitempty"`
}

// BackupFailed reports a failed backup and what was done to undo it.
type BackupFailed struct {
	RunID       RunID  `json:"runId"`
	Application string `json:"application"`
	// Reason is the first cause, in words a user can act on.
	Reason string `json:"reason"`
	// FailedStep names the step that failed, if one did.
	FailedStep    string         `json:"failedStep,omitempty"`
	Compensations []Compensation `json:"compensations,omitempty"`
}

// EventType implements Payload.
func (BackupFailed) EventType() Type { return "io.tidemark.backup.failed.v1" }

// BackupCancelled reports a cancelled backup.
type BackupCancelled struct {
	RunID         RunID          `json:"runId"`
	Application   string         `json:"application"`
	CancelledBy   string         `json:"cancelledBy,omitempty"`
	Compensations []Compensation `json:"compensations,omitempty"`
}

// EventType implements Payload.
func (BackupCancelled) EventType() Type { return "io.tidemark.backup.cancelled.v1" }

// RunCancelRequested asks for a run to be cancelled and compensated.
type RunCancelRequested struct {
	RunID       RunID  `json:"runId"`
	Reason      string `json:"reason,omitempty"`
	RequestedBy string `json:"requestedBy,omitempty"`
}

// EventType implements Payload.
func (RunCancelRequested) EventType() Type { return "io.tidemark.run.cancel.requested.v1" }

func init() {
	register[BackupRejected](Fact, "A backup request was refused; no run was started.")
	register[RunCompensationFailed](Fact, "An inverse step could not be run after all its retries; a human must act.")
}

// BackupRejected reports a backup request that started no run: another
// backup of the same application is running (requests are rejected, not
// queued, so a schedule that outpaces its backups shows up at once), or the
// request itself is invalid.
type BackupRejected struct {
	Application string `json:"application"`
	// Reason says why, in words a user can act on.
	Reason string `json:"reason"`
	// RunningRunID is the run that is already backing up the application.
	RunningRunID RunID  `json:"runningRunId,omitempty"`
	RequestedBy  string `json:"requestedBy,omitempty"`
}

// EventType implements Payload.
func (BackupRejected) EventType() Type { return "io.tidemark.backup.rejected.v1" }

// RunCompensationFailed is the loud event: an inverse step (an unlock, a
// scale back up) has failed every retry, so the application may still be
// quiesced. The coordinator keeps retrying in the background with backoff.
type RunCompensationFailed struct {
	RunID       RunID  `json:"runId"`
	Application string `json:"application"`
	// Step names the inverse step that failed.
	Step     string `json:"step"`
	Attempts int    `json:"attempts"`
	Error    string `json:"error"`
	// NextRetryAt is when the coordinator tries again.
	NextRetryAt time.Time `json:"nextRetryAt"`
}

// EventType implements Payload.
func (RunCompensationFailed) EventType() Type { return "io.tidemark.run.compensation_failed.v1" }

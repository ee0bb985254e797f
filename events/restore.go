package events

import "time"

func init() {
	register[RestoreRequested](Command, "Asks the coordinator to restore a restore point.")
	register[RestoreAccepted](Fact, "The coordinator accepted a restore request and started a run.")
	register[RestoreCompleted](Fact, "A restore run finished and verified its volumes.")
	register[RestoreFailed](Fact, "A restore run failed; every owed inverse step has been attempted.")
	register[RestoreCancelled](Fact, "A restore run was cancelled and compensated.")
}

// RestoreTarget says where a restore goes.
type RestoreTarget struct {
	// Mode is "new" (a new target beside the original) or "production"
	// (overwrite the original in place).
	Mode string `json:"mode"`
	// Name identifies the new target (a namespace, a directory); empty for
	// production restores.
	Name string `json:"name,omitempty"`
}

// RestoreRequested asks for a restore point to be restored.
type RestoreRequested struct {
	RestorePointID RestorePointID `json:"restorePointId"`
	Target         RestoreTarget  `json:"target"`
	// Only limits the restore to these volumes or artifacts.
	Only []string `json:"only,omitempty"`
	// Params override the blueprint's parameters for the restore's steps,
	// such as the database a logical dump is loaded into.
	Params map[string]string `json:"params,omitempty"`
	// Force lets a restore to new go into a target that is not empty: each
	// volume's directory there is replaced, its previous contents kept
	// beside it.
	Force       bool   `json:"force,omitempty"`
	RequestedBy string `json:"requestedBy,omitempty"`
}

// EventType implements Payload.
func (RestoreRequested) EventType() Type { return "io.tidemark.restore.requested.v1" }

// RestoreAccepted reports that a run was created for a restore request.
type RestoreAccepted struct {
	RunID          RunID          `json:"runId"`
	RestorePointID RestorePointID `json:"restorePointId"`
	Application    string         `json:"application"`
	Target         RestoreTarget  `json:"target"`
}

// EventType implements Payload.
func (RestoreAccepted) EventType() Type { return "io.tidemark.restore.accepted.v1" }

// RestoreCompleted reports a finished, verified restore.
type RestoreCompleted struct {
	RunID          RunID          `json:"runId"`
	RestorePointID RestorePointID `json:"restorePointId"`
	Application    string         `json:"application"`
	Target         RestoreTarget  `json:"target"`
	StartedAt      time.Time      `json:"startedAt"`
	FinishedAt     time.Time      `json:"finishedAt"`
	BytesRestored  int64          `json:"bytesRestored"`
}

// EventType implements Payload.
func (RestoreCompleted) EventType() Type { return "io.tidemark.restore.completed.v1" }

// RestoreFailed reports a failed restore.
type RestoreFailed struct {
	RunID          RunID          `json:"runId"`
	RestorePointID RestorePointID `json:"restorePointId"`
	// Application is empty when the restore point was not found.
	Application   string         `json:"application,omitempty"`
	Reason        string         `json:"reason"`
	FailedStep    string         `json:"failedStep,omitempty"`
	Compensations []Compensation `json:"compensations,omitempty"`
}

// EventType implements Payload.
func (RestoreFailed) EventType() Type { return "io.tidemark.restore.failed.v1" }

// RestoreCancelled reports a cancelled restore.
type RestoreCancelled struct {
	RunID          RunID          `json:"runId"`
	RestorePointID RestorePointID `json:"restorePointId"`
	Application    string         `json:"application"`
	CancelledBy    string         `json:"cancelledBy,omitempty"`
	Compensations  []Compensation `json:"compensations,omitempty"`
}

// EventType implements Payload.
func (RestoreCancelled) EventType() Type { return "io.tidemark.restore.cancelled.v1" }

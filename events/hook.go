package events

import (
	"encoding/json"
	"time"
)

func init() {
	register[HookRequested](Command, "Asks the hookrunner to run one rendered blueprint step.")
	register[HookProgress](Fact, "A running or lock-holding step is alive (heartbeat).")
	register[HookSucceeded](Fact, "A blueprint step succeeded, with its outputs.")
	register[HookFailed](Fact, "A blueprint step failed.")
	register[HookReleaseRequested](Command, "Asks the hookrunner to release a held session lock (thaw).")
	register[HookReleased](Fact, "A held session lock was released, on request or by the dead man's switch.")
}

// HookRequested carries one blueprint step, already rendered, to the hookrunner.
type HookRequested struct {
	RunID       RunID  `json:"runId"`
	Application string `json:"application"`
	Step        string `json:"step"`
	// Kind is the step kind: exec, sql, http, wait, dump, scale, apply.
	Kind string `json:"kind"`
	// Spec holds the kind-specific arguments of the rendered step.
	Spec json.RawMessage `json:"spec"`
	// Timeout bounds the step; the hookrunner stops it when it passes.
	Timeout Duration `json:"timeout"`
	// IdempotencyKey makes a redelivered command a no-op when it already ran.
	IdempotencyKey string `json:"idempotencyKey"`
	// HoldFor, when set, asks the hookrunner to keep the step's session (and
	// its lock) open until released or until this long has passed.
	HoldFor *Duration `json:"holdFor,omitempty"`
}

// EventType implements Payload.
func (HookRequested) EventType() Type { return "io.tidemark.hook.requested.v1" }

// HookProgress is a step's heartbeat.
type HookProgress struct {
	RunID   RunID  `json:"runId"`
	Step    string `json:"step"`
	Message string `json:"message,omitempty"`
	// HeldFor is how long a lock has been held so far, when one is.
	HeldFor *Duration `json:"heldFor,omitempty"`
}

// EventType implements Payload.
func (HookProgress) EventType() Type { return "io.tidemark.hook.progress.v1" }

// HookSucceeded reports a step's success and its named outputs.
type HookSucceeded struct {
	RunID      RunID             `json:"runId"`
	Step       string            `json:"step"`
	Outputs    map[string]string `json:"outputs,omitempty"`
	StartedAt  time.Time         `json:"startedAt"`
	FinishedAt time.Time         `json:"finishedAt"`
	// Holding is true when the step's session stays open holding a lock.
	Holding bool `json:"holding,omitempty"`
	// Holder is the instance id of the hookrunner holding the session; its
	// release must be routed there.
	Holder string `json:"holder,omitempty"`
}

// EventType implements Payload.
func (HookSucceeded) EventType() Type { return "io.tidemark.hook.succeeded.v1" }

// HookFailed reports a failed step.
type HookFailed struct {
	RunID RunID  `json:"runId"`
	Step  string `json:"step"`
	Error string `json:"error"`
	// ExitCode is set for exec steps that ran and exited non-zero.
	ExitCode *int `json:"exitCode,omitempty"`
	// Permanent is true when retrying cannot help (bad arguments, missing target).
	Permanent bool `json:"permanent"`
	// Outputs are what a step that failed after it acted had already
	// changed (a scale step's originalReplicas): the inverse that undoes it
	// is rendered from them.
	Outputs map[string]string `json:"outputs,omitempty"`
}

// EventType implements Payload.
func (HookFailed) EventType() Type { return "io.tidemark.hook.failed.v1" }

// HookReleaseRequested asks for a held session lock to be released.
type HookReleaseRequested struct {
	RunID RunID `json:"runId"`
	// Step names the step whose session holds the lock.
	Step string `json:"step"`
	// Holder is the hookrunner instance holding the session.
	Holder         string `json:"holder"`
	IdempotencyKey string `json:"idempotencyKey"`
	Reason         string `json:"reason,omitempty"`
}

// EventType implements Payload.
func (HookReleaseRequested) EventType() Type { return "io.tidemark.hook.release.requested.v1" }

// Route implements Routed: a release goes to the instance holding the lock.
func (r HookReleaseRequested) Route() string { return r.Holder }

// HookReleased reports that a held lock was let go.
type HookReleased struct {
	RunID   RunID    `json:"runId"`
	Step    string   `json:"step"`
	HeldFor Duration `json:"heldFor"`
	// By is "request" when released on command, "deadline" when HoldFor ran
	// out (the dead man's switch), "disconnect" when the session was already
	// gone (its server ended the lock), "shutdown" when the hookrunner stopped.
	By string `json:"by"`
	// Outputs are the first-row columns of the release statements (for
	// PostgreSQL, pg_backup_stop's labelfile and spcmapfile).
	Outputs map[string]string `json:"outputs,omitempty"`
	// Error is set when the release statements failed; the session was
	// closed anyway, which ends any session-bound lock.
	Error string `json:"error,omitempty"`
}

// EventType implements Payload.
func (HookReleased) EventType() Type { return "io.tidemark.hook.released.v1" }

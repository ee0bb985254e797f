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
}

// EventType implements Payload.
func (HookFailed) EventType() Type { return "io.tidemark.hook.failed.v1" }

// HookReleaseRequested asks for a held session lock to be released.
type HookReleaseRequested struct {
	RunID RunID `json:"runId"`
	// Step names the step whose session holds the lock.
	Step           string `json:"step"`
	IdempotencyKey string `json:"idempotencyKey"`
	Reason         string `json:"reason,omitempty"`
}

// EventType implements Payload.
func (HookReleaseRequested) EventType() Type { return "io.tidemark.hook.release.requested.v1" }

// HookReleased reports that a held lock was let go.
type HookReleased struct {
	RunID   RunID    `json:"runId"`
	Step    string   `json:"step"`
	HeldFor Duration `json:"heldFor"`
	// By is "request" when released on command, "deadline" when HoldFor ran
	// out, "disconnect" when the hookrunner lost its coordinator.
	By string `json:"by"`
}

// EventType implements Payload.
func (HookReleased) EventType() Type { return "io.tidemark.hook.released.v1" }

package platform

import (
	"context"
	"encoding/json"
)

// StepRequest is one step of a kind a platform adds to the blueprint
// language (the Kubernetes platform's scale and apply).
type StepRequest struct {
	// Kind is the step's kind; Spec its rendered spec, as in
	// events.HookRequested.
	Kind string
	Spec json.RawMessage
	// Namespace is the application's namespace, used where the spec names none.
	Namespace string
}

// StepRunner runs the step kinds a platform registers with package
// blueprint. A failure is an error; outputs are the step's output values
// by name.
type StepRunner interface {
	// Kinds lists the kinds RunStep accepts.
	Kinds() []string
	// RunStep runs one step until it is done or ctx (bounded by the step's
	// timeout) ends.
	RunStep(ctx context.Context, req StepRequest) (map[string]string, error)
}

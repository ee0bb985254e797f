package blueprint

import (
	"errors"
	"fmt"
)

var (
	// ErrInvalid is matched (errors.Is) by the Diagnostics that Parse and
	// Lint return: the blueprint itself is wrong, so retrying cannot help.
	ErrInvalid = errors.New("invalid blueprint")
	// ErrTemplate wraps a template that failed to execute: a missing key
	// under missingkey=error, a failing function, a bad type.
	ErrTemplate = errors.New("template failed")
	// ErrCondition is returned when a step's when: renders to something
	// other than "true" or "false".
	ErrCondition = errors.New(`when must render to "true" or "false"`)
	// ErrSpec is returned when the rendered arguments of a step do not
	// make a valid spec for its kind (an empty command, a bad status).
	ErrSpec = errors.New("invalid step arguments")
	// ErrUnknownKind is returned when a step's kind is not registered.
	ErrUnknownKind = errors.New("unknown step kind")
	// ErrUnknownParam is returned when a parameter is set that the
	// blueprint does not declare.
	ErrUnknownParam = errors.New("unknown blueprint parameter")
)

// RenderError says which step and which of its fields failed to render.
// It is permanent: the same context renders the same way again.
type RenderError struct {
	Step string
	// Field is the path inside the step, such as exec.command[2] or when.
	Field string
	Err   error
}

func (e *RenderError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("step %q: %v", e.Step, e.Err)
	}
	return fmt.Sprintf("step %q field %s: %v", e.Step, e.Field, e.Err)
}

func (e *RenderError) Unwrap() error { return e.Err }

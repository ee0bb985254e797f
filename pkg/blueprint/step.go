package blueprint

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/tidemark-dev/tidemark/events"
)

// OnError says what a failing step does to its action.
type OnError string

const (
	// OnErrorFail (the default) stops the action and compensates: every
	// inverse owed so far runs, newest first.
	OnErrorFail OnError = "fail"
	// OnErrorContinue records the failure and goes on with the next step.
	// The step's outputs are then missing, which Lint takes into account.
	OnErrorContinue OnError = "continue"
)

// Retry says how often a failing step is tried again.
type Retry struct {
	// Attempts is how many times the step runs at most, the first included.
	Attempts int `json:"attempts"`
	// Backoff is the pause before the second attempt; it doubles after each
	// further failure.
	Backoff events.Duration `json:"backoff"`
}

// Step is one step of an action as written in the blueprint: its
// kind-specific arguments (Args) are still templates.
//
// In YAML the arguments sit in a block keyed by the kind's name:
//
//	backup:
//	  - name: lock
//	    kind: sql
//	    sql: {connection: primary, statements: ["..."], hold: true, release: ["..."]}
type Step struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	// Args is the kind block as JSON whose strings are templates. It is
	// empty for kinds without arguments (snapshot).
	Args json.RawMessage `json:"-"`
	// Inverse undoes this step. The coordinator owes it from the moment the
	// step is sent, and runs it at the thaw (for steps before the snapshot)
	// or when the action fails.
	Inverse *Step `json:"inverse,omitempty"`
	// NoInverse explains why a step before the snapshot needs no inverse
	// (it only reads). Lint requires an inverse or this reason.
	NoInverse string           `json:"noInverse,omitempty"`
	OnError   OnError          `json:"onError,omitempty"`
	Timeout   *events.Duration `json:"timeout,omitempty"`
	Retry     *Retry           `json:"retry,omitempty"`
	// When is a template rendering to "true" or "false"; the step is
	// skipped when it renders "false".
	When string `json:"when,omitempty"`
	// Outputs names the values the step promises to later steps
	// (.Steps.<name>.Output.<key>).
	Outputs []string `json:"outputs,omitempty"`
}

// stepFields is Step without its methods, for the default JSON coding of
// the fixed fields.
type stepFields Step

// UnmarshalJSON decodes a step strictly: besides the fixed fields, the only
// key allowed is one registered kind's block. Kinds register at init, so
// the set of block keys cannot be a struct field list.
func (s *Step) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	var args json.RawMessage
	fixed := make(map[string]json.RawMessage, len(raw))
	for k, v := range raw {
		if _, ok := LookupKind(k); ok {
			if args != nil {
				return fmt.Errorf("step has more than one kind block")
			}
			args = v
			continue
		}
		fixed[k] = v
	}
	fb, err := json.Marshal(fixed)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(fb))
	dec.DisallowUnknownFields()
	var f stepFields
	if err := dec.Decode(&f); err != nil {
		return err
	}
	*s = Step(f)
	if args != nil && !bytes.Equal(args, []byte("null")) {
		if _, ok := raw[s.Kind]; !ok {
			return fmt.Errorf("step %q of kind %q has an arguments block of another kind", s.Name, s.Kind)
		}
		s.Args = args
	}
	return nil
}

// MarshalJSON writes the step back in the shape it was read in.
func (s Step) MarshalJSON() ([]byte, error) {
	b, err := json.Marshal(stepFields(s))
	if err != nil || len(s.Args) == 0 {
		return b, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	m[s.Kind] = s.Args
	return json.Marshal(m)
}

// HasInverse reports whether the step is undone by something: an explicit
// inverse, or a release the kind runs by itself (a held SQL session).
func (s *Step) HasInverse() bool {
	if s.Inverse != nil {
		return true
	}
	k, ok := LookupKind(s.Kind)
	if !ok || k.ImplicitInverse == nil {
		return false
	}
	spec, err := s.lintSpec(k)
	return err == nil && k.ImplicitInverse(spec)
}

// Holds reports whether the step keeps a session open holding a lock
// until it is released (sql with hold: true).
func (s *Step) Holds() bool {
	k, ok := LookupKind(s.Kind)
	if !ok || k.Holds == nil {
		return false
	}
	spec, err := s.lintSpec(k)
	return err == nil && k.Holds(spec)
}

// PromisedOutputs returns every output name later steps may use: the
// declared outputs plus those the kind implies (an http step's captures).
func (s *Step) PromisedOutputs() []string {
	out := append([]string(nil), s.Outputs...)
	k, ok := LookupKind(s.Kind)
	if !ok || k.Outputs == nil {
		return out
	}
	spec, err := s.lintSpec(k)
	if err != nil {
		return out
	}
	for _, o := range k.Outputs(spec) {
		if !slices.Contains(out, o) {
			out = append(out, o)
		}
	}
	return out
}

// TimeoutOrDefault returns the step's timeout, or DefaultStepTimeout.
func (s *Step) TimeoutOrDefault() events.Duration {
	if s.Timeout == nil {
		return events.Duration(DefaultStepTimeout)
	}
	return *s.Timeout
}

func (s *Step) applyDefaults() {
	if s.OnError == "" {
		s.OnError = OnErrorFail
	}
	if s.Timeout == nil {
		d := s.TimeoutOrDefault()
		s.Timeout = &d
	}
	if s.Inverse != nil {
		if s.Inverse.Name == "" {
			s.Inverse.Name = s.Name + "-inverse"
		}
		s.Inverse.applyDefaults()
	}
}

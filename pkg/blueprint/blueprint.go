package blueprint

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tidemark-dev/tidemark/events"
)

// The only apiVersion and kind a blueprint file may declare today. The
// version is in the file so the format can change without guessing.
const (
	APIVersion    = "tidemark.io/v1alpha1"
	BlueprintKind = "Blueprint"
)

// Action names. A blueprint has backup and restore; delete is optional and
// runs when a restore point expires (to delete what the blueprint made
// outside Tidemark's repository, such as an Elasticsearch snapshot).
const (
	ActionBackup  = "backup"
	ActionRestore = "restore"
	ActionDelete  = "delete"
)

var actionNames = []string{ActionBackup, ActionRestore, ActionDelete}

// Defaults filled in by Parse for fields a blueprint leaves out.
const (
	DefaultMaxFreeze   = 60 * time.Second
	DefaultStepTimeout = 5 * time.Minute
)

// Blueprint says how to make one kind of application consistent. It is a
// Kubernetes-style object so it can become a custom resource later.
type Blueprint struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   Metadata `json:"metadata"`
	Spec       Spec     `json:"spec"`

	// File is the name the blueprint was parsed from; diagnostics carry it.
	File string `json:"-"`
	// pos locates every parsed value, so Lint can report file:line:col.
	pos positions
}

// Metadata names and describes a blueprint.
type Metadata struct {
	// Name is what the tidemark.io/blueprint annotation refers to.
	Name        string            `json:"name"`
	Description string            `json:"description,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Spec is the body of a blueprint.
type Spec struct {
	// MaxFreeze bounds how long the application may stay quiesced; when it
	// passes, the coordinator thaws the application whatever else happens.
	MaxFreeze *events.Duration `json:"maxFreeze,omitempty"`
	// Secrets names the secrets templates may read as .Secrets.<name>. The
	// Application definition says where each one comes from.
	Secrets []string `json:"secrets,omitempty"`
	// Params declares the blueprint's parameters with their defaults
	// (database name, user, repository); templates read them as
	// .Params.<name>, and the Application definition may override them.
	Params map[string]string `json:"params,omitempty"`
	// Actions maps backup, restore and (optionally) delete to their steps.
	Actions map[string]Action `json:"actions"`
}

// Action is an ordered list of steps.
type Action []Step

// Action returns the named action's steps, nil when it has none.
func (b *Blueprint) Action(name string) Action { return b.Spec.Actions[name] }

// MaxFreeze returns spec.maxFreeze, or DefaultMaxFreeze when unset.
func (b *Blueprint) MaxFreeze() time.Duration {
	if b.Spec.MaxFreeze == nil {
		return DefaultMaxFreeze
	}
	return b.Spec.MaxFreeze.Std()
}

// DeclaresSecret reports whether spec.secrets names secret.
func (b *Blueprint) DeclaresSecret(name string) bool {
	return slices.Contains(b.Spec.Secrets, name)
}

// ParamValues returns the blueprint's parameters: the declared defaults,
// overridden by overrides. Overriding a parameter the blueprint does not
// declare is an error, since the blueprint would silently ignore it.
func (b *Blueprint) ParamValues(overrides map[string]string) (map[string]string, error) {
	out := make(map[string]string, len(b.Spec.Params))
	for k, v := range b.Spec.Params {
		out[k] = v
	}
	for _, k := range sortedKeys(overrides) {
		if _, ok := b.Spec.Params[k]; !ok {
			return nil, fmt.Errorf("%w: blueprint %q has no parameter %q (it has: %s)",
				ErrUnknownParam, b.Metadata.Name, k, strings.Join(sortedKeys(b.Spec.Params), ", "))
		}
		out[k] = overrides[k]
	}
	return out, nil
}

// SnapshotIndex returns the index of the action's snapshot step (the
// barrier), or -1 when it has none.
func (a Action) SnapshotIndex() int {
	return slices.IndexFunc(a, func(s Step) bool { return s.Kind == KindSnapshot })
}

// Step returns the step called name, or nil.
func (a Action) Step(name string) *Step {
	for i := range a {
		if a[i].Name == name {
			return &a[i]
		}
	}
	return nil
}

// applyDefaults fills in what the file left out, so that the coordinator
// and `tidemark blueprint show` see the values that will really apply.
func (b *Blueprint) applyDefaults() {
	if b.Spec.MaxFreeze == nil {
		d := events.Duration(DefaultMaxFreeze)
		b.Spec.MaxFreeze = &d
	}
	for _, a := range b.Spec.Actions {
		for i := range a {
			a[i].applyDefaults()
		}
	}
}

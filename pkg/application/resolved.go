package application

import (
	"strings"

	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

// Resolved is what a platform that finds applications in its own API (the
// Kubernetes platform: discovery, the blueprint annotation) found for one,
// in the terms a run needs. An Application read from a file has none: its
// file says all of it.
type Resolved struct {
	// Namespace is the application's namespace.
	Namespace string
	// Volumes maps volume names to what the platform's snapshotter takes
	// (namespace/pvc on Kubernetes).
	Volumes map[string]string
	// Targets are where exec steps can run (pod names on Kubernetes).
	Targets []string
	// Context is the platform's part of the template context.
	Context PlatformContext
}

// PlatformContext is the part of a blueprint's template context only the
// platform knows. It is kept with a run as JSON, so every step of the run
// renders from what was found when it started, even after a scale step took
// the pods away.
type PlatformContext struct {
	// Volumes is .App.Volumes as templates see it (on Kubernetes, each PVC
	// by its name), where it differs from Resolved.Volumes.
	Volumes     map[string]string   `json:"volumes,omitempty"`
	StatefulSet *blueprint.Workload `json:"statefulSet,omitempty"`
	Deployment  *blueprint.Workload `json:"deployment,omitempty"`
	// Object is the object the blueprint is bound to, unstructured.
	Object map[string]any `json:"object,omitempty"`
}

// embeddedPrefix starts a blueprint reference that carries its source. NUL
// never occurs in a file name or a bundled blueprint's name, so no other
// reference can be mistaken for one.
const embeddedPrefix = "\x00embedded-blueprint\x00"

// EmbedBlueprint returns a Spec.Blueprint reference that carries the
// blueprint's source itself. A platform that reads blueprints from its own
// store (Kubernetes' Blueprint objects) hands them over this way, so the
// coordinator keeps the source in the run like a file's and nothing is
// written to disk. name is what diagnostics call it ("Blueprint shop/pg").
func EmbedBlueprint(name string, source []byte) string {
	return embeddedPrefix + name + "\x00" + string(source)
}

// EmbeddedBlueprint returns the name and source of a reference made by
// EmbedBlueprint; ok is false for any other reference.
func EmbeddedBlueprint(ref string) (name string, source []byte, ok bool) {
	rest, ok := strings.CutPrefix(ref, embeddedPrefix)
	if !ok {
		return "", nil, false
	}
	name, src, ok := strings.Cut(rest, "\x00")
	if !ok {
		return "", nil, false
	}
	return name, []byte(src), true
}

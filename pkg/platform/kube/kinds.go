package kube

import (
	"fmt"
	"sort"
	"strings"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

// Step kinds this platform adds to the blueprint language.
const (
	KindScale = "scale"
	KindApply = "apply"
)

// OutputOriginalReplicas is the output of a scale step: the replica count
// the workload had before, for the inverse that restores it.
const OutputOriginalReplicas = "originalReplicas"

// ScaleSpec scales a workload through its scale subresource:
//
//   - name: stop-writers
//     kind: scale
//     scale: {workload: statefulset/web, replicas: 0}
//     inverse:
//     kind: scale
//     scale: {workload: statefulset/web, replicas: "{{ .Steps.stop-writers.Output.originalReplicas }}"}
//
// The step outputs originalReplicas. Unless NoWait is set it waits, within
// the step's timeout, until the workload's pods are gone (replicas 0) or
// ready (replicas > 0).
type ScaleSpec struct {
	// Workload is kind/name: statefulset/NAME or deployment/NAME.
	Workload string `json:"workload"`
	// Namespace defaults to the application's.
	Namespace string `json:"namespace,omitempty"`
	Replicas  int    `json:"replicas"`
	NoWait    bool   `json:"noWait,omitempty"`
}

// ApplySpec creates or updates (server-side apply) one object and reads
// fields of it back:
//
//   - name: backup
//     kind: apply
//     apply:
//     object:
//     apiVersion: psmdb.percona.com/v1
//     kind: PerconaServerMongoDBBackup
//     metadata: {name: "tidemark-{{ .Time.Unix }}"}
//     spec: {clusterName: "{{ .Object.metadata.name }}", storageName: s3}
//     wait: {jsonPath: "{.status.state}", value: ready, failValues: [error]}
//     outputs: {destination: "{.status.destination}"}
//
// Every string of the object is a template rendered on its own, so a
// rendered value is always data and never YAML syntax.
type ApplySpec struct {
	// Object is the manifest. Its namespace defaults to the application's
	// when the kind is namespaced.
	Object map[string]any `json:"object"`
	// Outputs maps output names to JSONPath expressions ("{.status.state}")
	// read from the object after the wait.
	Outputs map[string]string `json:"outputs,omitempty"`
	// Wait, when set, polls the object until a field has a value.
	Wait *ApplyWait `json:"wait,omitempty"`
}

// ApplyWait is the condition an apply step waits for, within the step's
// timeout: a field's value (jsonPath and value) or a CEL expression over
// the object (cel), exactly one of them.
//
//	wait: {jsonPath: "{.status.state}", value: ready, failValues: [error]}
//	wait: {cel: 'object.status.state == "ready" && object.status.destination != ""',
//	       failCEL: 'object.status.state in ["error", "failed"]'}
type ApplyWait struct {
	// JSONPath selects the field ("{.status.state}").
	JSONPath string `json:"jsonPath,omitempty"`
	// Value is what the field must equal for the wait to be over.
	Value string `json:"value,omitempty"`
	// FailValues end the wait at once with a failure (the operator reports
	// that its backup failed): no point waiting out the timeout.
	FailValues []string `json:"failValues,omitempty"`
	// CEL is an expression over the object (named object) that is true
	// when the wait is over. A field it reads that is not there yet
	// (has(object.status) is false) means "not yet".
	CEL string `json:"cel,omitempty"`
	// FailCEL, when true, ends the wait at once with a failure.
	FailCEL  string          `json:"failCEL,omitempty"`
	Interval events.Duration `json:"interval,omitempty"`
}

func init() {
	blueprint.Register(blueprint.Kind{
		Name:    KindScale,
		Doc:     "scale a StatefulSet or Deployment (outputs originalReplicas) and wait for its pods to be gone or ready",
		NewSpec: func() any { return new(ScaleSpec) },
		Check:   func(s any) []blueprint.Problem { return checkScale(s.(*ScaleSpec)) },
		Outputs: func(any) []string { return []string{OutputOriginalReplicas} },
	})
	blueprint.Register(blueprint.Kind{
		Name:    KindApply,
		Doc:     "create or update an object from a templated manifest, wait for a field's value (JSONPath) or a CEL condition, output fields by JSONPath",
		NewSpec: func() any { return new(ApplySpec) },
		Check:   func(s any) []blueprint.Problem { return checkApply(s.(*ApplySpec)) },
		Outputs: func(s any) []string {
			o := s.(*ApplySpec).Outputs
			names := make([]string, 0, len(o))
			for n := range o {
				names = append(names, n)
			}
			sort.Strings(names)
			return names
		},
	})
}

// scaleKinds maps the accepted workload kinds (lower case) to their canonical names.
var scaleKinds = map[string]string{"statefulset": "StatefulSet", "deployment": "Deployment"}

// parseWorkload splits kind/name.
func parseWorkload(s string) (kind, name string, ok bool) {
	k, n, found := strings.Cut(s, "/")
	kind, ok = scaleKinds[strings.ToLower(k)]
	return kind, n, ok && found && n != ""
}

func checkScale(s *ScaleSpec) []blueprint.Problem {
	var ps []blueprint.Problem
	switch {
	case s.Workload == "":
		ps = append(ps, blueprint.Problem{Field: "workload", Message: "is empty", Hint: "name the workload as kind/name, such as statefulset/db"})
	case !blueprint.IsTemplate(s.Workload):
		if _, _, ok := parseWorkload(s.Workload); !ok {
			ps = append(ps, blueprint.Problem{Field: "workload", Message: fmt.Sprintf("%q is not kind/name", s.Workload),
				Hint: "use statefulset/NAME or deployment/NAME, such as statefulset/{{ .StatefulSet.Name }}"})
		}
	}
	if s.Replicas < 0 {
		ps = append(ps, blueprint.Problem{Field: "replicas", Message: fmt.Sprintf("%d is negative", s.Replicas), Hint: "use 0 to stop the workload"})
	}
	return ps
}

func checkApply(s *ApplySpec) []blueprint.Problem {
	var ps []blueprint.Problem
	if len(s.Object) == 0 {
		return append(ps, blueprint.Problem{Field: "object", Message: "is empty", Hint: "give the manifest to apply, with apiVersion, kind and metadata.name"})
	}
	for _, f := range []string{"apiVersion", "kind"} {
		if v, _ := s.Object[f].(string); v == "" {
			ps = append(ps, blueprint.Problem{Field: "object." + f, Message: "is missing", Hint: "every manifest needs apiVersion and kind"})
		}
	}
	md, _ := s.Object["metadata"].(map[string]any)
	if name, _ := md["name"].(string); name == "" {
		ps = append(ps, blueprint.Problem{Field: "object.metadata.name", Message: "is missing", Hint: `name the object, such as "backup-{{ .Time.Unix }}"`})
	}
	for _, n := range sortedKeys(s.Outputs) {
		if p := checkJSONPath(s.Outputs[n]); p != "" {
			ps = append(ps, blueprint.Problem{Field: "outputs." + n, Message: p, Hint: `write a JSONPath in braces, such as "{.status.state}"`})
		}
	}
	if w := s.Wait; w != nil {
		ps = append(ps, checkWaitCondition(w)...)
		if w.Interval < 0 {
			ps = append(ps, blueprint.Problem{Field: "wait.interval", Message: "is negative", Hint: `use a positive duration such as "2s"`})
		}
	}
	return ps
}

func checkWaitCondition(w *ApplyWait) []blueprint.Problem {
	var ps []blueprint.Problem
	switch {
	case w.JSONPath == "" && w.CEL == "":
		return []blueprint.Problem{{Field: "wait", Message: "has no condition",
			Hint: `give jsonPath and value ({jsonPath: "{.status.state}", value: ready}) or cel ({cel: 'object.status.state == "ready"'})`}}
	case w.JSONPath != "" && w.CEL != "":
		return []blueprint.Problem{{Field: "wait", Message: "has both jsonPath and cel", Hint: "keep one of them"}}
	case w.CEL != "":
		if w.Value != "" || len(w.FailValues) > 0 {
			ps = append(ps, blueprint.Problem{Field: "wait.value", Message: "is set with cel", Hint: "value and failValues go with jsonPath; with cel, write the comparison in the expression and failures in failCEL"})
		}
		if p := checkCEL(w.CEL); p != "" {
			ps = append(ps, blueprint.Problem{Field: "wait.cel", Message: p, Hint: `write a CEL expression over object that yields a bool, such as 'has(object.status) && object.status.state == "ready"'`})
		}
	default:
		if p := checkJSONPath(w.JSONPath); p != "" {
			ps = append(ps, blueprint.Problem{Field: "wait.jsonPath", Message: p, Hint: `write a JSONPath in braces, such as "{.status.state}"`})
		}
		if w.Value == "" {
			ps = append(ps, blueprint.Problem{Field: "wait.value", Message: "is empty", Hint: "give the value the field must reach, such as ready"})
		}
	}
	if w.FailCEL != "" {
		if p := checkCEL(w.FailCEL); p != "" {
			ps = append(ps, blueprint.Problem{Field: "wait.failCEL", Message: p, Hint: `write a CEL expression over object that yields a bool, such as 'object.status.state == "error"'`})
		}
	}
	return ps
}

func checkCEL(expr string) string {
	if blueprint.IsTemplate(expr) {
		return ""
	}
	if _, err := compileCEL(expr); err != nil {
		return err.Error()
	}
	return ""
}

func checkJSONPath(expr string) string {
	if blueprint.IsTemplate(expr) {
		return ""
	}
	if _, err := compileJSONPath(expr); err != nil {
		return err.Error()
	}
	return ""
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

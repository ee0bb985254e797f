package kube

import (
	"strings"
	"testing"

	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

// Blueprints using scale and apply parse and lint once this package is
// linked in, and mistakes come back naming the field and the fix.
func TestScaleAndApplyKindsLint(t *testing.T) {
	src := `
apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: k}
spec:
  actions:
    backup:
      - name: stop
        kind: scale
        scale: {workload: "sts/db", replicas: -1}
        inverse:
          kind: scale
          scale: {workload: "statefulset/db", replicas: "{{ .Steps.stop.Output.originalReplicas }}"}
      - name: snap
        kind: snapshot
      - name: cr
        kind: apply
        apply:
          object: {apiVersion: v1, kind: ConfigMap, metadata: {}}
          outputs: {state: ".status.state"}
          wait: {jsonPath: "{.status.state}"}
    restore:
      - name: snap
        kind: snapshot
`
	bp, err := blueprint.Parse("k.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	got := blueprint.Lint(bp).Error()
	for _, want := range []string{
		`"sts/db" is not kind/name`, "statefulset/NAME or deployment/NAME",
		"replicas", "-1 is negative",
		"object.metadata.name", "is missing",
		"outputs.state", "not a JSONPath in braces",
		"wait.value", "is empty",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("lint output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "originalReplicas") {
		t.Errorf("the inverse may use the step's implicit output originalReplicas:\n%s", got)
	}
}

func TestTailBufferKeepsTheLastBytes(t *testing.T) {
	b := &tailBuffer{max: 8}
	for _, s := range []string{"hello ", "world", "!", strings.Repeat("x", 3)} {
		b.Write([]byte(s))
	}
	if got := string(b.Bytes()); got != "orld!xxx" {
		t.Errorf("tail = %q", got)
	}
	b.Write([]byte("0123456789"))
	if got := string(b.Bytes()); got != "23456789" {
		t.Errorf("tail after a long write = %q", got)
	}
}

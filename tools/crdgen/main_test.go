package main

import (
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The committed CRD is what the Go types generate: a field added to
// pkg/blueprint (or a kind registered) without regenerating fails here.
func TestCommittedCRDMatchesTheGoTypes(t *testing.T) {
	ok, _, err := upToDate("../../" + DefaultOutput)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Fatalf("%s is stale: the Blueprint types changed; run go generate ./pkg/platform/kube/ and commit the result", DefaultOutput)
	}
}

func TestSchemaCoversEveryKindAndField(t *testing.T) {
	b, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	var crd map[string]any
	if err := yaml.Unmarshal(b, &crd); err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{"maxFreeze:", "scale:", "apply:", "failCEL:", "replicas:\n", "x-kubernetes-int-or-string: true", "noInverse:", "retry:"} {
		if !strings.Contains(s, want) {
			t.Errorf("generated CRD lacks %q", want)
		}
	}
}

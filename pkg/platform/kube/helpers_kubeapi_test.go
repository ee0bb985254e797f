//go:build kubeapi

package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"sigs.k8s.io/yaml"
)

var (
	listAll = metav1.ListOptions{}
	getOpts = metav1.GetOptions{}
	dbGVR   = schema.GroupVersionResource{Group: "example.tidemark.io", Version: "v1", Resource: "databases"}
)

func parseBlueprint(t *testing.T, src string) *blueprint.Blueprint {
	t.Helper()
	bp, err := blueprint.Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if diags := blueprint.Lint(bp); len(diags) > 0 {
		t.Fatalf("lint: %v", diags)
	}
	return bp
}

func decode[T any](t *testing.T, raw json.RawMessage) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decoding %s: %v", raw, err)
	}
	return v
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// installCRD applies a CRD (tests share the apiserver, so it may exist
// already) and waits until the API serves its kind.
func installCRD(t *testing.T, h *harness, manifest string) {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(manifest), &m); err != nil {
		t.Fatal(err)
	}
	if _, err := h.p.Apply(context.Background(), "", ApplySpec{Object: m}); err != nil {
		t.Fatal(err)
	}
	spec := m["spec"].(map[string]any)
	gk := schema.GroupKind{Group: spec["group"].(string), Kind: spec["names"].(map[string]any)["kind"].(string)}
	waitFor(t, "the CRD to be served", func() bool {
		h.p.c.Mapper.Reset()
		_, err := h.p.c.Mapper.RESTMapping(gk)
		return err == nil
	})
}

package coordinator

import (
	"encoding/json"
	"maps"
	"slices"
	"testing"

	"github.com/tidemark-dev/tidemark/pkg/application"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

// What a platform resolved is part of the run's durable record: a run read
// back (a later transition, another coordinator) renders the same context,
// and .Params shows only the blueprint's parameters.
func TestResolvedApplicationContextSurvivesTheRunRecord(t *testing.T) {
	app := &application.Application{Metadata: application.Metadata{Name: "shop/db"}, Resolved: &application.Resolved{
		Namespace: "shop",
		Volumes:   map[string]string{"data-db-0": "shop/data-db-0"},
		Targets:   []string{"db-0"},
		Context: application.PlatformContext{
			Volumes:     map[string]string{"data-db-0": "data-db-0"},
			StatefulSet: &blueprint.Workload{Name: "db", Namespace: "shop", Pods: []string{"db-0"}, Containers: []string{"postgres"}, PersistentVolumeClaims: []string{"data-db-0"}},
			Object:      map[string]any{"kind": "StatefulSet", "spec": map[string]any{"replicas": 1}},
		},
	}}
	bp := &blueprint.Blueprint{Spec: blueprint.Spec{Params: map[string]string{"database": "postgres"}}}
	info, err := appInfo(app, bp)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(&Run{App: info})
	if err != nil {
		t.Fatal(err)
	}
	var r Run
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(r.App.Volumes, map[string]string{"data-db-0": "shop/data-db-0"}) || r.App.Namespace != "shop" {
		t.Errorf("volumes %v, namespace %q: want what the snapshotter takes", r.App.Volumes, r.App.Namespace)
	}
	tc := r.templateContext(bp)
	if s := tc.StatefulSet; s == nil || s.Name != "db" || !slices.Equal(s.Pods, []string{"db-0"}) || !slices.Equal(s.Containers, []string{"postgres"}) {
		t.Errorf(".StatefulSet = %+v", tc.StatefulSet)
	}
	if spec, _ := tc.Object["spec"].(map[string]any); tc.Object["kind"] != "StatefulSet" || spec["replicas"] != float64(1) {
		t.Errorf(".Object = %v", tc.Object)
	}
	if tc.Namespace != "shop" || !slices.Equal(tc.Targets, []string{"db-0"}) || tc.App.Volumes["data-db-0"] != "data-db-0" {
		t.Errorf(".Namespace %q, .Targets %v, .App.Volumes %v", tc.Namespace, tc.Targets, tc.App.Volumes)
	}
	if !maps.Equal(tc.Params, map[string]string{"database": "postgres"}) {
		t.Errorf(".Params = %v, want the blueprint's parameters only", tc.Params)
	}
}

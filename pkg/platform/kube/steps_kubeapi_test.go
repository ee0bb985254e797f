//go:build kubeapi

package kube

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"github.com/tidemark-dev/tidemark/pkg/platform"
)

const scaleBlueprint = `
apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: stop-db}
spec:
  actions:
    backup:
      - name: stop
        kind: scale
        scale: {workload: "statefulset/{{ .StatefulSet.Name }}", replicas: 0}
        timeout: 20s
        inverse:
          kind: scale
          scale: {workload: "statefulset/{{ .StatefulSet.Name }}", replicas: "{{ .Steps.stop.Output.originalReplicas }}"}
      - name: snap
        kind: snapshot
    restore:
      - name: snap
        kind: snapshot
`

// run renders step and runs it the way the hookrunner will: RunStep with
// the rendered spec, bounded by the step's timeout.
func run(t *testing.T, h *harness, r blueprint.RenderedStep, timeout time.Duration) (map[string]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return h.p.RunStep(ctx, platform.StepRequest{Kind: r.Kind, Spec: r.Spec, Namespace: h.ns})
}

func statefulSetState(t *testing.T, h *harness, name string) (replicas int32, pods int) {
	t.Helper()
	s, err := h.p.c.Core.AppsV1().StatefulSets(h.ns).Get(context.Background(), name, getOpts)
	if err != nil {
		t.Fatal(err)
	}
	l, err := h.p.c.Core.CoreV1().Pods(h.ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + name})
	if err != nil {
		t.Fatal(err)
	}
	return *s.Spec.Replicas, len(l.Items)
}

func TestScaleDownAndInverseAfterFailure(t *testing.T) {
	h := setupDB(t)
	app, err := h.p.Discover(context.Background(), AppSelector{Namespace: h.ns, Selector: "app=db"})
	if err != nil {
		t.Fatal(err)
	}
	tc := app.TemplateContext("db")
	bp := parseBlueprint(t, scaleBlueprint)
	stop := bp.Action("backup").Step("stop")
	r, err := stop.Render(tc)
	if err != nil {
		t.Fatal(err)
	}
	if !r.InverseDeferred {
		t.Fatal("the inverse uses the step's own output, so it must be rendered after the step ran")
	}
	out, err := run(t, h, r, r.Timeout.Std())
	if err != nil {
		t.Fatal(err)
	}
	if out[OutputOriginalReplicas] != "11" {
		t.Fatalf("outputs = %v, want originalReplicas 11", out)
	}
	if rep, pods := statefulSetState(t, h, "db"); rep != 0 || pods != 0 {
		t.Fatalf("after the step: replicas %d, %d pods; the step must return only once the pods are gone", rep, pods)
	}

	// A later step fails (here: the snapshot), so the saga runs the
	// inverse, rendered with the step's outputs.
	tc.Steps = map[string]blueprint.StepResult{"stop": {Output: out}}
	inv, err := stop.RenderInverse(tc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, h, *inv, inv.Timeout.Std()); err != nil {
		t.Fatal(err)
	}
	if rep, pods := statefulSetState(t, h, "db"); rep != 11 || pods != 11 {
		t.Fatalf("after the inverse: replicas %d, %d pods, want 11 and 11", rep, pods)
	}
	s, _ := h.p.c.Core.AppsV1().StatefulSets(h.ns).Get(context.Background(), "db", getOpts)
	if s.Status.ReadyReplicas != 11 {
		t.Errorf("the inverse returned before the pods were ready: %d ready", s.Status.ReadyReplicas)
	}
}

func TestScaleTimesOutButStillReportsOriginalReplicas(t *testing.T) {
	h := setupDB(t)
	// A workload whose pods never stop (a stuck finalizer, a slow shutdown).
	h.workloads.Hold()
	_, err := h.p.RunStep(ctxTimeout(t, 500*time.Millisecond), platform.StepRequest{Kind: KindScale, Namespace: h.ns,
		Spec: []byte(`{"workload":"statefulset/db","replicas":0}`)})
	out, err2 := h.p.runScale(ctxTimeout(t, 500*time.Millisecond), h.ns, ScaleSpec{Workload: "statefulset/db", Replicas: 0})
	for _, e := range []error{err, err2} {
		if !errors.Is(e, ErrTimeout) || !strings.Contains(e.Error(), "StatefulSet "+h.ns+"/db") || !strings.Contains(e.Error(), "last seen: observedGeneration 1 of 2, 11 replicas, 11 ready") {
			t.Fatalf("err = %v, want a timeout naming the StatefulSet and what it last reported", e)
		}
	}
	if out[OutputOriginalReplicas] != "11" {
		t.Errorf("outputs with the timeout = %v: the inverse needs originalReplicas even when waiting failed", out)
	}
	_, err = h.p.RunStep(ctxTimeout(t, time.Second), platform.StepRequest{Kind: KindScale, Namespace: h.ns, Spec: []byte(`{"workload":"statefulset/nope","replicas":0}`)})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "scale.workload") {
		t.Errorf("missing workload: err = %v", err)
	}
}

const backupCRD = `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: backups.example.tidemark.io}
spec:
  group: example.tidemark.io
  scope: Namespaced
  names: {plural: backups, singular: backup, kind: Backup}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
`

var backupGVR = schema.GroupVersionResource{Group: "example.tidemark.io", Version: "v1", Resource: "backups"}

// operator stands in for an operator (Percona's, say): after delay it
// sets the status of every Backup in ns to state, with a destination.
func operator(t *testing.T, h *harness, delay time.Duration, state, message string) {
	go func() {
		time.Sleep(delay)
		ctx := context.Background()
		l, err := h.p.c.Dynamic.Resource(backupGVR).Namespace(h.ns).List(ctx, listAll)
		if err != nil {
			return
		}
		for _, b := range l.Items {
			_ = unstructured.SetNestedField(b.Object, state, "status", "state")
			_ = unstructured.SetNestedField(b.Object, "s3://bucket/"+b.GetName(), "status", "destination")
			if message != "" {
				_ = unstructured.SetNestedField(b.Object, message, "status", "error")
			}
			_, _ = h.p.c.Dynamic.Resource(backupGVR).Namespace(h.ns).UpdateStatus(ctx, &b, metav1.UpdateOptions{})
		}
	}()
}

const applyBlueprint = `
apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: operator-backup}
spec:
  actions:
    backup:
      - name: snap
        kind: snapshot
      - name: backup
        kind: apply
        timeout: 10s
        apply:
          object:
            apiVersion: example.tidemark.io/v1
            kind: Backup
            metadata: {name: "tidemark-{{ .Time.Unix }}"}
            spec: {clusterName: "{{ .App.Name }}", storageName: s3}
          wait: {jsonPath: "{.status.state}", value: ready, failValues: [error], interval: 50ms}
          outputs: {destination: "{.status.destination}"}
    restore:
      - name: snap
        kind: snapshot
`

func TestApplyCustomResourceAndWait(t *testing.T) {
	h := newHarness(t)
	installCRD(t, h, backupCRD)
	bp := parseBlueprint(t, applyBlueprint)
	tc := blueprint.TemplateContext{App: blueprint.App{Name: "mongo", Namespace: h.ns}, Namespace: h.ns, Time: time.Unix(1700000000, 0)}
	r, err := bp.Action("backup").Step("backup").Render(tc)
	if err != nil {
		t.Fatal(err)
	}
	if !slicesEqual(r.Outputs, []string{"destination"}) {
		t.Errorf("promised outputs = %v", r.Outputs)
	}
	operator(t, h, 300*time.Millisecond, "ready", "")
	out, err := run(t, h, r, r.Timeout.Std())
	if err != nil {
		t.Fatal(err)
	}
	if out["destination"] != "s3://bucket/tidemark-1700000000" {
		t.Errorf("outputs = %v", out)
	}
	b, err := h.get(backupGVR, h.ns, "tidemark-1700000000")
	if err != nil {
		t.Fatal(err)
	}
	if v, _, _ := unstructured.NestedString(b.Object, "spec", "clusterName"); v != "mongo" {
		t.Errorf("spec.clusterName = %q, want the rendered app name", v)
	}

	// The operator reports a failure: the step fails at once with its message.
	tc.Time = time.Unix(1700000100, 0)
	r, _ = bp.Action("backup").Step("backup").Render(tc)
	operator(t, h, 200*time.Millisecond, "error", "bucket s3 is not reachable")
	start := time.Now()
	_, err = run(t, h, r, r.Timeout.Std())
	if !errors.Is(err, ErrConditionFailed) || !strings.Contains(err.Error(), "bucket s3 is not reachable") || time.Since(start) > 5*time.Second {
		t.Fatalf("failed backup: err = %v after %v, want ErrConditionFailed with the operator's message, at once", err, time.Since(start))
	}

	// Nobody answers: a timeout saying what was last seen.
	tc.Time = time.Unix(1700000200, 0)
	r, _ = bp.Action("backup").Step("backup").Render(tc)
	_, err = run(t, h, r, 400*time.Millisecond)
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "{.status.state}") {
		t.Fatalf("unanswered backup: err = %v, want ErrTimeout naming the field", err)
	}

	// A kind the cluster does not serve: the error says so.
	_, err = h.p.Apply(ctxTimeout(t, 5*time.Second), h.ns, ApplySpec{Object: map[string]any{"apiVersion": "nope.example/v1", "kind": "Nope", "metadata": map[string]any{"name": "x"}}})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "is its CRD installed?") {
		t.Errorf("unknown kind: err = %v", err)
	}
}

func slicesEqual(a, b []string) bool { return strings.Join(a, "\x00") == strings.Join(b, "\x00") }

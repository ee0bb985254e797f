//go:build kubeapi

package kube

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

func backupObject(name string) map[string]any {
	return map[string]any{
		"apiVersion": "example.tidemark.io/v1", "kind": "Backup",
		"metadata": map[string]any{"name": name},
		"spec":     map[string]any{"clusterName": "mongo", "storageName": "s3"},
	}
}

func TestApplyWaitsForCELCondition(t *testing.T) {
	h := newHarness(t)
	installCRD(t, h, backupCRD)
	ctx := context.Background()

	// The operator answers later; until then status is missing, which
	// the expression reads as "not yet", not as an error.
	operator(t, h, 300*time.Millisecond, "ready", "")
	out, err := h.p.Apply(ctxTimeout(t, 10*time.Second), h.ns, ApplySpec{
		Object: backupObject("cel-ready"),
		Wait: &ApplyWait{
			CEL:     `object.status.state == "ready" && object.status.destination.startsWith("s3://")`,
			FailCEL: `object.status.state in ["error", "failed"]`,
		},
		Outputs: map[string]string{"destination": "{.status.destination}"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if out["destination"] != "s3://bucket/cel-ready" {
		t.Errorf("outputs = %v", out)
	}

	// failCEL ends the wait at once, with the operator's message.
	h2 := newHarness(t)
	operator(t, h2, 200*time.Millisecond, "failed", "no space left on the bucket")
	_, err = h2.p.Apply(ctxTimeout(t, 10*time.Second), h2.ns, ApplySpec{
		Object: backupObject("cel-failed"),
		Wait:   &ApplyWait{CEL: `object.status.state == "ready"`, FailCEL: `object.status.state in ["error", "failed"]`},
	})
	if !errors.Is(err, ErrConditionFailed) || !strings.Contains(err.Error(), "failCEL") || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("failCEL: err = %v", err)
	}

	// Nobody answers: the timeout names the expression and why it was not yet true.
	_, err = h.p.Apply(ctxTimeout(t, 300*time.Millisecond), h.ns, ApplySpec{Object: backupObject("cel-silent"), Wait: &ApplyWait{CEL: `object.status.state == "ready"`}})
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), `object.status.state == \"ready\"`) || !strings.Contains(err.Error(), "no such key") {
		t.Fatalf("unanswered: err = %v", err)
	}

	// Bad expressions are refused before anything is created, naming the field.
	for _, c := range []struct {
		wait  ApplyWait
		field string
	}{
		{ApplyWait{CEL: `object.status.state ==`}, "apply.wait.cel"},
		{ApplyWait{CEL: `size(object.spec) + 1`}, "apply.wait.cel"},
		{ApplyWait{CEL: `object.status.state == "ready"`, FailCEL: `object.status.state = "error"`}, "apply.wait.failCEL"},
		{ApplyWait{CEL: `true`, Value: "ready"}, "apply.wait.value"},
		{ApplyWait{CEL: `true`, JSONPath: "{.status.state}"}, "apply.wait"},
		{ApplyWait{}, "apply.wait"},
	} {
		_, err := h.p.Apply(ctxTimeout(t, 5*time.Second), h.ns, ApplySpec{Object: backupObject("never-created"), Wait: &c.wait})
		if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), c.field+" ") {
			t.Errorf("wait %+v: err = %v, want ErrInvalidSpec naming %s", c.wait, err, c.field)
		}
	}
	if _, err := h.get(backupGVR, h.ns, "never-created"); !apierrors.IsNotFound(err) {
		t.Errorf("a step with a bad expression created its object: %v", err)
	}
	_ = ctx

	// Lint reports the same problem with the blueprint's position.
	bp, err := blueprint.Parse("bad-cel.yaml", []byte(`
apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: bad-cel}
spec:
  actions:
    backup:
      - name: snap
        kind: snapshot
      - name: backup
        kind: apply
        apply:
          object: {apiVersion: example.tidemark.io/v1, kind: Backup, metadata: {name: b}}
          wait: {cel: 'object.status.state === "ready"'}
    restore:
      - name: snap
        kind: snapshot
`))
	if err != nil {
		t.Fatal(err)
	}
	diags := blueprint.Lint(bp)
	if len(diags) != 1 || !strings.Contains(diags.Error(), "wait.cel") || !strings.Contains(diags.Error(), "bad-cel.yaml:14") {
		t.Errorf("lint = %v, want one problem at bad-cel.yaml:14 naming wait.cel", diags)
	}
}

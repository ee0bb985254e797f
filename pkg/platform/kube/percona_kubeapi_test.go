//go:build kubeapi

package kube

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/tidemark-dev/tidemark/blueprints"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

// perconaStandInCRDs are a TEST-ONLY STAND-IN for the Percona operator's
// CRDs: the same group, version and kinds as psmdb.percona.com/v1, with
// the schema reduced to "any fields", so the bundled blueprint's objects
// are accepted as they would be by the real CRDs. No operator runs; see
// perconaOperatorStandIn.
var perconaStandInCRDs = []string{`
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: perconaservermongodbbackups.psmdb.percona.com}
spec:
  group: psmdb.percona.com
  scope: Namespaced
  names: {plural: perconaservermongodbbackups, singular: perconaservermongodbbackup, kind: PerconaServerMongoDBBackup, shortNames: [psmdb-backup]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
`, `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: perconaservermongodbrestores.psmdb.percona.com}
spec:
  group: psmdb.percona.com
  scope: Namespaced
  names: {plural: perconaservermongodbrestores, singular: perconaservermongodbrestore, kind: PerconaServerMongoDBRestore, shortNames: [psmdb-restore]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
`}

var (
	psmdbBackupGVR  = schema.GroupVersionResource{Group: "psmdb.percona.com", Version: "v1", Resource: "perconaservermongodbbackups"}
	psmdbRestoreGVR = schema.GroupVersionResource{Group: "psmdb.percona.com", Version: "v1", Resource: "perconaservermongodbrestores"}
)

// perconaOperatorStandIn is a TEST-ONLY STAND-IN for the Percona
// operator: every object of gvr in ns without a status gets the status
// the operator reports at the end (state, and for backups the
// destination). It moves no data.
func perconaOperatorStandIn(t *testing.T, h *harness, gvr schema.GroupVersionResource, state, errMsg string) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			l, err := h.p.c.Dynamic.Resource(gvr).Namespace(h.ns).List(ctx, listAll)
			if err == nil {
				for _, o := range l.Items {
					if _, has := o.Object["status"]; has {
						continue
					}
					st := map[string]any{"state": state}
					if gvr == psmdbBackupGVR {
						st["destination"] = "s3://psmdb-backups/" + o.GetName()
					}
					if errMsg != "" {
						st["error"] = errMsg
					}
					o.Object["status"] = st
					_, _ = h.p.c.Dynamic.Resource(gvr).Namespace(h.ns).UpdateStatus(ctx, &o, metav1.UpdateOptions{})
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
}

func perconaBlueprint(t *testing.T) *blueprint.Blueprint {
	t.Helper()
	data, err := blueprints.Kubernetes.ReadFile("percona-psmdb/blueprint.kube.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bp, err := blueprint.Parse("percona-psmdb/blueprint.kube.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if diags := blueprint.Lint(bp); diags != nil {
		t.Fatalf("lint:\n%v", diags)
	}
	return bp
}

// The Kubernetes-only bundled blueprints meet the bar pkg/blueprint sets
// for the others: lint clean, named after their directory, a README that
// says what consistency they give and what was tested, embedded as on disk.
func TestKubernetesBundledBlueprintsLintAndAreDocumented(t *testing.T) {
	bp := perconaBlueprint(t)
	if bp.Metadata.Name != "percona-psmdb" {
		t.Errorf("metadata.name %q", bp.Metadata.Name)
	}
	readme, err := os.ReadFile("../../../blueprints/percona-psmdb/README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"onsisten", "ested"} {
		if !strings.Contains(string(readme), want) {
			t.Errorf("README.md lacks %q", want)
		}
	}
	onDisk, err := os.ReadFile("../../../blueprints/percona-psmdb/blueprint.kube.yaml")
	embedded, _ := blueprints.Kubernetes.ReadFile("percona-psmdb/blueprint.kube.yaml")
	if err != nil || string(onDisk) != string(embedded) {
		t.Errorf("the embedded copy differs from the file (%v)", err)
	}
}

func TestPerconaBlueprintBackupAndRestore(t *testing.T) {
	h := newHarness(t)
	for _, crd := range perconaStandInCRDs {
		installCRD(t, h, crd)
	}
	bp := perconaBlueprint(t)
	cluster := map[string]any{"apiVersion": "psmdb.percona.com/v1", "kind": "PerconaServerMongoDB",
		"metadata": map[string]any{"name": "orders", "namespace": h.ns}}
	params, _ := bp.ParamValues(map[string]string{"storageName": "minio"})
	tc := blueprint.TemplateContext{App: blueprint.App{Name: "orders", Namespace: h.ns}, Namespace: h.ns,
		Object: cluster, Params: params, Steps: map[string]blueprint.StepResult{}, Time: time.Unix(1767225600, 0)}

	perconaOperatorStandIn(t, h, psmdbBackupGVR, "ready", "")
	r, err := bp.Action(blueprint.ActionBackup).Step("backup").Render(tc)
	if err != nil {
		t.Fatal(err)
	}
	out, err := run(t, h, r, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if out["backupName"] != "tidemark-orders-1767225600" || out["destination"] != "s3://psmdb-backups/tidemark-orders-1767225600" {
		t.Fatalf("backup outputs = %v", out)
	}
	b, err := h.get(psmdbBackupGVR, h.ns, out["backupName"])
	if err != nil {
		t.Fatal(err)
	}
	spec, _, _ := unstructured.NestedStringMap(b.Object, "spec")
	if spec["clusterName"] != "orders" || spec["storageName"] != "minio" || spec["type"] != "logical" {
		t.Errorf("PerconaServerMongoDBBackup spec = %v", spec)
	}

	perconaOperatorStandIn(t, h, psmdbRestoreGVR, "ready", "")
	rtc := tc
	rtc.Time = time.Unix(1767229200, 0)
	rtc.Backup = &blueprint.BackupRecord{Steps: map[string]blueprint.StepResult{"backup": {Output: out}}, Time: tc.Time}
	r, err = bp.Action(blueprint.ActionRestore).Step("restore").Render(rtc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, h, r, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	rs, err := h.get(psmdbRestoreGVR, h.ns, "tidemark-orders-1767229200")
	if err != nil {
		t.Fatal(err)
	}
	if v, _, _ := unstructured.NestedString(rs.Object, "spec", "backupName"); v != out["backupName"] {
		t.Errorf("restore spec.backupName = %q, want %q", v, out["backupName"])
	}
}

func TestPerconaBlueprintBackupRejectedByTheOperator(t *testing.T) {
	h := newHarness(t)
	for _, crd := range perconaStandInCRDs {
		installCRD(t, h, crd)
	}
	bp := perconaBlueprint(t)
	params, _ := bp.ParamValues(nil)
	tc := blueprint.TemplateContext{Namespace: h.ns, Params: params, Time: time.Unix(1767225600, 0),
		Object: map[string]any{"metadata": map[string]any{"name": "orders"}}}
	perconaOperatorStandIn(t, h, psmdbBackupGVR, "error", "storage s3 is not defined in the cluster's spec.backup.storages")
	r, err := bp.Action(blueprint.ActionBackup).Step("backup").Render(tc)
	if err != nil {
		t.Fatal(err)
	}
	_, err = run(t, h, r, 20*time.Second)
	if !errors.Is(err, ErrConditionFailed) || !strings.Contains(err.Error(), "is not defined in the cluster's spec.backup.storages") {
		t.Fatalf("err = %v, want ErrConditionFailed with the operator's status.error", err)
	}
}

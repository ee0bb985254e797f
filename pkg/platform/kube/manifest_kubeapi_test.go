//go:build kubeapi

package kube

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
)

// captureDB discovers the db application (plus a ClusterIP Service and a
// ConfigMap owned by the StatefulSet, without being its controller) and
// captures its manifests.
func captureDB(t *testing.T) (*harness, []*unstructured.Unstructured) {
	t.Helper()
	h := setupDB(t)
	ctx := context.Background()
	h.apply(`
apiVersion: v1
kind: Service
metadata: {name: db-rw, labels: {app: db}}
spec:
  type: NodePort
  selector: {app: db}
  ports: [{port: 5432}]
`)
	sts, err := h.p.c.Core.AppsV1().StatefulSets(h.ns).Get(ctx, "db", getOpts)
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.p.c.Core.CoreV1().ConfigMaps(h.ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
		Name: "db-scripts", Labels: map[string]string{"app": "db"},
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "db", UID: sts.UID}},
	}, Data: map[string]string{"init.sql": "select 1"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	app, err := h.p.Discover(ctx, AppSelector{Namespace: h.ns, Selector: "app=db"})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := h.p.CaptureManifests(ctx, app)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := ParseManifests(bundle)
	if err != nil {
		t.Fatal(err)
	}
	return h, objs
}

func TestManifestCaptureStripsServerFields(t *testing.T) {
	h, objs := captureDB(t)
	var order []string
	for _, o := range objs {
		order = append(order, o.GetKind()+"/"+o.GetName())
		for _, f := range []string{"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "ownerReferences"} {
			if _, found, _ := unstructured.NestedFieldNoCopy(o.Object, "metadata", f); found {
				t.Errorf("%s %s: metadata.%s was captured", o.GetKind(), o.GetName(), f)
			}
		}
		if _, found, _ := unstructured.NestedFieldNoCopy(o.Object, "status"); found {
			t.Errorf("%s %s: status was captured", o.GetKind(), o.GetName())
		}
		switch o.GetKind() {
		case "PersistentVolumeClaim":
			if v, _, _ := unstructured.NestedString(o.Object, "spec", "volumeName"); v != "" {
				t.Errorf("PVC %s: spec.volumeName %q was captured; a restored claim must bind a new volume", o.GetName(), v)
			}
		case "Service":
			ip, _, _ := unstructured.NestedString(o.Object, "spec", "clusterIP")
			_, hasIPs, _ := unstructured.NestedFieldNoCopy(o.Object, "spec", "clusterIPs")
			ports, _, _ := unstructured.NestedSlice(o.Object, "spec", "ports")
			_, hasNodePort := ports[0].(map[string]any)["nodePort"]
			switch {
			case o.GetName() == "db" && ip != "None":
				t.Errorf("headless Service db: clusterIP %q, want None kept (it is the user's choice)", ip)
			case o.GetName() == "db-rw" && (ip != "" || hasIPs || hasNodePort):
				t.Errorf("Service db-rw: clusterIP %q clusterIPs %v nodePort %v were captured; the cluster allocates them", ip, hasIPs, hasNodePort)
			}
		case "ConfigMap":
			if o.GetName() == "db-scripts" {
				if a := o.GetAnnotations()[AnnotationOwners]; !strings.Contains(a, `"name":"db"`) || strings.Contains(a, `"uid":"`) && !strings.Contains(a, `"uid":""`) {
					t.Errorf("db-scripts: owner annotation %q, want the StatefulSet without its (old) uid", a)
				}
			}
		}
	}
	// Dependency order: the namespace, identities and RBAC, configuration,
	// claims, then workloads, then Services.
	idx := func(s string) int {
		i := slices.Index(order, s)
		if i < 0 {
			t.Fatalf("%s not captured: %v", s, order)
		}
		return i
	}
	chain := []string{"Namespace/" + h.ns, "ServiceAccount/db", "Role/db", "RoleBinding/db", "Secret/db-credentials", "ConfigMap/db-config", "PersistentVolumeClaim/data-db-0", "StatefulSet/db", "Service/db"}
	for i := 1; i < len(chain); i++ {
		if idx(chain[i-1]) > idx(chain[i]) {
			t.Errorf("%s comes after %s in %v", chain[i-1], chain[i], order)
		}
	}
	if _, err := ParseManifests([]byte(`{"apiVersion":"v1","kind":"List","items":[{"kind":"ConfigMap"}]}`)); !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), "items[0]") {
		t.Errorf("a bundle item without apiVersion: err = %v", err)
	}
}

func TestManifestRestoreIntoNewNamespaceWithModifiers(t *testing.T) {
	h, objs := captureDB(t)
	ctx := context.Background()
	to := h.ns + "-restored"
	if len(to) > 63 {
		to = to[len(to)-63:]
	}
	opts := RestoreOptions{
		NamespaceMapping: map[string]string{h.ns: to},
		Modifiers: []ResourceModifier{
			{Match: ResourceMatch{Group: "core", Kind: "PersistentVolumeClaim", Name: "data-db-.*"},
				JSONPatch: json.RawMessage(`[{"op":"replace","path":"/spec/storageClassName","value":"premium"}]`)},
			{Match: ResourceMatch{Group: "apps", Kind: "statefulset", LabelSelector: "app=db"},
				MergePatch: json.RawMessage(`{"metadata":{"labels":{"restored":"yes"}}}`)},
			// Matches nothing: a Deployment of that name is not in the bundle.
			{Match: ResourceMatch{Kind: "Deployment", Name: "db"}, MergePatch: json.RawMessage(`{"spec":{"replicas":0}}`)},
		},
	}
	// Bad options fail before anything is created, naming the field.
	bad := opts
	bad.Modifiers = append(slices.Clone(opts.Modifiers), ResourceModifier{Match: ResourceMatch{Name: "data-("}, MergePatch: json.RawMessage(`{}`)})
	if _, err := h.p.RestoreManifests(ctx, objs, bad); !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), "resourceModifiers[3].match.name") {
		t.Fatalf("bad regex: err = %v, want ErrInvalidSpec naming resourceModifiers[3].match.name", err)
	}
	bad.Modifiers = []ResourceModifier{{Match: ResourceMatch{Kind: "PersistentVolumeClaim"}, JSONPatch: json.RawMessage(`[{"op":"swap","path":"/spec"}]`)}}
	if _, err := h.p.RestoreManifests(ctx, objs, bad); !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), "resourceModifiers[0].jsonPatch[0].op") {
		t.Fatalf("bad op: err = %v", err)
	}
	bad = RestoreOptions{ExistingResourcePolicy: "overwrite"}
	if _, err := h.p.RestoreManifests(ctx, objs, bad); !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), "existingResourcePolicy") {
		t.Fatalf("bad policy: err = %v", err)
	}
	if _, err := h.p.c.Core.CoreV1().Namespaces().Get(ctx, to, getOpts); err == nil {
		t.Fatal("invalid options created the target namespace")
	}

	rep, err := h.p.RestoreManifests(ctx, objs, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	if n := rep.Count(RestoreCreated); n != len(objs) {
		t.Errorf("created %d of %d objects: %v", n, len(objs), rep.Objects)
	}
	for _, r := range rep.Objects {
		if r.Kind != "Namespace" && r.Namespace != to {
			t.Errorf("%v restored outside %s", r, to)
		}
	}
	core := h.p.c.Core.CoreV1()
	pvc, err := core.PersistentVolumeClaims(to).Get(ctx, "data-db-3", getOpts)
	if err != nil {
		t.Fatal(err)
	}
	if *pvc.Spec.StorageClassName != "premium" || pvc.Spec.VolumeName != "" {
		t.Errorf("restored PVC: storageClassName %q volumeName %q, want premium (modifier) and unbound", *pvc.Spec.StorageClassName, pvc.Spec.VolumeName)
	}
	sts, err := h.p.c.Core.AppsV1().StatefulSets(to).Get(ctx, "db", getOpts)
	if err != nil {
		t.Fatal(err)
	}
	if sts.Labels["restored"] != "yes" || *sts.Spec.Replicas != 11 || sts.Annotations[AnnotationBlueprint] != "postgres-physical" {
		t.Errorf("restored StatefulSet: labels %v replicas %d annotations %v", sts.Labels, *sts.Spec.Replicas, sts.Annotations)
	}
	svc, err := core.Services(to).Get(ctx, "db-rw", getOpts)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := core.Services(h.ns).Get(ctx, "db-rw", getOpts)
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == old.Spec.ClusterIP {
		t.Errorf("restored Service clusterIP %q (source %q): want a newly allocated one", svc.Spec.ClusterIP, old.Spec.ClusterIP)
	}
	rb, err := h.p.c.Core.RbacV1().RoleBindings(to).Get(ctx, "db", getOpts)
	if err != nil {
		t.Fatal(err)
	}
	if rb.Subjects[0].Namespace != "" && rb.Subjects[0].Namespace != to {
		t.Errorf("RoleBinding subject namespace %q, want %q", rb.Subjects[0].Namespace, to)
	}
	sec, err := core.Secrets(to).Get(ctx, "db-credentials", getOpts)
	if err != nil || string(sec.Data["password"]) != "s3cret" {
		t.Errorf("restored Secret: %v %v", sec, err)
	}
	cm, err := core.ConfigMaps(to).Get(ctx, "db-scripts", getOpts)
	if err != nil {
		t.Fatal(err)
	}
	if len(cm.OwnerReferences) != 1 || cm.OwnerReferences[0].UID != sts.UID || cm.Annotations[AnnotationOwners] != "" {
		t.Errorf("db-scripts owners %v annotations %v: want the restored StatefulSet (uid %s)", cm.OwnerReferences, cm.Annotations, sts.UID)
	}
	if pods, _ := core.Pods(to).List(ctx, listAll); len(pods.Items) != 0 {
		t.Errorf("%d pods restored: pods of a StatefulSet are its controller's to make", len(pods.Items))
	}
}

func TestManifestRestoreExistingPolicy(t *testing.T) {
	h, objs := captureDB(t)
	ctx := context.Background()
	core := h.p.c.Core.CoreV1()
	// Drift since the backup: a changed ConfigMap, a deleted Secret.
	_, err := core.ConfigMaps(h.ns).Patch(ctx, "db-config", types.MergePatchType, []byte(`{"data":{"postgresql.conf":"wal_level = minimal"}}`), metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := core.Secrets(h.ns).Delete(ctx, "db-credentials", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	rep, err := h.p.RestoreManifests(ctx, objs, RestoreOptions{ExistingResourcePolicy: ExistingSkip})
	if err != nil {
		t.Fatal(err)
	}
	if r := rep.Find("Secret", "db-credentials"); r == nil || r.Action != RestoreCreated {
		t.Errorf("deleted Secret: %v, want created", r)
	}
	if r := rep.Find("ConfigMap", "db-config"); r == nil || r.Action != RestoreSkipped || !strings.Contains(r.Reason, "skip") {
		t.Errorf("changed ConfigMap under skip: %v", r)
	}
	if rep.Count(RestoreSkipped) != len(objs)-1 || rep.Err() != nil {
		t.Errorf("skip: %d skipped of %d, err %v: %v", rep.Count(RestoreSkipped), len(objs), rep.Err(), rep.Objects)
	}
	cm, _ := core.ConfigMaps(h.ns).Get(ctx, "db-config", getOpts)
	if cm.Data["postgresql.conf"] != "wal_level = minimal" {
		t.Errorf("skip changed the ConfigMap: %v", cm.Data)
	}

	// update: the captured ConfigMap wins; a PVC whose immutable
	// storageClassName would change fails alone, with the server's reason.
	rep, err = h.p.RestoreManifests(ctx, objs, RestoreOptions{ExistingResourcePolicy: ExistingUpdate, Modifiers: []ResourceModifier{
		{Match: ResourceMatch{Kind: "PersistentVolumeClaim", Name: "data-db-0"}, MergePatch: json.RawMessage(`{"spec":{"storageClassName":"premium"}}`)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	cm, _ = core.ConfigMaps(h.ns).Get(ctx, "db-config", getOpts)
	if cm.Data["postgresql.conf"] != "wal_level = replica" {
		t.Errorf("update left the ConfigMap at %v", cm.Data)
	}
	if r := rep.Find("ConfigMap", "db-config"); r == nil || r.Action != RestoreUpdated {
		t.Errorf("ConfigMap under update: %v", r)
	}
	r := rep.Find("PersistentVolumeClaim", "data-db-0")
	if r == nil || r.Action != RestoreFailed || !strings.Contains(r.Reason, "immutable") {
		t.Errorf("PVC with a changed storageClassName: %v, want failed with the apiserver's reason", r)
	}
	if !errors.Is(rep.Err(), ErrRestoreIncomplete) || !strings.Contains(rep.Err().Error(), "data-db-0") || rep.Count(RestoreFailed) != 1 {
		t.Errorf("report err = %v (%d failed)", rep.Err(), rep.Count(RestoreFailed))
	}
	if r := rep.Find("PersistentVolumeClaim", "data-db-1"); r == nil || r.Action != RestoreUpdated {
		t.Errorf("an unchanged bound PVC under update: %v (its volumeName was not captured, so applying must not unbind it)", r)
	}
	pvc, _ := core.PersistentVolumeClaims(h.ns).Get(ctx, "data-db-1", getOpts)
	if pvc.Spec.VolumeName == "" {
		t.Error("update unbound data-db-1")
	}
}

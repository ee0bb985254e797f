package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The manifest bundle is a Kubernetes List (apiVersion v1, kind List) in
// JSON: the datamover stores it as an artifact of the restore point, and
// it stays readable (and applicable) with kubectl.
const (
	// ManifestArtifact is the artifact name the bundle is stored under.
	ManifestArtifact = "kubernetes-manifests.json"
	// AnnotationOwners keeps, on a captured object, the owner references
	// to other objects of the bundle. The owners get new UIDs when they are
	// restored, so the references are rewritten then (see Restore).
	AnnotationOwners = "tidemark.io/owner-references"
)

// serverSetAnnotations are annotations the control plane writes: they
// describe where an object ran (a bound volume, a scheduled node), not
// what the user asked for, and would mislead a restore.
var serverSetAnnotations = []string{
	"pv.kubernetes.io/bind-completed",
	"pv.kubernetes.io/bound-by-controller",
	"pv.kubernetes.io/migrated-to",
	"volume.beta.kubernetes.io/storage-provisioner",
	"volume.kubernetes.io/storage-provisioner",
	"volume.kubernetes.io/selected-node",
	"deployment.kubernetes.io/revision",
	"kubectl.kubernetes.io/last-applied-configuration",
}

// CaptureManifests returns the application's objects as a manifest bundle:
// every object discovery found (app.Objects), plus the application's
// Namespace and the CustomResourceDefinitions of its custom resources, so
// a restore into an empty cluster has what they need. Server-set fields
// are stripped (see CleanObject); the objects are in restore order.
func (p *Platform) CaptureManifests(ctx context.Context, app *Application) ([]byte, error) {
	var objs []*unstructured.Unstructured
	ns, err := p.c.Dynamic.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}).Get(ctx, app.Namespace, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("capturing namespace %s: %w", app.Namespace, err)
	}
	ns.SetAPIVersion("v1")
	ns.SetKind("Namespace")
	objs = append(objs, ns)
	crds, err := p.crdsOf(ctx, app.Objects)
	if err != nil {
		return nil, err
	}
	objs = append(objs, crds...)
	objs = append(objs, app.Objects...)
	return MarshalManifests(objs)
}

// crdsOf returns the CustomResourceDefinitions serving the kinds of objs.
func (p *Platform) crdsOf(ctx context.Context, objs []*unstructured.Unstructured) ([]*unstructured.Unstructured, error) {
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	seen := map[string]bool{}
	var out []*unstructured.Unstructured
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		if gvk.Group == "" {
			continue // the core group has no CRDs
		}
		m, err := p.c.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			continue
		}
		name := m.Resource.Resource + "." + gvk.Group
		if seen[name] {
			continue
		}
		seen[name] = true
		crd, err := p.c.Dynamic.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue // a built-in or aggregated API, not a CRD
		}
		if err != nil {
			return nil, fmt.Errorf("capturing CustomResourceDefinition %s: %w", name, err)
		}
		crd.SetAPIVersion("apiextensions.k8s.io/v1")
		crd.SetKind("CustomResourceDefinition")
		out = append(out, crd)
	}
	return out, nil
}

// MarshalManifests cleans objs (CleanObject), sorts them in restore order
// and returns them as a bundle. Owner references to objects outside objs
// are dropped: what owned them is regenerated or not part of the
// application.
func MarshalManifests(objs []*unstructured.Unstructured) ([]byte, error) {
	in := map[string]bool{}
	for _, o := range objs {
		in[ownerKey(o.GetAPIVersion(), o.GetKind(), o.GetName())] = true
	}
	items := make([]*unstructured.Unstructured, 0, len(objs))
	for _, o := range objs {
		c := o.DeepCopy()
		var keep []metav1.OwnerReference
		for _, r := range c.GetOwnerReferences() {
			if in[ownerKey(r.APIVersion, r.Kind, r.Name)] {
				r.UID = ""
				keep = append(keep, r)
			}
		}
		c.SetOwnerReferences(nil)
		CleanObject(c)
		if len(keep) > 0 {
			b, err := json.Marshal(keep)
			if err != nil {
				return nil, err
			}
			ann := c.GetAnnotations()
			if ann == nil {
				ann = map[string]string{}
			}
			ann[AnnotationOwners] = string(b)
			c.SetAnnotations(ann)
		}
		items = append(items, c)
	}
	sortForRestore(items)
	list := map[string]any{"apiVersion": "v1", "kind": "List", "items": toMaps(items)}
	return json.MarshalIndent(list, "", " ")
}

func toMaps(objs []*unstructured.Unstructured) []any {
	out := make([]any, len(objs))
	for i, o := range objs {
		out[i] = o.Object
	}
	return out
}

// ParseManifests reads a bundle made by MarshalManifests (or any v1 List
// of objects), checking every item names its apiVersion, kind and name.
func ParseManifests(data []byte) ([]*unstructured.Unstructured, error) {
	var list struct {
		APIVersion string           `json:"apiVersion"`
		Kind       string           `json:"kind"`
		Items      []map[string]any `json:"items"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("%w: manifest bundle: %v", ErrInvalidSpec, err)
	}
	if list.APIVersion != "v1" || list.Kind != "List" {
		return nil, fmt.Errorf("%w: manifest bundle: apiVersion %q kind %q, want a v1 List (made by CaptureManifests)", ErrInvalidSpec, list.APIVersion, list.Kind)
	}
	out := make([]*unstructured.Unstructured, 0, len(list.Items))
	for i, m := range list.Items {
		o := &unstructured.Unstructured{Object: m}
		if o.GetAPIVersion() == "" || o.GetKind() == "" || o.GetName() == "" {
			return nil, fmt.Errorf("%w: manifest bundle: items[%d] lacks apiVersion, kind or metadata.name", ErrInvalidSpec, i)
		}
		out = append(out, o)
	}
	return out, nil
}

// CleanObject removes what the API server set on o, in place, so o can be
// created again elsewhere: uid, resourceVersion, generation,
// creationTimestamp, managedFields and the like, status, a Service's
// allocated cluster IPs and node ports, a PVC's bound volume, a pod's
// node and injected service account token volume, a Job's generated
// selector, and annotations the control plane writes. A StatefulSet or
// Deployment a scale step stopped (AnnotationScaledFrom) gets back the
// replica count it had.
func CleanObject(o *unstructured.Unstructured) {
	for _, f := range []string{"uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
		"deletionGracePeriodSeconds", "managedFields", "selfLink"} {
		unstructured.RemoveNestedField(o.Object, "metadata", f)
	}
	unstructured.RemoveNestedField(o.Object, "status")
	if ann := o.GetAnnotations(); len(ann) > 0 {
		for _, a := range serverSetAnnotations {
			delete(ann, a)
		}
		setAnnotations(o, ann)
	}
	switch o.GroupVersionKind().GroupKind() {
	case schema.GroupKind{Kind: "Namespace"}:
		unstructured.RemoveNestedField(o.Object, "spec", "finalizers")
		if l := o.GetLabels(); l != nil {
			delete(l, "kubernetes.io/metadata.name") // set by the server from the (maybe mapped) name
			setLabels(o, l)
		}
	case schema.GroupKind{Kind: "Service"}:
		if ip, _, _ := unstructured.NestedString(o.Object, "spec", "clusterIP"); ip != "None" {
			unstructured.RemoveNestedField(o.Object, "spec", "clusterIP")
			unstructured.RemoveNestedField(o.Object, "spec", "clusterIPs")
		}
		unstructured.RemoveNestedField(o.Object, "spec", "healthCheckNodePort")
		if ports, ok, _ := unstructured.NestedSlice(o.Object, "spec", "ports"); ok {
			for _, p := range ports {
				if pm, ok := p.(map[string]any); ok {
					delete(pm, "nodePort")
				}
			}
			_ = unstructured.SetNestedSlice(o.Object, ports, "spec", "ports")
		}
	case schema.GroupKind{Kind: "PersistentVolumeClaim"}:
		unstructured.RemoveNestedField(o.Object, "spec", "volumeName")
	case schema.GroupKind{Group: "apps", Kind: "StatefulSet"}, schema.GroupKind{Group: "apps", Kind: "Deployment"}:
		// A backup's scale step may have stopped the workload while it was
		// captured; the count it runs at is the one the step recorded.
		if ann := o.GetAnnotations(); ann[AnnotationScaledFrom] != "" {
			if n, err := strconv.ParseInt(ann[AnnotationScaledFrom], 10, 32); err == nil && n >= 0 {
				_ = unstructured.SetNestedField(o.Object, n, "spec", "replicas")
			}
			delete(ann, AnnotationScaledFrom)
			setAnnotations(o, ann)
		}
	case schema.GroupKind{Kind: "Pod"}:
		unstructured.RemoveNestedField(o.Object, "spec", "nodeName")
		cleanPodSpec(o.Object, "spec")
	case schema.GroupKind{Group: "batch", Kind: "Job"}:
		if manual, _, _ := unstructured.NestedBool(o.Object, "spec", "manualSelector"); !manual {
			unstructured.RemoveNestedField(o.Object, "spec", "selector")
			if l, ok, _ := unstructured.NestedStringMap(o.Object, "spec", "template", "metadata", "labels"); ok {
				for _, k := range []string{"controller-uid", "batch.kubernetes.io/controller-uid", "job-name", "batch.kubernetes.io/job-name"} {
					delete(l, k)
				}
				_ = unstructured.SetNestedStringMap(o.Object, l, "spec", "template", "metadata", "labels")
			}
		}
	}
}

// cleanPodSpec drops the projected service account token volume the
// ServiceAccount admission plugin injects (kube-api-access-<random>): it
// is injected again on create.
func cleanPodSpec(obj map[string]any, path ...string) {
	vols, ok, _ := unstructured.NestedSlice(obj, append(path, "volumes")...)
	if !ok {
		return
	}
	injected := map[string]bool{}
	keep := vols[:0]
	for _, v := range vols {
		name, _, _ := unstructured.NestedString(v.(map[string]any), "name")
		if strings.HasPrefix(name, "kube-api-access-") {
			injected[name] = true
			continue
		}
		keep = append(keep, v)
	}
	if len(injected) == 0 {
		return
	}
	_ = unstructured.SetNestedSlice(obj, keep, append(path, "volumes")...)
	for _, list := range []string{"containers", "initContainers"} {
		cs, ok, _ := unstructured.NestedSlice(obj, append(path, list)...)
		if !ok {
			continue
		}
		for _, c := range cs {
			cm := c.(map[string]any)
			mounts, _, _ := unstructured.NestedSlice(cm, "volumeMounts")
			var km []any
			for _, m := range mounts {
				if n, _, _ := unstructured.NestedString(m.(map[string]any), "name"); !injected[n] {
					km = append(km, m)
				}
			}
			if len(km) == 0 {
				delete(cm, "volumeMounts")
			} else {
				cm["volumeMounts"] = km
			}
		}
		_ = unstructured.SetNestedSlice(obj, cs, append(path, list)...)
	}
}

func setAnnotations(o *unstructured.Unstructured, ann map[string]string) {
	if len(ann) == 0 {
		unstructured.RemoveNestedField(o.Object, "metadata", "annotations")
		return
	}
	o.SetAnnotations(ann)
}

func setLabels(o *unstructured.Unstructured, l map[string]string) {
	if len(l) == 0 {
		unstructured.RemoveNestedField(o.Object, "metadata", "labels")
		return
	}
	o.SetLabels(l)
}

func ownerKey(apiVersion, kind, name string) string {
	gv, _ := schema.ParseGroupVersion(apiVersion)
	return gv.Group + "/" + kind + "/" + name
}

// restoreRank orders kinds so that what others need exists first:
// CRDs, the Namespace and its policies, ServiceAccounts and RBAC, Secrets,
// ConfigMaps, PVCs, workloads, Services, then the rest (custom resources
// among them).
func restoreRank(gk schema.GroupKind) int {
	switch gk {
	case schema.GroupKind{Group: "apiextensions.k8s.io", Kind: "CustomResourceDefinition"}:
		return 0
	case schema.GroupKind{Kind: "Namespace"}:
		return 1
	case schema.GroupKind{Kind: "ResourceQuota"}, schema.GroupKind{Kind: "LimitRange"}:
		return 2
	case schema.GroupKind{Kind: "ServiceAccount"}:
		return 3
	case schema.GroupKind{Group: "rbac.authorization.k8s.io", Kind: "ClusterRole"},
		schema.GroupKind{Group: "rbac.authorization.k8s.io", Kind: "Role"}:
		return 4
	case schema.GroupKind{Group: "rbac.authorization.k8s.io", Kind: "ClusterRoleBinding"},
		schema.GroupKind{Group: "rbac.authorization.k8s.io", Kind: "RoleBinding"}:
		return 5
	case schema.GroupKind{Kind: "Secret"}:
		return 6
	case schema.GroupKind{Kind: "ConfigMap"}:
		return 7
	case schema.GroupKind{Kind: "PersistentVolume"}:
		return 8
	case schema.GroupKind{Kind: "PersistentVolumeClaim"}:
		return 9
	case schema.GroupKind{Kind: "Pod"}, schema.GroupKind{Kind: "ReplicationController"},
		schema.GroupKind{Group: "apps", Kind: "ReplicaSet"}, schema.GroupKind{Group: "apps", Kind: "Deployment"},
		schema.GroupKind{Group: "apps", Kind: "StatefulSet"}, schema.GroupKind{Group: "apps", Kind: "DaemonSet"},
		schema.GroupKind{Group: "batch", Kind: "Job"}, schema.GroupKind{Group: "batch", Kind: "CronJob"}:
		return 10
	case schema.GroupKind{Kind: "Service"}:
		return 11
	}
	return 12
}

func sortForRestore(objs []*unstructured.Unstructured) {
	sort.SliceStable(objs, func(i, j int) bool {
		a, b := objs[i], objs[j]
		ra, rb := restoreRank(a.GroupVersionKind().GroupKind()), restoreRank(b.GroupVersionKind().GroupKind())
		if ra != rb {
			return ra < rb
		}
		ga, gb := a.GroupVersionKind(), b.GroupVersionKind()
		if ga.Group != gb.Group {
			return ga.Group < gb.Group
		}
		if ga.Kind != gb.Kind {
			return ga.Kind < gb.Kind
		}
		if a.GetNamespace() != b.GetNamespace() {
			return a.GetNamespace() < b.GetNamespace()
		}
		return a.GetName() < b.GetName()
	})
}

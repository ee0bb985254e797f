package kube

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
)

// AppSelector says which objects form an application: a namespace and an
// optional label selector, or one custom resource (an operator-managed
// database) together with everything it owns.
type AppSelector struct {
	Namespace string
	// Selector is a label selector ("app=shop"); empty selects the whole namespace.
	Selector string
	// Resource, when set, makes the application this object and the
	// objects it owns, directly or through other owned objects.
	Resource *ObjectRef
}

// ObjectRef names one object of the application's namespace.
type ObjectRef struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Name       string `json:"name"`
}

// Application is what discovery found.
type Application struct {
	Namespace string
	// Objects are every object of the application, the regenerated ones
	// (controller-owned pods, ReplicaSets of Deployments, ...) excluded,
	// sorted by group, kind and name. This is what manifests capture.
	Objects []*unstructured.Unstructured
	// Pods are every pod of the application, owned ones included.
	Pods []corev1.Pod
	// StatefulSets and Deployments of the application, by name.
	StatefulSets []appsv1.StatefulSet
	Deployments  []appsv1.Deployment
	// PVCs are the names of the PersistentVolumeClaims the application's
	// pods mount or its StatefulSets claim, sorted.
	PVCs []string
	// Binding is the blueprint the application's objects name by
	// annotation, if any.
	Binding *Binding
}

// Binding is a blueprint named by an annotation on one of the application's objects.
type Binding struct {
	Blueprint string
	// Annotation is the annotation that named it (tidemark.io/blueprint or
	// kanister.kasten.io/blueprint).
	Annotation string
	// Object is the annotated object (.Object in templates).
	Object *unstructured.Unstructured
}

// skipResources are resources the cluster regenerates or that describe
// the moment rather than the application: never captured.
var skipResources = map[schema.GroupResource]bool{
	{Resource: "events"}:                                                      true,
	{Group: "events.k8s.io", Resource: "events"}:                              true,
	{Resource: "endpoints"}:                                                   true,
	{Group: "discovery.k8s.io", Resource: "endpointslices"}:                   true,
	{Group: "apps", Resource: "controllerrevisions"}:                          true,
	{Group: "coordination.k8s.io", Resource: "leases"}:                        true,
	{Group: "snapshot.storage.k8s.io", Resource: "volumesnapshots"}:           true,
	{Group: "groupsnapshot.storage.k8s.io", Resource: "volumegroupsnapshots"}: true,
	{Group: "metrics.k8s.io", Resource: "pods"}:                               true,
}

// Discover walks the API (every namespaced resource the server lists) for
// the objects of the application sel describes, and finds its blueprint
// binding. Two objects naming different blueprints are an error: an
// application runs one blueprint.
func (p *Platform) Discover(ctx context.Context, sel AppSelector) (*Application, error) {
	if sel.Namespace == "" {
		return nil, fmt.Errorf("%w: the application's namespace is empty", ErrInvalidSpec)
	}
	if sel.Resource != nil && sel.Selector != "" {
		return nil, fmt.Errorf("%w: give the application as a label selector or a custom resource, not both", ErrInvalidSpec)
	}
	lsel := labels.Everything()
	if sel.Selector != "" {
		var err error
		if lsel, err = labels.Parse(sel.Selector); err != nil {
			return nil, fmt.Errorf("%w: selector %q: %v", ErrInvalidSpec, sel.Selector, err)
		}
	}
	if _, err := p.c.Core.CoreV1().Namespaces().Get(ctx, sel.Namespace, metav1.GetOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("%w: namespace %q does not exist", ErrNotFound, sel.Namespace)
		}
		return nil, fmt.Errorf("reading namespace %q: %w", sel.Namespace, err)
	}
	all, err := p.listNamespace(ctx, sel.Namespace, lsel)
	if err != nil {
		return nil, err
	}
	if sel.Resource != nil {
		if all, err = ownedBy(all, *sel.Resource); err != nil {
			return nil, fmt.Errorf("application %s %s/%s: %w", sel.Resource.Kind, sel.Namespace, sel.Resource.Name, err)
		}
	}
	app := &Application{Namespace: sel.Namespace}
	pvcs := map[string]bool{}
	for _, o := range all {
		switch o.GroupVersionKind().GroupKind() {
		case schema.GroupKind{Kind: "Pod"}:
			var pod corev1.Pod
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &pod); err != nil {
				return nil, err
			}
			app.Pods = append(app.Pods, pod)
			for _, v := range pod.Spec.Volumes {
				if v.PersistentVolumeClaim != nil {
					pvcs[v.PersistentVolumeClaim.ClaimName] = true
				}
			}
		case schema.GroupKind{Group: "apps", Kind: "StatefulSet"}:
			var s appsv1.StatefulSet
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &s); err != nil {
				return nil, err
			}
			app.StatefulSets = append(app.StatefulSets, s)
			for _, c := range statefulSetClaims(&s) {
				pvcs[c] = true
			}
		case schema.GroupKind{Group: "apps", Kind: "Deployment"}:
			var d appsv1.Deployment
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &d); err != nil {
				return nil, err
			}
			app.Deployments = append(app.Deployments, d)
		case schema.GroupKind{Kind: "PersistentVolumeClaim"}:
			pvcs[o.GetName()] = true
		}
		if !regenerated(o) {
			app.Objects = append(app.Objects, o)
		}
	}
	// A claim a StatefulSet would make but has not made yet (scaled to 0)
	// is not a volume of the application.
	existing := map[string]bool{}
	for _, o := range all {
		if o.GetKind() == "PersistentVolumeClaim" {
			existing[o.GetName()] = true
		}
	}
	for c := range pvcs {
		if existing[c] {
			app.PVCs = append(app.PVCs, c)
		}
	}
	sort.Strings(app.PVCs)
	sortObjects(app.Objects)
	if app.Binding, err = binding(all); err != nil {
		return nil, fmt.Errorf("application in namespace %s: %w", sel.Namespace, err)
	}
	return app, nil
}

// listNamespace lists every object of every listable namespaced resource
// in ns that matches sel, skipping skipResources. Resources of an API
// group whose discovery failed (an aggregated API that is down) are
// skipped rather than failing the whole walk.
func (p *Platform) listNamespace(ctx context.Context, ns string, sel labels.Selector) ([]*unstructured.Unstructured, error) {
	p.c.Discovery.Invalidate()
	lists, err := p.c.Discovery.ServerPreferredNamespacedResources()
	if err != nil && !discovery.IsGroupDiscoveryFailedError(err) {
		return nil, fmt.Errorf("discovering the cluster's resources: %w", err)
	}
	var out []*unstructured.Unstructured
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			continue
		}
		for _, r := range l.APIResources {
			gr := schema.GroupResource{Group: gv.Group, Resource: r.Name}
			if strings.Contains(r.Name, "/") || skipResources[gr] || !hasVerb(r.Verbs, "list") {
				continue
			}
			gvr := gv.WithResource(r.Name)
			list, err := p.c.Dynamic.Resource(gvr).Namespace(ns).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
			if err != nil {
				if apierrors.IsNotFound(err) || apierrors.IsMethodNotSupported(err) || apierrors.IsForbidden(err) {
					continue
				}
				return nil, fmt.Errorf("listing %s in %s: %w", gr, ns, err)
			}
			for i := range list.Items {
				o := &list.Items[i]
				if o.GetAPIVersion() == "" {
					o.SetAPIVersion(gv.String())
				}
				if o.GetKind() == "" {
					o.SetKind(r.Kind)
				}
				out = append(out, o)
			}
		}
	}
	return out, nil
}

func hasVerb(verbs []string, v string) bool {
	for _, x := range verbs {
		if x == v {
			return true
		}
	}
	return false
}

// ownedBy keeps the object ref names and every object owned by it,
// directly or through owned objects.
func ownedBy(all []*unstructured.Unstructured, ref ObjectRef) ([]*unstructured.Unstructured, error) {
	var root *unstructured.Unstructured
	for _, o := range all {
		if o.GetKind() == ref.Kind && o.GetName() == ref.Name && (ref.APIVersion == "" || o.GetAPIVersion() == ref.APIVersion) {
			root = o
		}
	}
	if root == nil {
		return nil, fmt.Errorf("%w: no %s %q (application.resource)", ErrNotFound, ref.Kind, ref.Name)
	}
	in := map[types.UID]bool{root.GetUID(): true}
	for changed := true; changed; {
		changed = false
		for _, o := range all {
			if in[o.GetUID()] {
				continue
			}
			for _, or := range o.GetOwnerReferences() {
				if in[or.UID] {
					in[o.GetUID()] = true
					changed = true
					break
				}
			}
		}
	}
	// Claims of owned pods belong to the application even when nothing
	// owns them (a StatefulSet's volumeClaimTemplates).
	claims := map[string]bool{}
	for _, o := range all {
		if in[o.GetUID()] && o.GetKind() == "Pod" {
			vols, _, _ := unstructured.NestedSlice(o.Object, "spec", "volumes")
			for _, v := range vols {
				if c, ok, _ := unstructured.NestedString(v.(map[string]any), "persistentVolumeClaim", "claimName"); ok {
					claims[c] = true
				}
			}
		}
	}
	var out []*unstructured.Unstructured
	for _, o := range all {
		if in[o.GetUID()] || (o.GetKind() == "PersistentVolumeClaim" && claims[o.GetName()]) {
			out = append(out, o)
		}
	}
	return out, nil
}

// regenerated reports whether the cluster recreates o from something else
// the application contains: a controller-owned object (pods of a
// StatefulSet, ReplicaSets of a Deployment, a Service an operator made) is
// restored by restoring its owner. PVCs are kept whoever owns them: they
// are where the data goes. So are the defaults every namespace gets.
func regenerated(o *unstructured.Unstructured) bool {
	switch {
	case o.GetKind() == "PersistentVolumeClaim":
		return false
	case metav1.GetControllerOf(o) != nil:
		return true
	case o.GetKind() == "ServiceAccount" && o.GetName() == "default",
		o.GetKind() == "ConfigMap" && o.GetName() == "kube-root-ca.crt":
		return true
	case o.GetKind() == "Secret":
		t, _, _ := unstructured.NestedString(o.Object, "type")
		return t == string(corev1.SecretTypeServiceAccountToken)
	}
	return false
}

// binding finds the blueprint annotation among objs. tidemark.io/blueprint
// wins over Kanister's on the same object.
func binding(objs []*unstructured.Unstructured) (*Binding, error) {
	var found *Binding
	for _, o := range objs {
		for _, a := range []string{AnnotationBlueprint, AnnotationKanisterBlueprint} {
			name := strings.TrimSpace(o.GetAnnotations()[a])
			if name == "" {
				continue
			}
			b := &Binding{Blueprint: name, Annotation: a, Object: o}
			if found != nil && found.Blueprint != name {
				return nil, fmt.Errorf("%w: %s %s names blueprint %q (%s) but %s %s names %q (%s); an application runs one blueprint: annotate one object, or split the application with a label selector",
					ErrInvalidSpec, found.Object.GetKind(), found.Object.GetName(), found.Blueprint, found.Annotation,
					o.GetKind(), o.GetName(), name, a)
			}
			if found == nil {
				found = b
			}
			break
		}
	}
	return found, nil
}

// statefulSetClaims are the PVC names a StatefulSet's claim templates
// give its pods, in ordinal order: <template>-<set>-<ordinal>.
func statefulSetClaims(s *appsv1.StatefulSet) []string {
	n := int32(1)
	if s.Spec.Replicas != nil {
		n = *s.Spec.Replicas
	}
	var out []string
	for i := int32(0); i < n; i++ {
		for _, t := range s.Spec.VolumeClaimTemplates {
			out = append(out, fmt.Sprintf("%s-%s-%d", t.Name, s.Name, i))
		}
	}
	return out
}

func sortObjects(objs []*unstructured.Unstructured) {
	sort.SliceStable(objs, func(i, j int) bool {
		a, b := objs[i].GroupVersionKind(), objs[j].GroupVersionKind()
		if a.Group != b.Group {
			return a.Group < b.Group
		}
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return objs[i].GetName() < objs[j].GetName()
	})
}

// ordinal returns the ordinal suffix of a StatefulSet pod's name, or -1.
func ordinal(pod, set string) int {
	s, ok := strings.CutPrefix(pod, set+"-")
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return n
}

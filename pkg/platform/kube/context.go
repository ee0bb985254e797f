package kube

import (
	"slices"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

// TemplateContext fills in what the platform knows of a blueprint's
// template context, as Kanister users know it: .Namespace, .StatefulSet /
// .Deployment {Name, Namespace, Pods, Containers, PersistentVolumeClaims},
// .Object (the bound object, unstructured), .Targets (the pods exec steps
// can run in) and .App.Volumes (PVC names by name). The coordinator adds
// .Steps, .Backup, .Secrets, .Params and .Time.
//
// .StatefulSet is the bound StatefulSet, else the application's first
// (by name); likewise .Deployment. Pods are listed in ordinal order for a
// StatefulSet, by name for a Deployment; terminating pods are left out.
func (a *Application) TemplateContext(appName string) blueprint.TemplateContext {
	tc := blueprint.TemplateContext{
		App:       blueprint.App{Name: appName, Namespace: a.Namespace, Volumes: map[string]string{}},
		Namespace: a.Namespace,
	}
	for _, c := range a.PVCs {
		tc.App.Volumes[c] = c
	}
	var bound string
	var boundKind string
	if a.Binding != nil {
		tc.Object = a.Binding.Object.Object
		bound, boundKind = a.Binding.Object.GetName(), a.Binding.Object.GetKind()
	}
	if s := pick(a.StatefulSets, func(s appsv1.StatefulSet) string { return s.Name }, bound, boundKind == "StatefulSet"); s != nil {
		w := a.workload(s.Name, s.Spec.Selector, s.Spec.Template.Spec)
		sort.SliceStable(w.Pods, func(i, j int) bool { return ordinal(w.Pods[i], s.Name) < ordinal(w.Pods[j], s.Name) })
		w.PersistentVolumeClaims = nil
		for _, c := range statefulSetClaims(s) {
			if slices.Contains(a.PVCs, c) {
				w.PersistentVolumeClaims = append(w.PersistentVolumeClaims, c)
			}
		}
		w.PersistentVolumeClaims = appendMissing(w.PersistentVolumeClaims, templateClaims(s.Spec.Template.Spec))
		tc.StatefulSet = w
	}
	if d := pick(a.Deployments, func(d appsv1.Deployment) string { return d.Name }, bound, boundKind == "Deployment"); d != nil {
		tc.Deployment = a.workload(d.Name, d.Spec.Selector, d.Spec.Template.Spec)
	}
	switch {
	case boundKind == "Deployment" && tc.Deployment != nil:
		tc.Targets = tc.Deployment.Pods
	case tc.StatefulSet != nil:
		tc.Targets = tc.StatefulSet.Pods
	case tc.Deployment != nil:
		tc.Targets = tc.Deployment.Pods
	default:
		for _, p := range a.Pods {
			if p.DeletionTimestamp == nil {
				tc.Targets = append(tc.Targets, p.Name)
			}
		}
	}
	return tc
}

// pick returns the element named bound when preferBound, else the first by name.
func pick[T any](xs []T, name func(T) string, bound string, preferBound bool) *T {
	if len(xs) == 0 {
		return nil
	}
	best := 0
	for i := range xs {
		if preferBound && name(xs[i]) == bound {
			return &xs[i]
		}
		if name(xs[i]) < name(xs[best]) {
			best = i
		}
	}
	return &xs[best]
}

func (a *Application) workload(name string, selector *metav1.LabelSelector, spec corev1.PodSpec) *blueprint.Workload {
	w := &blueprint.Workload{Name: name, Namespace: a.Namespace, Pods: []string{}, PersistentVolumeClaims: templateClaims(spec)}
	for _, c := range spec.Containers {
		w.Containers = append(w.Containers, c.Name)
	}
	sel, err := metav1.LabelSelectorAsSelector(selector)
	if err != nil || sel.Empty() {
		return w
	}
	for _, p := range a.Pods {
		if p.DeletionTimestamp == nil && sel.Matches(labels.Set(p.Labels)) {
			w.Pods = append(w.Pods, p.Name)
		}
	}
	sort.Strings(w.Pods)
	return w
}

// templateClaims are the PVCs a pod template mounts by name.
func templateClaims(spec corev1.PodSpec) []string {
	var out []string
	for _, v := range spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			out = append(out, v.PersistentVolumeClaim.ClaimName)
		}
	}
	return out
}

func appendMissing(to, from []string) []string {
	for _, s := range from {
		if !slices.Contains(to, s) {
			to = append(to, s)
		}
	}
	return to
}

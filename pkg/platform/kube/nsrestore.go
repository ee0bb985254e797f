package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
)

// A restore into another namespace (`tidemark restore --to new --target
// NAMESPACE`) creates there the objects a backup captured
// (CaptureManifests), with its workloads stopped: their volumes are
// imported into the PVCs the bundle brings first, and the workloads are
// started after. Starting a database on an empty volume would initialise a
// fresh one there, which the import would then have to overwrite under it.

// AnnotationRestoredBy is set, on every namespaced object a restore into
// a namespace creates, to the restore's run id. A restore request
// redelivered after the coordinator died midway finds its own objects in
// the namespace and goes on, instead of refusing them as someone else's.
const AnnotationRestoredBy = "tidemark.io/restored-by"

// HeldWorkload is a workload a restore into a namespace creates with 0
// replicas (and AnnotationScaledFrom set to Replicas, as a scale step
// would), to be started once its volumes are in.
type HeldWorkload struct {
	Kind     string // StatefulSet or Deployment
	Name     string
	Replicas int32
}

// Workload is kind/name as a scale step takes it.
func (w HeldWorkload) Workload() string { return strings.ToLower(w.Kind) + "/" + w.Name }

// NamespaceRestore is a manifest bundle planned for restoring into
// another namespace (PlanNamespaceRestore); RestoreNamespace carries it out.
type NamespaceRestore struct {
	// From is the namespace the objects were captured in, To the one they
	// are restored into.
	From, To string
	// Run is the restore's run id (AnnotationRestoredBy).
	Run string
	// Objects are the bundle's, as captured.
	Objects []*unstructured.Unstructured
	// Options map the namespace, hold the workloads and mark the objects.
	Options RestoreOptions
	// Held are the workloads created stopped, by kind and name.
	Held []HeldWorkload
	// Claims are the names of the bundle's PersistentVolumeClaims: the
	// volumes that can be imported into the namespace.
	Claims []string
}

// PlanNamespaceRestore plans the restore of bundle's objects of namespace
// from into namespace to, for the restore run. Objects already there are
// skipped, or with update server-side applied over (ExistingUpdate). It
// changes nothing; errors are ErrInvalidSpec.
func PlanNamespaceRestore(bundle []byte, from, to, run string, update bool) (*NamespaceRestore, error) {
	if errs := validation.IsDNS1123Label(to); len(errs) > 0 {
		return nil, fmt.Errorf("%w: %q is not a namespace name: %s", ErrInvalidSpec, to, strings.Join(errs, "; "))
	}
	if from == "" || run == "" {
		return nil, fmt.Errorf("%w: a namespace restore needs the captured namespace and the run", ErrInvalidSpec)
	}
	objs, err := ParseManifests(bundle)
	if err != nil {
		return nil, err
	}
	nr := &NamespaceRestore{From: from, To: to, Run: run, Objects: objs}
	nr.Options.NamespaceMapping = map[string]string{from: to}
	nr.Options.ExistingResourcePolicy = ExistingSkip
	if update {
		nr.Options.ExistingResourcePolicy = ExistingUpdate
	}
	inFrom := regexp.QuoteMeta(from)
	mark, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{AnnotationRestoredBy: run}}})
	if err != nil {
		return nil, err
	}
	nr.Options.Modifiers = append(nr.Options.Modifiers, ResourceModifier{Match: ResourceMatch{Namespace: inFrom}, MergePatch: mark})
	for _, o := range objs {
		if o.GetNamespace() != from {
			continue
		}
		switch gk := o.GroupVersionKind().GroupKind(); gk {
		case schema.GroupKind{Kind: "PersistentVolumeClaim"}:
			nr.Claims = append(nr.Claims, o.GetName())
		case schema.GroupKind{Group: "apps", Kind: "StatefulSet"}, schema.GroupKind{Group: "apps", Kind: "Deployment"}:
			c := o.DeepCopy()
			CleanObject(c)
			n, err := replicasOf(c)
			if err != nil {
				return nil, fmt.Errorf("%w: %s %s/%s in the bundle: %v", ErrInvalidSpec, gk.Kind, from, o.GetName(), err)
			}
			nr.Held = append(nr.Held, HeldWorkload{Kind: gk.Kind, Name: o.GetName(), Replicas: n})
			hold, err := json.Marshal(map[string]any{
				"metadata": map[string]any{"annotations": map[string]string{AnnotationScaledFrom: strconv.Itoa(int(n))}},
				"spec":     map[string]any{"replicas": 0},
			})
			if err != nil {
				return nil, err
			}
			nr.Options.Modifiers = append(nr.Options.Modifiers, ResourceModifier{
				Match:      ResourceMatch{Group: "apps", Kind: gk.Kind, Name: regexp.QuoteMeta(o.GetName()), Namespace: inFrom},
				MergePatch: hold,
			})
		}
	}
	sort.Strings(nr.Claims)
	if err := nr.Options.Validate(); err != nil {
		return nil, err
	}
	return nr, nil
}

// replicasOf is a workload's spec.replicas, 1 when unset (the API's
// default).
func replicasOf(o *unstructured.Unstructured) (int32, error) {
	v, found, err := unstructured.NestedFieldNoCopy(o.Object, "spec", "replicas")
	if err != nil || !found || v == nil {
		return 1, err
	}
	var n int64
	switch x := v.(type) {
	case int64:
		n = x
	case float64:
		n = int64(x)
		if float64(n) != x {
			return 0, fmt.Errorf("spec.replicas %v is not a whole number", x)
		}
	default:
		return 0, fmt.Errorf("spec.replicas %v is not a number", v)
	}
	if n < 0 || n > 1<<31-1 {
		return 0, fmt.Errorf("spec.replicas %d is out of range", n)
	}
	return int32(n), nil
}

// ExistingObjects returns, as "Kind name", the objects of nr that its
// target namespace holds already, other than those this restore (nr.Run)
// made: what the restore would leave as they are, or with update
// overwrite. A target namespace being deleted is an ErrInvalidSpec.
func (p *Platform) ExistingObjects(ctx context.Context, nr *NamespaceRestore) ([]string, error) {
	ns, err := p.c.Core.CoreV1().Namespaces().Get(ctx, nr.To, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil // nothing can be in it
	case err != nil:
		return nil, fmt.Errorf("reading namespace %s: %w", nr.To, err)
	case ns.DeletionTimestamp != nil:
		return nil, fmt.Errorf("%w: namespace %s is being deleted; wait until it is gone (kubectl get namespace %s), or restore into another one", ErrInvalidSpec, nr.To, nr.To)
	}
	var out []string
	for _, o := range nr.Objects {
		if o.GetNamespace() != nr.From {
			continue
		}
		gvk := o.GroupVersionKind()
		m, err := p.c.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil || m.Scope.Name() != meta.RESTScopeNameNamespace {
			continue // a kind the cluster does not serve (yet) has no objects
		}
		cur, err := p.c.Dynamic.Resource(m.Resource).Namespace(nr.To).Get(ctx, o.GetName(), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s %s/%s: %w", gvk.Kind, nr.To, o.GetName(), err)
		}
		if cur.GetAnnotations()[AnnotationRestoredBy] == nr.Run {
			continue
		}
		out = append(out, gvk.Kind+" "+o.GetName())
	}
	sort.Strings(out)
	return out, nil
}

// RestoreNamespace creates nr's objects in its target namespace
// (RestoreManifests with nr.Options), creating the namespace if it is
// missing. The error names every object that did not make it; the report
// says what happened to each.
func (p *Platform) RestoreNamespace(ctx context.Context, nr *NamespaceRestore) (*RestoreReport, error) {
	rep, err := p.RestoreManifests(ctx, nr.Objects, nr.Options)
	if err != nil {
		return rep, err
	}
	return rep, rep.Err()
}

// PVCExists reports whether the PersistentVolumeClaim namespace/name
// exists and is not being deleted.
func (p *Platform) PVCExists(ctx context.Context, namespace, name string) (bool, error) {
	pvc, err := p.c.Core.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading PVC %s/%s: %w", namespace, name, err)
	}
	return pvc.DeletionTimestamp == nil, nil
}

// AppNameIn returns what the application called name (AppName) is called
// once restored into namespace ns: the same name in ns.
func AppNameIn(name, ns string) (string, error) {
	n, err := ParseAppName(name)
	if err != nil {
		return "", err
	}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return "", fmt.Errorf("%w: %q is not a namespace name: %s", ErrInvalidAppName, ns, strings.Join(errs, "; "))
	}
	n.Namespace = ns
	return n.String(), nil
}

// Capture finds the application called name (AppName) as Resolve does and
// returns its manifest bundle (Platform.CaptureManifests).
func (a *Applications) Capture(ctx context.Context, name string) ([]byte, error) {
	n, err := ParseAppName(name)
	if err != nil {
		return nil, err
	}
	p := a.Platform
	sel := AppSelector{Namespace: n.Namespace, Selector: n.Selector}
	switch {
	case n.Name != "" && n.Kind != "":
		sel.Resource, err = p.namedObject(ctx, n)
	case n.Name != "":
		sel.Resource, err = p.workloadNamed(ctx, n)
	}
	if err != nil {
		return nil, err
	}
	app, err := p.Discover(ctx, sel)
	if err != nil {
		return nil, err
	}
	return p.CaptureManifests(ctx, app)
}

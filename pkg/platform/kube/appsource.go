package kube

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/restmapper"

	"github.com/tidemark-dev/tidemark/blueprints"
	"github.com/tidemark-dev/tidemark/pkg/application"
)

// DefaultLookupTimeout bounds one Applications lookup when the caller
// gives no context (application.Source has none): discovery walks every
// namespaced resource, which on a large cluster takes a while.
const DefaultLookupTimeout = 30 * time.Second

// Applications finds the applications of the cluster by the names AppName
// describes, with the blueprint each is bound to, for the coordinator. It
// implements application.Source, as a directory of Application files does
// on the local platform.
//
// The blueprint an annotation names is, in this order: the Blueprint
// object of that name in the application's namespace, the one in
// BlueprintNamespace, the bundled blueprint of that name (the
// Kubernetes-only ones included). A Blueprint object's source travels to
// the coordinator in the Application (application.EmbedBlueprint).
type Applications struct {
	Platform *Platform
	// BlueprintNamespace holds the Blueprint objects every namespace may
	// use (Tidemark's own namespace; DefaultBlueprintNamespace). Empty: the
	// application's namespace only.
	BlueprintNamespace string
	// Timeout bounds a lookup made through Application (DefaultLookupTimeout).
	Timeout time.Duration
}

var _ application.Source = (*Applications)(nil)

// DefaultBlueprintNamespace is the namespace Tidemark runs in: $POD_NAMESPACE
// (set it from the downward API), else the namespace of the pod's service
// account, else "tidemark", the namespace deploy/ installs into.
func DefaultBlueprintNamespace() string {
	if ns := strings.TrimSpace(os.Getenv("POD_NAMESPACE")); ns != "" {
		return ns
	}
	if b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil {
		if ns := strings.TrimSpace(string(b)); ns != "" {
			return ns
		}
	}
	return "tidemark"
}

// Application implements application.Source.
func (a *Applications) Application(name string) (*application.Application, error) {
	t := a.Timeout
	if t <= 0 {
		t = DefaultLookupTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), t)
	defer cancel()
	return a.Resolve(ctx, name)
}

// Resolve finds the application called name (see AppName): its objects,
// volumes (its PVCs, as namespace/pvc, which the Snapshotter takes), the
// pods exec steps run in, the template context and the blueprint its
// annotation names. An application without a blueprint annotation has an
// empty Spec.Blueprint: a request may still name one.
func (a *Applications) Resolve(ctx context.Context, name string) (*application.Application, error) {
	n, err := ParseAppName(name)
	if err != nil {
		return nil, err
	}
	p := a.Platform
	if _, err := p.c.Core.CoreV1().Namespaces().Get(ctx, n.Namespace, metav1.GetOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("%w: namespace %q does not exist (the part of %q before the first / or : is the namespace; kubectl get namespaces lists them)", ErrNotFound, n.Namespace, name)
		}
		return nil, fmt.Errorf("reading namespace %q: %w", n.Namespace, err)
	}
	sel := AppSelector{Namespace: n.Namespace, Selector: n.Selector}
	if n.Name != "" {
		if n.Kind != "" {
			sel.Resource, err = p.namedObject(ctx, n)
		} else {
			sel.Resource, err = p.workloadNamed(ctx, n)
		}
		if err != nil {
			return nil, err
		}
	}
	app, err := p.Discover(ctx, sel)
	if err != nil {
		return nil, err
	}
	if n.Name == "" && len(app.Objects) == 0 && len(app.Pods) == 0 {
		if n.Selector != "" {
			return nil, fmt.Errorf("%w: label selector %q matches nothing in namespace %s (kubectl get all,pvc -n %s -l '%s' lists what it selects)", ErrNotFound, n.Selector, n.Namespace, n.Namespace, n.Selector)
		}
		return nil, fmt.Errorf("%w: namespace %s holds nothing to back up (no workloads, claims or configuration)", ErrNotFound, n.Namespace)
	}
	ref, err := a.blueprintRef(ctx, app)
	if err != nil {
		return nil, err
	}
	// The bound object's settings: params for templates, and connections
	// and secrets checked here so that a mistake rejects the request
	// before any step runs (the hookrunner reads them again, with the
	// Secrets, when a step needs them: AppSettings).
	var spec application.Spec
	if b := app.Binding; b != nil {
		o := annotated{what: fmt.Sprintf("%s %s/%s", b.Object.GetKind(), app.Namespace, b.Object.GetName()), annotations: b.Object.GetAnnotations()}
		if err := o.settings(app.Namespace, &spec); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidSettings, err)
		}
	}
	tc := app.TemplateContext(name)
	res := &application.Resolved{
		Namespace: app.Namespace,
		Volumes:   make(map[string]string, len(app.PVCs)),
		Targets:   tc.Targets,
		Context: application.PlatformContext{
			Volumes: tc.App.Volumes, StatefulSet: tc.StatefulSet, Deployment: tc.Deployment, Object: compactObject(tc.Object),
		},
	}
	for _, c := range app.PVCs {
		res.Volumes[c] = app.Namespace + "/" + c
	}
	return &application.Application{
		APIVersion: application.APIVersion, Kind: application.Kind,
		Metadata: application.Metadata{Name: name},
		Spec:     application.Spec{Blueprint: ref, Params: spec.Params},
		Resolved: res,
	}, nil
}

// workloadNamed finds what NAMESPACE/NAME means: the StatefulSet or
// Deployment NAME, else the one object called NAME that carries a
// blueprint annotation (an operator's custom resource).
func (p *Platform) workloadNamed(ctx context.Context, n AppName) (*ObjectRef, error) {
	var found []ObjectRef
	_, err := p.c.Core.AppsV1().StatefulSets(n.Namespace).Get(ctx, n.Name, metav1.GetOptions{})
	switch {
	case err == nil:
		found = append(found, ObjectRef{APIVersion: "apps/v1", Kind: "StatefulSet", Name: n.Name})
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("reading StatefulSet %s/%s: %w", n.Namespace, n.Name, err)
	}
	_, err = p.c.Core.AppsV1().Deployments(n.Namespace).Get(ctx, n.Name, metav1.GetOptions{})
	switch {
	case err == nil:
		found = append(found, ObjectRef{APIVersion: "apps/v1", Kind: "Deployment", Name: n.Name})
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("reading Deployment %s/%s: %w", n.Namespace, n.Name, err)
	}
	if len(found) == 0 {
		all, err := p.listNamespace(ctx, n.Namespace, labels.Everything())
		if err != nil {
			return nil, err
		}
		for _, o := range all {
			ann := o.GetAnnotations()
			if o.GetName() == n.Name && (ann[AnnotationBlueprint] != "" || ann[AnnotationKanisterBlueprint] != "") {
				found = append(found, ObjectRef{APIVersion: o.GetAPIVersion(), Kind: o.GetKind(), Name: n.Name})
			}
		}
	}
	switch len(found) {
	case 1:
		return &found[0], nil
	case 0:
		return nil, fmt.Errorf("%w: namespace %s has no StatefulSet or Deployment called %q, and no object of that name carries the annotation %s; for another kind of object give its kind (%s/KIND/%s), or name the application by label selector (%s:app=...) or as the whole namespace (%s)",
			ErrNotFound, n.Namespace, n.Name, AnnotationBlueprint, n.Namespace, n.Name, n.Namespace, n.Namespace)
	}
	var forms []string
	for _, f := range found {
		forms = append(forms, n.Namespace+"/"+strings.ToLower(f.Kind)+"/"+n.Name)
	}
	return nil, fmt.Errorf("%w: several objects of namespace %s are called %q; name one with its kind: %s", ErrInvalidAppName, n.Namespace, n.Name, strings.Join(forms, " or "))
}

// namedObject finds what NAMESPACE/KIND/NAME means. KIND is looked up as
// kubectl does: kind or resource, singular or plural, short name, with an
// optional .group.
func (p *Platform) namedObject(ctx context.Context, n AppName) (*ObjectRef, error) {
	gr := schema.ParseGroupResource(strings.ToLower(n.Kind))
	lookup := func() (schema.GroupVersionKind, error) {
		return restmapper.NewShortcutExpander(p.c.Mapper, p.c.Discovery, nil).KindFor(gr.WithVersion(""))
	}
	gvk, err := lookup()
	if meta.IsNoMatchError(err) {
		// A CRD installed since the mapper last looked.
		p.c.Mapper.Reset()
		gvk, err = lookup()
	}
	var ambiguous *meta.AmbiguousResourceError
	switch {
	case meta.IsNoMatchError(err):
		return nil, fmt.Errorf("%w: %q: the cluster serves no kind called %q (kubectl api-resources lists them)", ErrInvalidAppName, n.String(), n.Kind)
	case errors.As(err, &ambiguous):
		return nil, fmt.Errorf("%w: %q: several API groups serve %q; add the group, such as %s.%s", ErrInvalidAppName, n.String(), n.Kind, n.Kind, ambiguousGroup(ambiguous))
	case err != nil:
		return nil, fmt.Errorf("looking up kind %q: %w", n.Kind, err)
	}
	m, err := p.c.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("looking up kind %s: %w", gvk.Kind, err)
	}
	if m.Scope.Name() != meta.RESTScopeNameNamespace {
		return nil, fmt.Errorf("%w: %q: %s is cluster-scoped; an application is made of namespaced objects", ErrInvalidAppName, n.String(), gvk.Kind)
	}
	if _, err := p.c.Dynamic.Resource(m.Resource).Namespace(n.Namespace).Get(ctx, n.Name, metav1.GetOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("%w: namespace %s has no %s called %q (kubectl get %s -n %s lists them)", ErrNotFound, n.Namespace, gvk.Kind, n.Name, m.Resource.GroupResource(), n.Namespace)
		}
		return nil, fmt.Errorf("reading %s %s/%s: %w", gvk.Kind, n.Namespace, n.Name, err)
	}
	return &ObjectRef{APIVersion: gvk.GroupVersion().String(), Kind: gvk.Kind, Name: n.Name}, nil
}

func ambiguousGroup(e *meta.AmbiguousResourceError) string {
	for _, k := range e.MatchingKinds {
		if k.Group != "" {
			return k.Group
		}
	}
	return "GROUP"
}

// blueprintRef resolves the application's binding to a reference the
// coordinator loads (see Applications); "" when nothing is annotated.
func (a *Applications) blueprintRef(ctx context.Context, app *Application) (string, error) {
	b := app.Binding
	if b == nil {
		return "", nil
	}
	bound := fmt.Sprintf("%s %s/%s names blueprint %q (annotation %s)", b.Object.GetKind(), app.Namespace, b.Object.GetName(), b.Blueprint, b.Annotation)
	namespaces := []string{app.Namespace}
	if a.BlueprintNamespace != "" && a.BlueprintNamespace != app.Namespace {
		namespaces = append(namespaces, a.BlueprintNamespace)
	}
	for _, ns := range namespaces {
		o, err := a.Platform.c.Dynamic.Resource(BlueprintGVR).Namespace(ns).Get(ctx, b.Blueprint, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			// No such object, or no Blueprint CRD installed: look further.
			continue
		}
		if err != nil {
			// Not a reason to fall back to a bundled blueprint of the same
			// name: that may not be the one the user wrote.
			return "", fmt.Errorf("%s: reading Blueprint %s/%s: %w", bound, ns, b.Blueprint, err)
		}
		if _, err := BlueprintFromObject(o); err != nil {
			return "", fmt.Errorf("%s: %w", bound, err)
		}
		file, data, err := blueprintDocument(o)
		if err != nil {
			return "", err
		}
		return application.EmbedBlueprint(file, data), nil
	}
	if data, err := fs.ReadFile(blueprints.Kubernetes, b.Blueprint+"/blueprint.kube.yaml"); err == nil {
		return application.EmbedBlueprint(b.Blueprint+"/blueprint.kube.yaml", data), nil
	}
	if _, err := fs.Stat(blueprints.FS, b.Blueprint+"/blueprint.yaml"); err == nil {
		return b.Blueprint, nil // the coordinator loads bundled blueprints by name
	}
	return "", fmt.Errorf("%w: %s, but there is no Blueprint %q in namespace %s and no bundled blueprint of that name (bundled: %s); create it (kubectl apply -n %s -f BLUEPRINT.yaml, with the Blueprint CRD from deploy/crds installed) or correct the annotation",
		ErrNotFound, bound, b.Blueprint, strings.Join(namespaces, " or "), strings.Join(bundledBlueprintNames(), ", "), app.Namespace)
}

func bundledBlueprintNames() []string {
	var names []string
	for _, fsys := range []fs.FS{blueprints.FS, blueprints.Kubernetes} {
		files, _ := fs.Glob(fsys, "*/*.yaml")
		for _, f := range files {
			names = append(names, strings.SplitN(f, "/", 2)[0])
		}
	}
	sort.Strings(names)
	return slices.Compact(names) // mariadb has a Kubernetes variant of the same name
}

// compactObject is the bound object as .Object, without what only the
// API server reads (managedFields, kubectl's copy of the last applied
// object): a run keeps its template context for its whole life.
func compactObject(o map[string]any) map[string]any {
	if o == nil {
		return nil
	}
	u := (&unstructured.Unstructured{Object: o}).DeepCopy()
	unstructured.RemoveNestedField(u.Object, "metadata", "managedFields")
	if ann := u.GetAnnotations(); ann != nil {
		delete(ann, "kubectl.kubernetes.io/last-applied-configuration")
		u.SetAnnotations(ann)
	}
	return u.Object
}

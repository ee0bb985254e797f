package kube

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/template"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"github.com/tidemark-dev/tidemark/pkg/application"
)

// Annotations that declare on an application's bound object (the one with
// the blueprint annotation) what an Application file declares on the
// local platform. Each value is YAML (or JSON):
//
//	tidemark.io/connections: |
//	  primary:
//	    driver: mysql
//	    dsn: root@tcp(mariadb-0.mariadb.{{ .Namespace }}.svc:3306)/
//	    passwordFrom: {secretKeyRef: {name: mariadb, key: root-password}}
//	tidemark.io/secrets: |
//	  token: {secretKeyRef: {name: app, key: token}}
//	tidemark.io/params: |
//	  database: shop
//
// A DSN may use {{ .Namespace }}, the application's namespace, so that a
// copy restored into another namespace connects to itself, not to the
// original. A secretKeyRef names a Secret in the application's namespace;
// only the hookrunner reads it, when a step needs it, and its value is in
// no event, log or error.
const (
	AnnotationConnections = "tidemark.io/connections"
	AnnotationSecrets     = "tidemark.io/secrets"
	AnnotationParams      = "tidemark.io/params"
)

// ErrInvalidSettings: an application's settings annotations do not
// parse or validate. Retrying cannot help; the message names the fix.
var ErrInvalidSettings = errors.New("invalid application settings")

// DefaultSecretTimeout bounds reading one Secret.
const DefaultSecretTimeout = 30 * time.Second

// AppSettings is the hookrunner's view of applications on Kubernetes:
// the connections, secrets and params their bound object's annotations
// declare, with secretKeyRef readable. It implements application.Source.
//
// It reads only what it must — the named workload or object, or, for a
// NAMESPACE or NAMESPACE:SELECTOR name, the StatefulSets and Deployments
// of the namespace (a custom resource's annotations are found when the
// application is named NAMESPACE/KIND/NAME) — so the hookrunner needs no
// discovery of the whole namespace.
type AppSettings struct {
	Platform *Platform
	// Timeout bounds one lookup (default DefaultLookupTimeout).
	Timeout time.Duration
}

// Application implements application.Source.
func (s *AppSettings) Application(name string) (*application.Application, error) {
	t := s.Timeout
	if t <= 0 {
		t = DefaultLookupTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), t)
	defer cancel()
	n, err := ParseAppName(name)
	if err != nil {
		return nil, err
	}
	p := s.Platform
	var bound []annotated
	if n.Name != "" {
		var ref *ObjectRef
		if n.Kind != "" {
			ref, err = p.namedObject(ctx, n)
		} else {
			ref, err = p.workloadNamed(ctx, n)
		}
		if err != nil {
			return nil, err
		}
		o, err := p.getObject(ctx, n.Namespace, ref)
		if err != nil {
			return nil, err
		}
		bound = append(bound, o)
	} else {
		bound, err = p.annotatedWorkloads(ctx, n)
		if err != nil {
			return nil, err
		}
	}
	a := &application.Application{
		APIVersion: application.APIVersion, Kind: application.Kind,
		Metadata: application.Metadata{Name: name},
	}
	for _, o := range bound {
		if err := o.settings(n.Namespace, &a.Spec); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidSettings, err)
		}
	}
	a.ReadSecretsWith(p.secretReader(n.Namespace))
	return a, nil
}

// annotated is an object whose annotations may carry settings.
type annotated struct {
	what        string // "StatefulSet shop/mariadb"
	annotations map[string]string
}

func (p *Platform) getObject(ctx context.Context, ns string, ref *ObjectRef) (annotated, error) {
	what := fmt.Sprintf("%s %s/%s", ref.Kind, ns, ref.Name)
	var meta metav1.Object
	var err error
	switch {
	case ref.APIVersion == "apps/v1" && ref.Kind == "StatefulSet":
		meta, err = p.c.Core.AppsV1().StatefulSets(ns).Get(ctx, ref.Name, metav1.GetOptions{})
	case ref.APIVersion == "apps/v1" && ref.Kind == "Deployment":
		meta, err = p.c.Core.AppsV1().Deployments(ns).Get(ctx, ref.Name, metav1.GetOptions{})
	default:
		gv, perr := schema.ParseGroupVersion(ref.APIVersion)
		if perr != nil {
			return annotated{}, fmt.Errorf("%s: %w", what, perr)
		}
		m, merr := p.c.Mapper.RESTMapping(gv.WithKind(ref.Kind).GroupKind(), gv.Version)
		if merr != nil {
			return annotated{}, fmt.Errorf("looking up kind %s: %w", ref.Kind, merr)
		}
		meta, err = p.c.Dynamic.Resource(m.Resource).Namespace(ns).Get(ctx, ref.Name, metav1.GetOptions{})
	}
	if err != nil {
		if apierrors.IsNotFound(err) {
			return annotated{}, fmt.Errorf("%w: %s does not exist", ErrNotFound, what)
		}
		return annotated{}, fmt.Errorf("reading %s: %w", what, err)
	}
	return annotated{what: what, annotations: meta.GetAnnotations()}, nil
}

// annotatedWorkloads are the StatefulSets and Deployments an application
// named NAMESPACE or NAMESPACE:SELECTOR selects that carry settings.
func (p *Platform) annotatedWorkloads(ctx context.Context, n AppName) ([]annotated, error) {
	sel := labels.Everything()
	if n.Selector != "" {
		s, err := labels.Parse(n.Selector)
		if err != nil {
			return nil, fmt.Errorf("%w: label selector %q: %v", ErrInvalidAppName, n.Selector, err)
		}
		sel = s
	}
	opts := metav1.ListOptions{LabelSelector: sel.String()}
	var out []annotated
	keep := func(kind string, o metav1.Object) {
		ann := o.GetAnnotations()
		if ann[AnnotationConnections] != "" || ann[AnnotationSecrets] != "" || ann[AnnotationParams] != "" {
			out = append(out, annotated{what: fmt.Sprintf("%s %s/%s", kind, n.Namespace, o.GetName()), annotations: ann})
		}
	}
	sts, err := p.c.Core.AppsV1().StatefulSets(n.Namespace).List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("listing StatefulSets of %s: %w", n.Namespace, err)
	}
	for i := range sts.Items {
		keep("StatefulSet", &sts.Items[i])
	}
	deps, err := p.c.Core.AppsV1().Deployments(n.Namespace).List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("listing Deployments of %s: %w", n.Namespace, err)
	}
	for i := range deps.Items {
		keep("Deployment", &deps.Items[i])
	}
	return out, nil
}

// settings adds the object's connections, secrets and params to spec.
// The same name declared by two objects of one application is an error:
// which one a step meant is not clear.
func (o annotated) settings(ns string, spec *application.Spec) error {
	var conns map[string]application.Connection
	var secrets map[string]application.SecretRef
	var params map[string]string
	var errs []error
	parse := func(key string, into any) {
		v := o.annotations[key]
		if v == "" {
			return
		}
		if err := yaml.UnmarshalStrict([]byte(v), into); err != nil {
			errs = append(errs, fmt.Errorf("%s: annotation %s: %v (want a YAML or JSON map; see docs/kubernetes.md)", o.what, key, err))
		}
	}
	parse(AnnotationConnections, &conns)
	parse(AnnotationSecrets, &secrets)
	parse(AnnotationParams, &params)
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for name, c := range conns {
		dsn, err := renderDSN(c.DSN, ns)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: annotation %s: %s.dsn: %v (the DSN may use {{ .Namespace }} only)", o.what, AnnotationConnections, name, err))
			continue
		}
		c.DSN = dsn
		conns[name] = c
	}
	for _, err := range application.ValidateConnections(AnnotationConnections, conns, AnnotationSecrets, secrets) {
		errs = append(errs, fmt.Errorf("%s: annotation %w", o.what, err))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := declareOnce(o.what, AnnotationConnections, &spec.Connections, conns); err != nil {
		return err
	}
	if err := declareOnce(o.what, AnnotationSecrets, &spec.Secrets, secrets); err != nil {
		return err
	}
	return declareOnce(o.what, AnnotationParams, &spec.Params, params)
}

// declareOnce adds src to *dst; a name *dst has already is an error: which
// object a step meant would not be clear.
func declareOnce[V any](what, annotation string, dst *map[string]V, src map[string]V) error {
	for _, n := range slices.Sorted(maps.Keys(src)) {
		if _, dup := (*dst)[n]; dup {
			return fmt.Errorf("%s: annotation %s declares %q, which another object of the application declares too; declare it once", what, annotation, n)
		}
	}
	if len(src) > 0 && *dst == nil {
		*dst = make(map[string]V, len(src))
	}
	maps.Copy(*dst, src)
	return nil
}

func renderDSN(dsn, ns string) (string, error) {
	if !strings.Contains(dsn, "{{") {
		return dsn, nil
	}
	t, err := template.New("dsn").Option("missingkey=error").Parse(dsn)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	if err := t.Execute(&b, struct{ Namespace string }{ns}); err != nil {
		return "", err
	}
	return b.String(), nil
}

// secretReader reads keys of Secrets in namespace ns. Its errors name the
// Secret and key, never the value.
func (p *Platform) secretReader(ns string) func(application.SecretKeyRef) (string, error) {
	return func(ref application.SecretKeyRef) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), DefaultSecretTimeout)
		defer cancel()
		s, err := p.c.Core.CoreV1().Secrets(ns).Get(ctx, ref.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return "", fmt.Errorf("secretKeyRef: Secret %s/%s does not exist (create it, or correct the name)", ns, ref.Name)
		}
		if apierrors.IsForbidden(err) {
			return "", fmt.Errorf("secretKeyRef: not allowed to read Secret %s/%s: give Tidemark's hookrunner get on secrets in namespace %s (deploy/base/rbac.yaml)", ns, ref.Name, ns)
		}
		if err != nil {
			return "", fmt.Errorf("secretKeyRef: reading Secret %s/%s: %w", ns, ref.Name, err)
		}
		v, ok := s.Data[ref.Key]
		if !ok {
			return "", fmt.Errorf("secretKeyRef: Secret %s/%s has no key %q (it has: %s)", ns, ref.Name, ref.Key, strings.Join(slices.Sorted(maps.Keys(s.Data)), ", "))
		}
		return strings.TrimRight(string(v), "\r\n"), nil
	}
}

package kube

import (
	"context"
	"errors"
	"fmt"
	"sort"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

// The Blueprint CRD (deploy/crds/tidemark.io_blueprints.yaml) is
// generated from pkg/blueprint's types; tools/crdgen's test fails when
// the two drift apart.
//go:generate go run ../../../tools/crdgen -o ../../../deploy/crds/tidemark.io_blueprints.yaml

// BlueprintGVR is the Blueprint custom resource.
var BlueprintGVR = schema.GroupVersionResource{Group: "tidemark.io", Version: "v1alpha1", Resource: "blueprints"}

// AnnotationDescription carries a Blueprint object's description:
// Kubernetes' metadata has no place for the metadata.description of a
// blueprint file.
const AnnotationDescription = "tidemark.io/description"

// ErrInvalidBlueprint: a Blueprint object the API server accepted does
// not parse or lint as a blueprint.
var ErrInvalidBlueprint = errors.New("invalid Blueprint")

// LoadBlueprint reads the Blueprint object ns/name and parses and lints
// it exactly as a blueprint file is.
func (p *Platform) LoadBlueprint(ctx context.Context, ns, name string) (*blueprint.Blueprint, error) {
	o, err := p.c.Dynamic.Resource(BlueprintGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: Blueprint %s/%s (is the CRD installed? kubectl apply -f deploy/crds/)", ErrNotFound, ns, name)
	}
	if err != nil {
		return nil, fmt.Errorf("reading Blueprint %s/%s: %w", ns, name, err)
	}
	return BlueprintFromObject(o)
}

// LoadBlueprints lists the Blueprint objects of ns (every namespace when
// ns is empty), sorted by namespace and name. Objects that do not parse
// or lint are left out and reported in the error, each with its
// diagnostics; the others are returned with it.
func (p *Platform) LoadBlueprints(ctx context.Context, ns string) ([]*blueprint.Blueprint, error) {
	l, err := p.c.Dynamic.Resource(BlueprintGVR).Namespace(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing Blueprints (is the CRD installed? kubectl apply -f deploy/crds/): %w", err)
	}
	sort.Slice(l.Items, func(i, j int) bool { return objectName(&l.Items[i]) < objectName(&l.Items[j]) })
	var out []*blueprint.Blueprint
	var errs []error
	for i := range l.Items {
		b, err := BlueprintFromObject(&l.Items[i])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, b)
	}
	return out, errors.Join(errs...)
}

// BlueprintFromObject turns a Blueprint object into a blueprint through
// blueprint.Parse and blueprint.Lint, so a custom resource gets the same
// checks and defaults as a file. Diagnostics name "Blueprint ns/name".
func BlueprintFromObject(o *unstructured.Unstructured) (*blueprint.Blueprint, error) {
	file, data, err := blueprintDocument(o)
	if err != nil {
		return nil, err
	}
	b, err := blueprint.Parse(file, data)
	if err != nil {
		return nil, fmt.Errorf("%w %s:\n%w", ErrInvalidBlueprint, objectName(o), err)
	}
	if err := blueprint.Lint(b).Err(); err != nil {
		return nil, fmt.Errorf("%w %s:\n%w", ErrInvalidBlueprint, objectName(o), err)
	}
	return b, nil
}

// blueprintDocument is a Blueprint object as the blueprint file it stands
// for, and the name diagnostics give it ("Blueprint ns/name").
func blueprintDocument(o *unstructured.Unstructured) (file string, data []byte, err error) {
	md := map[string]any{"name": o.GetName()}
	if l := o.GetLabels(); len(l) > 0 {
		md["labels"] = l
	}
	ann := o.GetAnnotations()
	if d := ann[AnnotationDescription]; d != "" {
		md["description"] = d
	}
	keep := map[string]string{}
	for k, v := range ann {
		if k != AnnotationDescription && k != "kubectl.kubernetes.io/last-applied-configuration" {
			keep[k] = v
		}
	}
	if len(keep) > 0 {
		md["annotations"] = keep
	}
	doc := map[string]any{"apiVersion": o.GetAPIVersion(), "kind": o.GetKind(), "metadata": md, "spec": o.Object["spec"]}
	if data, err = yaml.Marshal(doc); err != nil {
		return "", nil, err
	}
	return "Blueprint " + objectName(o), data, nil
}

package kube

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

// ErrInvalidAppName: an application name that does not follow AppName's
// forms. Retrying cannot help.
var ErrInvalidAppName = errors.New("invalid application name")

// AppNameForms is the one-line summary of AppName for messages and help.
const AppNameForms = "NAMESPACE, NAMESPACE:SELECTOR, NAMESPACE/NAME or NAMESPACE/KIND/NAME"

// AppName is an application as a user names it on Kubernetes, in
// backup.requested's application and `tidemark backup --app`:
//
//	shop                      every object of namespace shop
//	shop:app=db,tier!=cache   the objects of shop matching a label selector
//	shop/db                   the StatefulSet or Deployment db, or the object
//	                          named db that carries a blueprint annotation,
//	                          with everything it owns and the PVCs of its pods
//	shop/statefulset/db       the same with the kind given: statefulset,
//	                          deployment, a custom resource's kind or plural
//	                          (perconaservermongodb), or KIND.GROUP when two
//	                          API groups have the kind
//
// The name is the application's identity in Tidemark (its runs and restore
// points), so name an application the same way every time.
type AppName struct {
	Namespace string
	// Selector is a label selector; set only in the NAMESPACE:SELECTOR form.
	Selector string
	// Kind is the kind as written (any case, singular or plural, with an
	// optional .group); set only in the NAMESPACE/KIND/NAME form.
	Kind string
	// Name is the object's name; empty for a namespace or a selector.
	Name string
}

var kindPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]*$`)

// ParseAppName parses the forms AppName lists. Its errors say which part
// is wrong and show the forms.
func ParseAppName(s string) (AppName, error) {
	if strings.TrimSpace(s) == "" {
		return AppName{}, fmt.Errorf("%w: the name is empty; name the application as %s", ErrInvalidAppName, AppNameForms)
	}
	// A selector never contains ':', but may contain '/' (a label key such
	// as app.kubernetes.io/name), so ':' is looked for first.
	if ns, sel, ok := strings.Cut(s, ":"); ok {
		if strings.Contains(ns, "/") {
			return AppName{}, fmt.Errorf("%w: %q: a label selector goes with a namespace alone (NAMESPACE:SELECTOR, such as shop:app=db), not with an object's name", ErrInvalidAppName, s)
		}
		if err := checkNamespace(s, ns); err != nil {
			return AppName{}, err
		}
		if strings.TrimSpace(sel) == "" {
			return AppName{}, fmt.Errorf("%w: %q: the label selector after %q is empty (such as %s:app=db; name the namespace alone to take all of it)", ErrInvalidAppName, s, ns+":", ns)
		}
		if _, err := labels.Parse(sel); err != nil {
			return AppName{}, fmt.Errorf("%w: %q: label selector %q: %v", ErrInvalidAppName, s, sel, err)
		}
		return AppName{Namespace: ns, Selector: sel}, nil
	}
	parts := strings.Split(s, "/")
	if err := checkNamespace(s, parts[0]); err != nil {
		return AppName{}, err
	}
	n := AppName{Namespace: parts[0]}
	switch len(parts) {
	case 1:
		return n, nil
	case 2:
		n.Name = parts[1]
	case 3:
		n.Kind, n.Name = parts[1], parts[2]
		if !kindPattern.MatchString(n.Kind) {
			return AppName{}, fmt.Errorf("%w: %q: kind %q is not a kind or resource name (such as statefulset, deployment or perconaservermongodb)", ErrInvalidAppName, s, n.Kind)
		}
	default:
		return AppName{}, fmt.Errorf("%w: %q has %d parts separated by /; name the application as %s", ErrInvalidAppName, s, len(parts), AppNameForms)
	}
	if errs := validation.IsDNS1123Subdomain(n.Name); len(errs) > 0 {
		return AppName{}, fmt.Errorf("%w: %q: %q is not an object name: %s", ErrInvalidAppName, s, n.Name, strings.Join(errs, "; "))
	}
	return n, nil
}

func checkNamespace(full, ns string) error {
	if ns == "" {
		return fmt.Errorf("%w: %q does not start with a namespace; name the application as %s", ErrInvalidAppName, full, AppNameForms)
	}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return fmt.Errorf("%w: %q: namespace %q is not a namespace name: %s", ErrInvalidAppName, full, ns, strings.Join(errs, "; "))
	}
	return nil
}

// String returns the name in the form it was parsed from.
func (n AppName) String() string {
	switch {
	case n.Selector != "":
		return n.Namespace + ":" + n.Selector
	case n.Kind != "":
		return n.Namespace + "/" + n.Kind + "/" + n.Name
	case n.Name != "":
		return n.Namespace + "/" + n.Name
	}
	return n.Namespace
}

// AppNamespace returns the namespace of the application called name: where
// the steps of its runs act when their spec names no namespace.
func AppNamespace(name string) (string, error) {
	n, err := ParseAppName(name)
	if err != nil {
		return "", err
	}
	return n.Namespace, nil
}

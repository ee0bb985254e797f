package kube

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/jsonpath"
)

// Apply creates or updates spec.Object with server-side apply (field
// manager "tidemark", conflicts forced: the blueprint owns the fields it
// writes), waits for spec.Wait, and returns spec.Outputs read from the
// object. The object's namespace defaults to namespace.
func (p *Platform) Apply(ctx context.Context, namespace string, spec ApplySpec) (map[string]string, error) {
	if ps := checkApply(&spec); len(ps) > 0 {
		return nil, fmt.Errorf("%w: apply.%s %s (%s)", ErrInvalidSpec, ps[0].Field, ps[0].Message, ps[0].Hint)
	}
	obj := &unstructured.Unstructured{Object: spec.Object}
	ri, err := p.resourceFor(obj, namespace)
	if err != nil {
		return nil, err
	}
	applied, err := ri.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	if err != nil {
		return nil, fmt.Errorf("applying %s %s: %w", obj.GetKind(), objectName(obj), err)
	}
	if spec.Wait != nil {
		if applied, err = p.waitField(ctx, ri, applied, *spec.Wait); err != nil {
			return nil, err
		}
	}
	out := make(map[string]string, len(spec.Outputs))
	for _, name := range sortedKeys(spec.Outputs) {
		v, found, err := evalJSONPath(spec.Outputs[name], applied.Object)
		if err != nil {
			return nil, fmt.Errorf("%w: apply.outputs.%s: %v", ErrInvalidSpec, name, err)
		}
		if !found {
			return nil, fmt.Errorf("%w: apply.outputs.%s: %s selects nothing in %s %s", ErrNotFound, name, spec.Outputs[name], applied.GetKind(), objectName(applied))
		}
		out[name] = v
	}
	return out, nil
}

// resourceFor maps obj's apiVersion and kind to a resource client and
// fills in its namespace when the kind is namespaced.
func (p *Platform) resourceFor(obj *unstructured.Unstructured, namespace string) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	m, err := p.c.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		// A CRD installed after the mapper was filled: look again once.
		p.c.Mapper.Reset()
		m, err = p.c.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: the cluster serves no kind %s in %s (is its CRD installed?): %v", ErrNotFound, gvk.Kind, gvk.GroupVersion(), err)
	}
	if m.Scope.Name() != meta.RESTScopeNameNamespace {
		return p.c.Dynamic.Resource(m.Resource), nil
	}
	if obj.GetNamespace() == "" {
		obj.SetNamespace(namespace)
	}
	return p.c.Dynamic.Resource(m.Resource).Namespace(obj.GetNamespace()), nil
}

// waitField polls the object until w's condition holds, fails at once on
// its failure condition, and gives up when ctx ends.
func (p *Platform) waitField(ctx context.Context, ri dynamic.ResourceInterface, obj *unstructured.Unstructured, w ApplyWait) (*unstructured.Unstructured, error) {
	interval := w.Interval.Std()
	if interval <= 0 {
		interval = p.pollInterval
	}
	cond, err := newWaitCondition(w)
	if err != nil {
		return nil, err
	}
	name := obj.GetName()
	last := "(not set)"
	for {
		done, failed, seen, err := cond(obj.Object)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidSpec, err)
		}
		if seen != "" {
			last = seen
		}
		if done {
			return obj, nil
		}
		if failed != "" {
			return nil, fmt.Errorf("%w: %s %s has %s%s", ErrConditionFailed, obj.GetKind(), objectName(obj), failed, statusHint(obj))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w waiting for %s %s to have %s (last seen: %s); raise the step's timeout if the operator is slow",
				ErrTimeout, obj.GetKind(), objectName(obj), describeWait(w), last)
		case <-time.After(interval):
		}
		next, err := ri.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			if endingWith(ctx, err) {
				continue // report the timeout, not the cancelled read
			}
			return nil, fmt.Errorf("reading %s %s: %w", obj.GetKind(), objectName(obj), err)
		}
		obj = next
	}
}

// waitCondition reports whether an object meets the wait (done), meets
// its failure condition (failed, saying which), and what was seen, for
// the timeout message.
type waitCondition func(obj map[string]any) (done bool, failed, seen string, err error)

func newWaitCondition(w ApplyWait) (waitCondition, error) {
	if w.CEL == "" {
		return func(obj map[string]any) (bool, string, string, error) {
			v, found, err := evalJSONPath(w.JSONPath, obj)
			if err != nil || !found {
				return false, "", "", err
			}
			if v == w.Value {
				return true, "", "", nil
			}
			if slices.Contains(w.FailValues, v) {
				return false, fmt.Sprintf("%s = %q (apply.wait.failValues)", w.JSONPath, v), "", nil
			}
			return false, "", fmt.Sprintf("%q", v), nil
		}, nil
	}
	ok, err := compileCEL(w.CEL)
	if err != nil {
		return nil, fmt.Errorf("apply.wait.cel: %v", err)
	}
	var fail *celCondition
	if w.FailCEL != "" {
		if fail, err = compileCEL(w.FailCEL); err != nil {
			return nil, fmt.Errorf("apply.wait.failCEL: %v", err)
		}
	}
	return func(obj map[string]any) (bool, string, string, error) {
		if fail != nil {
			failed, _, err := fail.eval(obj)
			if err != nil {
				return false, "", "", fmt.Errorf("apply.wait.failCEL: %v", err)
			}
			if failed {
				return false, fmt.Sprintf("failCEL %q true (apply.wait.failCEL)", w.FailCEL), "", nil
			}
		}
		done, pending, err := ok.eval(obj)
		if err != nil {
			return false, "", "", fmt.Errorf("apply.wait.cel: %v", err)
		}
		seen := "false"
		if pending != "" {
			seen = pending
		}
		return done, "", seen, nil
	}, nil
}

func describeWait(w ApplyWait) string {
	if w.CEL != "" {
		return fmt.Sprintf("cel %q true", w.CEL)
	}
	return fmt.Sprintf("%s = %q", w.JSONPath, w.Value)
}

// statusHint quotes an object's status.error or status.message, where
// operators explain a failure.
func statusHint(obj *unstructured.Unstructured) string {
	for _, f := range []string{"error", "message", "reason"} {
		if s, ok, _ := unstructured.NestedString(obj.Object, "status", f); ok && s != "" {
			return fmt.Sprintf(": status.%s: %s", f, s)
		}
	}
	return ""
}

func objectName(obj *unstructured.Unstructured) string {
	if ns := obj.GetNamespace(); ns != "" {
		return ns + "/" + obj.GetName()
	}
	return obj.GetName()
}

func compileJSONPath(expr string) (*jsonpath.JSONPath, error) {
	if !strings.HasPrefix(expr, "{") || !strings.HasSuffix(expr, "}") {
		return nil, fmt.Errorf("%q is not a JSONPath in braces", expr)
	}
	jp := jsonpath.New("field")
	if err := jp.Parse(expr); err != nil {
		return nil, fmt.Errorf("JSONPath %q: %v", expr, err)
	}
	return jp, nil
}

// evalJSONPath returns the text of what expr selects in obj, and whether
// it selects anything.
func evalJSONPath(expr string, obj map[string]any) (string, bool, error) {
	jp, err := compileJSONPath(expr)
	if err != nil {
		return "", false, err
	}
	res, err := jp.FindResults(obj)
	if err != nil {
		// jsonpath reports a missing key as an error; it is "not there yet".
		if strings.Contains(err.Error(), "is not found") {
			return "", false, nil
		}
		return "", false, fmt.Errorf("JSONPath %s: %v", expr, err)
	}
	if len(res) == 0 || len(res[0]) == 0 {
		return "", false, nil
	}
	var b bytes.Buffer
	if err := jp.PrintResults(&b, res[0]); err != nil {
		return "", false, fmt.Errorf("JSONPath %s: %v", expr, err)
	}
	return b.String(), true, nil
}

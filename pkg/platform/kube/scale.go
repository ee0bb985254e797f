package kube

import (
	"context"
	"fmt"
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Scale sets a workload's replicas through its scale subresource and
// returns the count it had before. Unless spec.NoWait, it then waits until
// the workload reports the new count ready (or, for 0, until its pods are
// gone); the wait ends with ctx, with an error saying what it still saw.
func (p *Platform) Scale(ctx context.Context, namespace string, spec ScaleSpec) (int32, error) {
	orig, err := p.scale(ctx, namespace, spec)
	if orig == nil {
		return 0, err
	}
	return *orig, err
}

// scale returns the original count once it was read, also with an error.
func (p *Platform) scale(ctx context.Context, namespace string, spec ScaleSpec) (*int32, error) {
	kind, name, ok := parseWorkload(spec.Workload)
	if !ok {
		return nil, fmt.Errorf("%w: scale.workload %q: use statefulset/NAME or deployment/NAME", ErrInvalidSpec, spec.Workload)
	}
	if spec.Replicas < 0 {
		return nil, fmt.Errorf("%w: scale.replicas %d is negative", ErrInvalidSpec, spec.Replicas)
	}
	ns := spec.Namespace
	if ns == "" {
		ns = namespace
	}
	getScale, updateScale := p.scaleFuncs(kind, ns)
	sc, err := getScale(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: %s %s/%s does not exist (scale.workload)", ErrNotFound, kind, ns, name)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the scale of %s %s/%s: %w", kind, ns, name, err)
	}
	original := sc.Spec.Replicas
	// A retried step (or a redelivered command) finds the workload already
	// scaled: the count it had before the first attempt is kept in an
	// annotation, so originalReplicas stays the true original and the
	// inverse does not "restore" 0.
	ann, err := p.scaledFrom(ctx, kind, ns, name)
	if err != nil {
		return nil, err
	}
	if ann != nil {
		original = *ann
	}
	switch {
	case ann == nil && sc.Spec.Replicas != int32(spec.Replicas):
		if err := p.setScaledFrom(ctx, kind, ns, name, &original); err != nil {
			return nil, err
		}
	case ann != nil && *ann == int32(spec.Replicas):
		// Back where it was: this is the restore.
		if err := p.setScaledFrom(ctx, kind, ns, name, nil); err != nil {
			return &original, err
		}
	}
	if sc.Spec.Replicas != int32(spec.Replicas) {
		sc.Spec.Replicas = int32(spec.Replicas)
		sc.ResourceVersion = "" // the annotation patch changed it; the count is ours to set
		if _, err := updateScale(ctx, name, sc, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
			return &original, fmt.Errorf("scaling %s %s/%s to %d: %w", kind, ns, name, spec.Replicas, err)
		}
	}
	if spec.NoWait {
		return &original, nil
	}
	return &original, p.waitScaled(ctx, kind, ns, name, int32(spec.Replicas))
}

type (
	getScaleFunc    func(context.Context, string, metav1.GetOptions) (*autoscalingv1.Scale, error)
	updateScaleFunc func(context.Context, string, *autoscalingv1.Scale, metav1.UpdateOptions) (*autoscalingv1.Scale, error)
)

func (p *Platform) scaleFuncs(kind, ns string) (getScaleFunc, updateScaleFunc) {
	if kind == "StatefulSet" {
		c := p.c.Core.AppsV1().StatefulSets(ns)
		return c.GetScale, c.UpdateScale
	}
	c := p.c.Core.AppsV1().Deployments(ns)
	return c.GetScale, c.UpdateScale
}

// waitScaled polls until the workload's controller has seen the new spec
// and reports want replicas, all ready; for 0, also until no pod of its
// selector is left (a terminating database pod still holds its volume).
func (p *Platform) waitScaled(ctx context.Context, kind, ns, name string, want int32) error {
	last := "nothing yet"
	t := time.NewTicker(p.pollInterval)
	defer t.Stop()
	for {
		done, state, err := p.scaled(ctx, kind, ns, name, want)
		switch {
		case err != nil && !endingWith(ctx, err):
			return err
		case err == nil && done:
			return nil
		case err == nil:
			last = state
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w waiting for %s %s/%s to reach %d ready replicas (last seen: %s); raise the step's timeout if the workload is slow to stop or start",
				ErrTimeout, kind, ns, name, want, last)
		case <-t.C:
		}
	}
}

func (p *Platform) scaled(ctx context.Context, kind, ns, name string, want int32) (bool, string, error) {
	var (
		gen, observed   int64
		replicas, ready int32
		selector        *metav1.LabelSelector
	)
	if kind == "StatefulSet" {
		s, err := p.c.Core.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, "", fmt.Errorf("reading %s %s/%s: %w", kind, ns, name, err)
		}
		gen, observed, replicas, ready, selector = s.Generation, s.Status.ObservedGeneration, s.Status.Replicas, s.Status.ReadyReplicas, s.Spec.Selector
	} else {
		d, err := p.c.Core.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, "", fmt.Errorf("reading %s %s/%s: %w", kind, ns, name, err)
		}
		gen, observed, replicas, ready, selector = d.Generation, d.Status.ObservedGeneration, d.Status.Replicas, d.Status.ReadyReplicas, d.Spec.Selector
		if progressDeadlineExceeded(d) {
			return false, "", fmt.Errorf("%w: Deployment %s/%s exceeded its progress deadline while scaling to %d", ErrConditionFailed, ns, name, want)
		}
	}
	state := fmt.Sprintf("observedGeneration %d of %d, %d replicas, %d ready", observed, gen, replicas, ready)
	if observed < gen || replicas != want || ready != want {
		return false, state, nil
	}
	if want > 0 {
		return true, state, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(selector)
	if err != nil || sel.Empty() {
		return true, state, nil // no usable selector: the status is all there is
	}
	pods, err := p.c.Core.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return false, "", fmt.Errorf("listing the pods of %s %s/%s: %w", kind, ns, name, err)
	}
	if n := len(pods.Items); n > 0 {
		return false, fmt.Sprintf("%s; %d pod(s) still exist, such as %s", state, n, pods.Items[0].Name), nil
	}
	return true, state, nil
}

func progressDeadlineExceeded(d *appsv1.Deployment) bool {
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentProgressing && c.Reason == "ProgressDeadlineExceeded" {
			return true
		}
	}
	return false
}

// runScale runs a scale step. Once the workload was read, its original
// count is an output even when the step fails (scaling or waiting), so the
// inverse that restores it can still be rendered.
func (p *Platform) runScale(ctx context.Context, namespace string, spec ScaleSpec) (map[string]string, error) {
	orig, err := p.scale(ctx, namespace, spec)
	if orig == nil {
		return nil, err
	}
	return map[string]string{OutputOriginalReplicas: strconv.Itoa(int(*orig))}, err
}

// AnnotationScaledFrom records, on a workload a scale step changed, the
// replica count it had before; the step that scales it back removes it.
const AnnotationScaledFrom = "tidemark.io/scaled-from"

func (p *Platform) scaledFrom(ctx context.Context, kind, ns, name string) (*int32, error) {
	var anns map[string]string
	if kind == "StatefulSet" {
		s, err := p.c.Core.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("reading %s %s/%s: %w", kind, ns, name, err)
		}
		anns = s.Annotations
	} else {
		d, err := p.c.Core.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("reading %s %s/%s: %w", kind, ns, name, err)
		}
		anns = d.Annotations
	}
	v, ok := anns[AnnotationScaledFrom]
	if !ok {
		return nil, nil
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("%w: %s %s/%s has annotation %s=%q, which is not a replica count; remove it", ErrInvalidSpec, kind, ns, name, AnnotationScaledFrom, v)
	}
	r := int32(n)
	return &r, nil
}

// setScaledFrom sets the annotation to *n, or removes it when n is nil.
func (p *Platform) setScaledFrom(ctx context.Context, kind, ns, name string, n *int32) error {
	val := "null"
	if n != nil {
		val = strconv.Quote(strconv.Itoa(int(*n)))
	}
	patch := []byte(fmt.Sprintf(`{"metadata":{"annotations":{%q:%s}}}`, AnnotationScaledFrom, val))
	var err error
	if kind == "StatefulSet" {
		_, err = p.c.Core.AppsV1().StatefulSets(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager})
	} else {
		_, err = p.c.Core.AppsV1().Deployments(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager})
	}
	if err != nil {
		return fmt.Errorf("annotating %s %s/%s with %s: %w", kind, ns, name, AnnotationScaledFrom, err)
	}
	return nil
}

package kube

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// bundleOf is a manifest bundle of objs, as CaptureManifests makes it.
func bundleOf(t *testing.T, objs ...map[string]any) []byte {
	t.Helper()
	var us []*unstructured.Unstructured
	for _, o := range objs {
		us = append(us, &unstructured.Unstructured{Object: o})
	}
	b, err := MarshalManifests(us)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A captured StatefulSet that a backup's scale step had stopped is
// planned at the count the step recorded, held at 0 until its volumes are
// in; every namespaced object is marked with the restore's run and moved
// to the target namespace; the PVCs are the volumes the namespace can take.
func TestPlanNamespaceRestoreHoldsWorkloadsAtTheirCapturedCount(t *testing.T) {
	bundle := bundleOf(t,
		map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "shop"}},
		map[string]any{"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": map[string]any{"name": "db", "namespace": "shop",
			"annotations": map[string]any{AnnotationScaledFrom: "3"}}, "spec": map[string]any{"replicas": int64(0)}},
		map[string]any{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": map[string]any{"name": "web", "namespace": "shop"}, "spec": map[string]any{}},
		map[string]any{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": map[string]any{"name": "idle", "namespace": "shop"}, "spec": map[string]any{"replicas": int64(0)}},
		map[string]any{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": map[string]any{"name": "data-db-1", "namespace": "shop"}},
		map[string]any{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": map[string]any{"name": "data-db-0", "namespace": "shop"}},
	)
	nr, err := PlanNamespaceRestore(bundle, "shop", "shop-copy", "run-1", false)
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]int32{}
	for _, w := range nr.Held {
		held[w.Workload()] = w.Replicas
	}
	if held["statefulset/db"] != 3 || held["deployment/web"] != 1 || held["deployment/idle"] != 0 || len(held) != 3 {
		t.Errorf("held %v: want db at the 3 its scale step recorded, web at the API's default 1, idle at 0", held)
	}
	if strings.Join(nr.Claims, ",") != "data-db-0,data-db-1" {
		t.Errorf("claims %v", nr.Claims)
	}
	if nr.Options.ExistingResourcePolicy != ExistingSkip || nr.Options.NamespaceMapping["shop"] != "shop-copy" {
		t.Errorf("options %+v", nr.Options)
	}

	// What RestoreManifests will create, modifiers applied.
	mods, err := nr.Options.compile()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range nr.Objects {
		c := o.DeepCopy()
		CleanObject(c)
		mapNamespaces(c, nr.Options.NamespaceMapping)
		for i := range mods {
			if mods[i].matches(c, o.GetNamespace()) {
				if err := mods[i].apply(c); err != nil {
					t.Fatal(err)
				}
			}
		}
		ann := c.GetAnnotations()
		switch c.GetKind() {
		case "Namespace":
			if c.GetName() != "shop-copy" || ann[AnnotationRestoredBy] != "" {
				t.Errorf("namespace %s annotations %v", c.GetName(), ann)
			}
			continue
		case "StatefulSet", "Deployment":
			r, _, _ := unstructured.NestedFieldNoCopy(c.Object, "spec", "replicas")
			if n, _ := r.(float64); n != 0 {
				t.Errorf("%s %s created with replicas %v, want 0 until its volumes are in", c.GetKind(), c.GetName(), r)
			}
			if want := map[string]string{"db": "3", "web": "1", "idle": "0"}[c.GetName()]; ann[AnnotationScaledFrom] != want {
				t.Errorf("%s %s: scaled-from %q, want %q (what the start step scales it back to)", c.GetKind(), c.GetName(), ann[AnnotationScaledFrom], want)
			}
		}
		if c.GetNamespace() != "shop-copy" || ann[AnnotationRestoredBy] != "run-1" {
			t.Errorf("%s %s/%s annotations %v: want it in shop-copy, marked with run-1", c.GetKind(), c.GetNamespace(), c.GetName(), ann)
		}
	}

	if nr, err := PlanNamespaceRestore(bundle, "shop", "shop-copy", "run-1", true); err != nil || nr.Options.ExistingResourcePolicy != ExistingUpdate {
		t.Errorf("with update: %+v, %v", nr, err)
	}
	if _, err := PlanNamespaceRestore(bundle, "shop", "Shop_Copy", "run-1", false); !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), `"Shop_Copy" is not a namespace name`) {
		t.Errorf("a bad namespace: %v", err)
	}
	if _, err := PlanNamespaceRestore([]byte(`{"kind":"Pod"}`), "shop", "shop-copy", "run-1", false); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("not a bundle: %v", err)
	}
}

// A capture taken while a scale step held the workload stopped records
// the count it runs at, without the step's annotation.
func TestCleanObjectRestoresAStoppedWorkloadsCount(t *testing.T) {
	o := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "apps/v1", "kind": "StatefulSet",
		"metadata": map[string]any{"name": "db", "annotations": map[string]any{AnnotationScaledFrom: "3", "keep": "me"}}, "spec": map[string]any{"replicas": int64(0)}}}
	CleanObject(o)
	b, _ := json.Marshal(o.Object)
	if r, _, _ := unstructured.NestedInt64(o.Object, "spec", "replicas"); r != 3 || o.GetAnnotations()[AnnotationScaledFrom] != "" || o.GetAnnotations()["keep"] != "me" {
		t.Errorf("cleaned %s: want replicas 3, the scaled-from annotation gone, the others kept", b)
	}
}

func TestAppNameIn(t *testing.T) {
	for in, want := range map[string]string{"shop": "copy", "shop/db": "copy/db", "shop/sts/db": "copy/sts/db", "shop:app=db": "copy:app=db"} {
		if got, err := AppNameIn(in, "copy"); err != nil || got != want {
			t.Errorf("AppNameIn(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := AppNameIn("shop/db", "Not_A_Namespace"); !errors.Is(err, ErrInvalidAppName) {
		t.Errorf("a bad namespace: %v", err)
	}
}

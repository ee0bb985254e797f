//go:build kubeapi

// Tests against a real kube-apiserver: `make test-kube` (go test -tags kubeapi).

package kube

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	kubetest "github.com/tidemark-dev/tidemark/tests/kube"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

var nsSeq atomic.Int64

// harness is one test's view of the shared apiserver: a fresh namespace
// and a Platform.
type harness struct {
	t  *testing.T
	p  *Platform
	ns string
	// workloads is the workload stand-in, when the test started one.
	workloads *kubetest.WorkloadStandIn
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	cfg := kubetest.Config(t)
	c, err := NewClients(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, p: New(c, WithPollInterval(20*time.Millisecond))}
	h.ns = fmt.Sprintf("t%d-%s", nsSeq.Add(1), strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")))
	if len(h.ns) > 60 {
		h.ns = h.ns[:60]
	}
	h.ns = strings.TrimRight(h.ns, "-")
	h.createNamespace(h.ns)
	return h
}

func (h *harness) createNamespace(ns string) {
	h.t.Helper()
	ctx := context.Background()
	if _, err := h.p.c.Core.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
	// No controller-manager makes the default ServiceAccount pods need.
	if _, err := h.p.c.Core.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

// apply creates the objects of a multi-document YAML manifest in h.ns
// (unless they name a namespace), as a user's kubectl apply would.
// ${NS} in the manifest stands for h.ns.
func (h *harness) apply(manifest string) {
	h.t.Helper()
	manifest = strings.ReplaceAll(manifest, "${NS}", h.ns)
	for _, doc := range strings.Split(manifest, "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			h.t.Fatalf("test manifest: %v\n%s", err, doc)
		}
		obj := &unstructured.Unstructured{Object: m}
		ri, err := h.p.resourceFor(obj, h.ns)
		if err != nil {
			h.t.Fatal(err)
		}
		if _, err := ri.Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
			h.t.Fatalf("creating %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
	}
}

// boundPVC creates a CSI PersistentVolume of driver and a PVC bound to it
// (the binding a PV controller would make: the PV's claimRef, the PVC's
// volumeName). The PV's volume handle is its name.
func (h *harness) boundPVC(name, driver string, labels map[string]string, annotations map[string]string) {
	h.t.Helper()
	ctx := context.Background()
	pvName := "pv-" + h.ns + "-" + name
	if len(pvName) > 63 {
		pvName = pvName[len(pvName)-63:]
		pvName = strings.TrimLeft(pvName, "-")
	}
	size := resource.MustParse("1Gi")
	_, err := h.p.c.Core.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvName},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:               corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: pvName}},
			ClaimRef:               &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: h.ns, Name: name},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	sc := "fast"
	_, err = h.p.c.Core.CoreV1().PersistentVolumeClaims(h.ns).Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: annotations},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &sc,
			VolumeName:       pvName,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) get(gvr schema.GroupVersionResource, ns, name string) (*unstructured.Unstructured, error) {
	return h.p.c.Dynamic.Resource(gvr).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

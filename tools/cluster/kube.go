package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
)

const csiDriverName = "csi.test.tidemark.io"

// storageManifests make the test CSI driver the cluster's default for
// volumes, snapshots and group snapshots.
var storageManifests = fmt.Sprintf(`apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata:
  name: %[1]s
spec:
  attachRequired: false
  podInfoOnMount: false
  volumeLifecycleModes: [Persistent]
  fsGroupPolicy: File
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: %[2]s
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: %[1]s
reclaimPolicy: Delete
volumeBindingMode: Immediate
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata:
  name: %[2]s
  annotations:
    snapshot.storage.kubernetes.io/is-default-class: "true"
driver: %[1]s
deletionPolicy: Delete
---
apiVersion: groupsnapshot.storage.k8s.io/v1
kind: VolumeGroupSnapshotClass
metadata:
  name: %[2]s
  annotations:
    groupsnapshot.storage.kubernetes.io/is-default-class: "true"
driver: %[1]s
deletionPolicy: Delete
`, csiDriverName, storageClass)

type kubeClient struct {
	cs  *kubernetes.Clientset
	dyn dynamic.Interface
	rm  *restmapper.DeferredDiscoveryRESTMapper
}

func newKubeClient(kubeconfig string) (*kubeClient, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 50, 100
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &kubeClient{cs: cs, dyn: dyn, rm: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}, nil
}

// poll calls f every interval until it returns true or an error, or the
// timeout passes; the last "not yet" reason goes into the timeout error.
func poll(ctx context.Context, timeout time.Duration, what string, f func() (bool, string, error)) error {
	deadline := time.Now().Add(timeout)
	var why string
	for {
		ok, reason, err := f()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		why = reason
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after %v: %s", what, timeout, why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (k *kubeClient) waitReady(ctx context.Context, timeout time.Duration) error {
	return poll(ctx, timeout, "apiserver /readyz", func() (bool, string, error) {
		b, err := k.cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		return string(b) == "ok", string(b), nil
	})
}

func (k *kubeClient) waitNodeReady(ctx context.Context, node string, timeout time.Duration) error {
	return poll(ctx, timeout, "node "+node+" Ready", func() (bool, string, error) {
		n, err := k.cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue, c.Reason + ": " + c.Message, nil
			}
		}
		return false, "no Ready condition", nil
	})
}

// waitCSINode waits until the kubelet has registered driver on node.
func (k *kubeClient) waitCSINode(ctx context.Context, node, driver string, timeout time.Duration) error {
	return poll(ctx, timeout, "CSI driver "+driver+" registered on "+node, func() (bool, string, error) {
		n, err := k.cs.StorageV1().CSINodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		for _, d := range n.Spec.Drivers {
			if d.Name == driver {
				return true, "", nil
			}
		}
		return false, fmt.Sprintf("CSINode has %d other drivers", len(n.Spec.Drivers)), nil
	})
}

// applySnapshotCRDs installs the snapshot and group-snapshot CRDs from the
// config/crd directory of the external-snapshotter client module the
// project requires, and waits until they are served.
func (k *kubeClient) applySnapshotCRDs(ctx context.Context) error {
	const module = "github.com/kubernetes-csi/external-snapshotter/client/v8"
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", module).Output()
	if err != nil {
		return fmt.Errorf("go list -m %s (run from the repository): %w", module, err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "config", "crd")
	files, err := filepath.Glob(filepath.Join(dir, "*.storage.k8s.io_*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no CRDs in %s: %v", dir, err)
	}
	sort.Strings(files)
	var all bytes.Buffer
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		all.WriteString("\n---\n")
		all.Write(b)
	}
	if err := k.apply(ctx, all.String()); err != nil {
		return err
	}
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, f := range files {
		name := strings.SplitN(strings.TrimSuffix(filepath.Base(f), ".yaml"), "_", 2)
		crd := name[1] + "." + name[0]
		if err := poll(ctx, time.Minute, "CRD "+crd+" established", func() (bool, string, error) {
			u, err := k.dyn.Resource(crds).Get(ctx, crd, metav1.GetOptions{})
			if err != nil {
				return false, err.Error(), nil
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return true, "", nil
				}
			}
			return false, "not established", nil
		}); err != nil {
			return err
		}
	}
	k.rm.Reset()
	return nil
}

// apply server-side-applies every document of a multi-document YAML.
func (k *kubeClient) apply(ctx context.Context, manifests string) error {
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifests), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if len(u.Object) == 0 {
			continue
		}
		gvk := u.GroupVersionKind()
		var m *meta.RESTMapping
		err := poll(ctx, time.Minute, "API for "+gvk.String(), func() (bool, string, error) {
			var err error
			m, err = k.rm.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				k.rm.Reset()
				return false, err.Error(), nil
			}
			return true, "", nil
		})
		if err != nil {
			return err
		}
		body, err := u.MarshalJSON()
		if err != nil {
			return err
		}
		var ri dynamic.ResourceInterface = k.dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ns := u.GetNamespace()
			if ns == "" {
				ns = "default"
			}
			ri = k.dyn.Resource(m.Resource).Namespace(ns)
		}
		force := true
		if _, err := ri.Patch(ctx, u.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: "tidemark-cluster", Force: &force}); err != nil {
			return fmt.Errorf("applying %s %s: %w", gvk.Kind, u.GetName(), err)
		}
	}
}

// waitHTTP waits for a 200 from url.
func waitHTTP(ctx context.Context, url string, client *http.Client, timeout time.Duration) error {
	if client == nil {
		client = &http.Client{Timeout: 2 * time.Second}
	}
	return poll(ctx, timeout, url, func() (bool, string, error) {
		resp, err := client.Get(url)
		if err != nil {
			return false, err.Error(), nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status, nil
	})
}

//go:build cluster

package cluster

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	groupv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumegroupsnapshot/v1"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// The harness's names (tools/cluster).
const (
	storageClass = "tidemark-test-csi"
	busybox      = "tidemark.local/busybox:test"
)

type env struct {
	t    *testing.T
	ctx  context.Context
	cs   *kubernetes.Clientset
	snap *snapclient.Clientset
	ns   string
}

// kubeconfig is $TIDEMARK_KUBECONFIG, else the harness's default path.
func kubeconfig(t *testing.T) string {
	if p := os.Getenv("TIDEMARK_KUBECONFIG"); p != "" {
		return p
	}
	dir := os.Getenv("TIDEMARK_CLUSTER_DIR")
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(base, "tidemark-cluster")
	}
	p := filepath.Join(dir, "kubeconfig")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("no cluster (%v): run `make cluster-up` first", err)
	}
	return p
}

func setup(t *testing.T) *env {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig(t))
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := snapclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "cluster-proof-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, cs: cs, snap: sc, ns: ns.Name}
	t.Cleanup(func() { e.deleteNamespace() })
	// Pods are refused until the controller manager has made the
	// namespace's default ServiceAccount, which takes a moment on a fresh
	// cluster (as in the upstream e2e framework).
	e.waitFor("ServiceAccount default in "+e.ns, time.Minute, func() (bool, string) {
		_, err := cs.CoreV1().ServiceAccounts(e.ns).Get(ctx, "default", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	return e
}

// deleteNamespace deletes the test's namespace and waits until its
// volumes are gone too, so a run leaves no PV or CSI volume behind.
func (e *env) deleteNamespace() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := e.cs.CoreV1().Namespaces().Delete(ctx, e.ns, metav1.DeleteOptions{}); err != nil {
		e.t.Errorf("deleting namespace %s: %v", e.ns, err)
		return
	}
	e.waitFor("namespace "+e.ns+" and its volumes gone", 3*time.Minute, func() (bool, string) {
		if _, err := e.cs.CoreV1().Namespaces().Get(ctx, e.ns, metav1.GetOptions{}); err == nil {
			return false, "namespace still there"
		}
		pvs, err := e.cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, pv := range pvs.Items {
			if pv.Spec.ClaimRef != nil && pv.Spec.ClaimRef.Namespace == e.ns {
				return false, "PV " + pv.Name + " still there"
			}
		}
		return true, ""
	})
}

func (e *env) waitFor(what string, timeout time.Duration, f func() (bool, string)) time.Duration {
	e.t.Helper()
	start := time.Now()
	var why string
	for time.Since(start) < timeout {
		ok, reason := f()
		if ok {
			return time.Since(start)
		}
		why = reason
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("%s: not after %v: %s", what, timeout, why)
	return 0
}

func (e *env) pvc(name string, labels map[string]string, source *corev1.TypedLocalObjectReference) {
	e.t.Helper()
	sc := storageClass
	_, err := e.cs.CoreV1().PersistentVolumeClaims(e.ns).Create(e.ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: &sc,
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")}},
			DataSource:       source,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
}

// run runs a busybox pod with script (the PVC, if any, at /data) to
// completion and returns its output.
func (e *env) run(name, script, pvc string) string {
	e.t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "c", Image: busybox, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sh", "-c", script},
			}},
		},
	}
	if pvc != "" {
		pod.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: pvc},
		}}}
		pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	}
	if _, err := e.cs.CoreV1().Pods(e.ns).Create(e.ctx, pod, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	var phase corev1.PodPhase
	took := e.waitFor("pod "+name+" finished", 3*time.Minute, func() (bool, string) {
		p, err := e.cs.CoreV1().Pods(e.ns).Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		phase = p.Status.Phase
		return phase == corev1.PodSucceeded || phase == corev1.PodFailed, string(phase) + " " + p.Status.Message
	})
	out, err := e.cs.CoreV1().Pods(e.ns).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(e.ctx)
	if err != nil {
		e.t.Fatalf("logs of %s: %v", name, err)
	}
	if phase != corev1.PodSucceeded {
		e.t.Fatalf("pod %s %s: %s", name, phase, out)
	}
	e.t.Logf("pod %s ran to completion in %v", name, took.Round(time.Millisecond))
	return string(bytes.TrimSpace(out))
}

func (e *env) waitSnapshotReady(name string) *snapv1.VolumeSnapshot {
	e.t.Helper()
	var vs *snapv1.VolumeSnapshot
	took := e.waitFor("VolumeSnapshot "+name+" readyToUse", 2*time.Minute, func() (bool, string) {
		var err error
		vs, err = e.snap.SnapshotV1().VolumeSnapshots(e.ns).Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if vs.Status == nil {
			return false, "no status"
		}
		if vs.Status.Error != nil && vs.Status.Error.Message != nil {
			return false, *vs.Status.Error.Message
		}
		return vs.Status.ReadyToUse != nil && *vs.Status.ReadyToUse, "not ready"
	})
	e.t.Logf("VolumeSnapshot %s ready in %v", name, took.Round(time.Millisecond))
	return vs
}

func snapshotSource(name string) *corev1.TypedLocalObjectReference {
	group := snapv1.GroupName
	return &corev1.TypedLocalObjectReference{APIGroup: &group, Kind: "VolumeSnapshot", Name: name}
}

func TestClusterProof(t *testing.T) {
	e := setup(t)

	if got := e.run("hello", "echo hello from busybox", ""); got != "hello from busybox" {
		t.Fatalf("busybox pod printed %q", got)
	}

	group := map[string]string{"proof.tidemark.io/group": "g1"}
	e.pvc("data-1", group, nil)
	e.pvc("data-2", group, nil)
	e.run("write-1", "echo payload-1 > /data/file && sync", "data-1")
	e.run("write-2", "echo payload-2 > /data/file && sync", "data-2")

	class := storageClass
	pvcName := "data-1"
	if _, err := e.snap.SnapshotV1().VolumeSnapshots(e.ns).Create(e.ctx, &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: "snap-1"},
		Spec: snapv1.VolumeSnapshotSpec{
			VolumeSnapshotClassName: &class,
			Source:                  snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &pvcName},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitSnapshotReady("snap-1")

	if _, err := e.snap.GroupsnapshotV1().VolumeGroupSnapshots(e.ns).Create(e.ctx, &groupv1.VolumeGroupSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: "group-1"},
		Spec: groupv1.VolumeGroupSnapshotSpec{
			VolumeGroupSnapshotClassName: &class,
			Source:                       groupv1.VolumeGroupSnapshotSource{Selector: &metav1.LabelSelector{MatchLabels: group}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	took := e.waitFor("VolumeGroupSnapshot group-1 readyToUse", 2*time.Minute, func() (bool, string) {
		g, err := e.snap.GroupsnapshotV1().VolumeGroupSnapshots(e.ns).Get(e.ctx, "group-1", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if g.Status == nil {
			return false, "no status"
		}
		if g.Status.Error != nil && g.Status.Error.Message != nil {
			return false, *g.Status.Error.Message
		}
		return g.Status.ReadyToUse != nil && *g.Status.ReadyToUse, "not ready"
	})
	t.Logf("VolumeGroupSnapshot group-1 ready in %v", took.Round(time.Millisecond))

	// The group's members are VolumeSnapshots the snapshot controller
	// creates, owned by the group snapshot.
	list, err := e.snap.SnapshotV1().VolumeSnapshots(e.ns).List(e.ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var members []string
	for _, vs := range list.Items {
		for _, o := range vs.OwnerReferences {
			if o.Kind == "VolumeGroupSnapshot" && o.Name == "group-1" {
				members = append(members, vs.Name)
			}
		}
	}
	if len(members) != 2 {
		t.Fatalf("group-1 has %d member VolumeSnapshots (%v), want 2", len(members), members)
	}

	e.pvc("restored-1", nil, snapshotSource("snap-1"))
	if got := e.run("read-1", "cat /data/file", "restored-1"); got != "payload-1" {
		t.Fatalf("PVC restored from snap-1 reads %q, want payload-1", got)
	}
	var fromGroup []string
	for i, m := range members {
		e.waitSnapshotReady(m)
		pvc := "restored-g" + string(rune('1'+i))
		e.pvc(pvc, nil, snapshotSource(m))
		fromGroup = append(fromGroup, e.run("read-g"+string(rune('1'+i)), "cat /data/file", pvc))
	}
	sort.Strings(fromGroup)
	if strings.Join(fromGroup, ",") != "payload-1,payload-2" {
		t.Fatalf("PVCs restored from the group snapshot read %v, want payload-1 and payload-2", fromGroup)
	}
}

// TestClusterDNSAndServices: CoreDNS answers for cluster names, and
// kube-proxy routes the kubernetes Service's ClusterIP to the apiserver.
func TestClusterDNSAndServices(t *testing.T) {
	e := setup(t)
	// Plain HTTP to the HTTPS port: the apiserver's "400 Bad Request" proves
	// the route without busybox's TLS, which cannot talk to it.
	out := e.run("dns", "nslookup kubernetes.default.svc.cluster.local && { wget -q -O- http://kubernetes.default.svc.cluster.local:443/ 2>&1 || true; }", "")
	if !strings.Contains(out, "10.96.0.1") || !strings.Contains(out, "400 Bad Request") {
		t.Fatalf("DNS lookup and Service call printed:\n%s", out)
	}
}

// TestDatabaseImages: the MariaDB and PostgreSQL images (`make images`)
// initialise an empty CSI volume and serve. Skipped when they are not
// imported.
func TestDatabaseImages(t *testing.T) {
	e := setup(t)
	for _, db := range []struct {
		name, image, mount string
		env                []corev1.EnvVar
		probe              string
	}{
		{"mariadb", "tidemark.local/mariadb:test", "/var/lib/mysql",
			[]corev1.EnvVar{{Name: "MARIADB_ROOT_PASSWORD", Value: "pw"}, {Name: "MARIADB_DATABASE", Value: "app"}},
			"mariadb -uroot -ppw -h127.0.0.1 -e 'select 1' app"},
		{"postgres", "tidemark.local/postgres:test", "/var/lib/postgresql",
			[]corev1.EnvVar{{Name: "POSTGRES_PASSWORD", Value: "pw"}, {Name: "POSTGRES_DB", Value: "app"}},
			"PGPASSWORD=pw psql -h 127.0.0.1 -U postgres -d app -c 'select 1'"},
	} {
		t.Run(db.name, func(t *testing.T) {
			parent := e.t
			e.t = t
			defer func() { e.t = parent }()
			if !e.imagePresent(db.image) {
				t.Skipf("%s is not imported: run `make images`", db.image)
			}
			e.pvc(db.name, nil, nil)
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: db.name},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{
						Name: db.name, Image: db.image, ImagePullPolicy: corev1.PullNever, Env: db.env,
						VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: db.mount}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"sh", "-c", db.probe}}},
							PeriodSeconds: 1, TimeoutSeconds: 5,
						},
					}},
					Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
						PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: db.name},
					}}},
				},
			}
			if _, err := e.cs.CoreV1().Pods(e.ns).Create(e.ctx, pod, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			took := e.waitFor(db.name+" Ready", 3*time.Minute, func() (bool, string) {
				p, err := e.cs.CoreV1().Pods(e.ns).Get(e.ctx, db.name, metav1.GetOptions{})
				if err != nil {
					return false, err.Error()
				}
				for _, c := range p.Status.Conditions {
					if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
						return true, ""
					}
				}
				return false, string(p.Status.Phase) + " " + p.Status.Message
			})
			t.Logf("%s serving on an empty CSI volume in %v", db.name, took.Round(time.Millisecond))
		})
	}
}

func (e *env) imagePresent(ref string) bool {
	nodes, err := e.cs.CoreV1().Nodes().List(e.ctx, metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, n := range nodes.Items {
		for _, img := range n.Status.Images {
			for _, name := range img.Names {
				if name == ref {
					return true
				}
			}
		}
	}
	return false
}

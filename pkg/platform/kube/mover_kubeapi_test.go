//go:build kubeapi

package kube

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/tidemark-dev/tidemark/events"
	kubetest "github.com/tidemark-dev/tidemark/tests/kube"
)

var moverOpts = MoverOptions{
	Image: "ghcr.io/tidemark-dev/tidemark:test",
	Resources: corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("256Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
	},
}

// The pods below are created in the apiserver but never run: there is no
// kubelet here. The real-cluster tests run them.
func TestMoverExportFromSnapshot(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	driver := strings.SplitN(h.ns, "-", 2)[0] + ".csi.tidemark.test"
	snapshotClass(t, h, "mover-default", driver, true)
	h.boundPVC("data", driver, nil, nil)
	kubetest.StartSnapshotStandIn(t, kubetest.Config(t))
	s := &Snapshotter{Platform: h.p, Namespace: h.ns, ReadyTimeout: 10 * time.Second}
	run := events.RunID("run-mover-1")
	snaps, err := s.Snapshot(ctx, run, []events.VolumeRef{{Name: "data", Source: "data"}})
	if err != nil {
		t.Fatal(err)
	}
	premium := "premium"
	req := MoverRequest{Run: run, Volume: "data", Direction: MoverExport, Item: "item-42", Snapshot: snaps[0].ID, StorageClass: &premium}
	m, err := h.p.StartMover(ctx, req, moverOpts)
	if err != nil {
		t.Fatal(err)
	}
	pvc, err := h.p.c.Core.CoreV1().PersistentVolumeClaims(h.ns).Get(ctx, m.PVC.Name, getOpts)
	if err != nil {
		t.Fatal(err)
	}
	_, vsName, _ := strings.Cut(string(snaps[0].ID), "/")
	if ds := pvc.Spec.DataSource; ds == nil || ds.Kind != "VolumeSnapshot" || ds.Name != vsName || *ds.APIGroup != "snapshot.storage.k8s.io" {
		t.Errorf("PVC dataSource = %+v, want VolumeSnapshot %s", pvc.Spec.DataSource, vsName)
	}
	if q := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; q.Cmp(resource.MustParse("1Gi")) != 0 || *pvc.Spec.StorageClassName != "premium" ||
		!slices.Equal(pvc.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}) {
		t.Errorf("PVC spec = %+v: want 1Gi (the restoreSize), class premium (the override), RWO like the source", pvc.Spec)
	}
	pod, err := h.p.c.Core.CoreV1().Pods(h.ns).Get(ctx, m.Pod.Name, getOpts)
	if err != nil {
		t.Fatal(err)
	}
	c := pod.Spec.Containers[0]
	if c.Image != moverOpts.Image || !slices.Equal(c.Args, MoverArgs("item-42", MoverExport)) || c.Args[0] != "mover" {
		t.Errorf("container image %q args %q", c.Image, c.Args)
	}
	if c.Resources.Requests.Cpu().String() != "250m" || c.Resources.Limits.Memory().String() != "1Gi" {
		t.Errorf("resources = %+v", c.Resources)
	}
	v := pod.Spec.Volumes[0].PersistentVolumeClaim
	if v == nil || v.ClaimName != pvc.Name || !v.ReadOnly || !c.VolumeMounts[0].ReadOnly || c.VolumeMounts[0].MountPath != MoverMountPath {
		t.Errorf("volume %+v mount %+v: want the snapshot's PVC, read-only", v, c.VolumeMounts)
	}
	for _, labels := range []map[string]string{pod.Labels, pvc.Labels} {
		if labels[LabelRunID] != string(run) || labels[LabelComponent] != ComponentMover || labels[LabelVolume] != "data" {
			t.Errorf("labels %v: want run, volume and component for the sweep", labels)
		}
	}
	if pod.Spec.RestartPolicy != corev1.RestartPolicyNever || *pod.Spec.AutomountServiceAccountToken || pod.Spec.Affinity != nil {
		t.Errorf("pod spec: restart %s, token %v, affinity %+v", pod.Spec.RestartPolicy, *pod.Spec.AutomountServiceAccountToken, pod.Spec.Affinity)
	}

	// A kubelet would report the end; here the test does (TEST-ONLY stand-in).
	pod.Status.Phase = corev1.PodFailed
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "mover", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Message: "repository is read-only"}}}}
	if _, err := h.p.c.Core.CoreV1().Pods(h.ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(ctxTimeout(t, 10*time.Second)); !errors.Is(err, ErrMoverFailed) || !strings.Contains(err.Error(), "repository is read-only") {
		t.Errorf("Wait = %v, want ErrMoverFailed with the termination message", err)
	}

	if err := m.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	assertMoverGone(t, h, m)
	if err := m.Cleanup(ctx); err != nil {
		t.Errorf("a second Cleanup: %v (what is gone is not an error)", err)
	}
}

func assertMoverGone(t *testing.T, h *harness, m *Mover) {
	t.Helper()
	ctx := context.Background()
	// The pod was deleted with grace 0 and has no finalizers; the PVC
	// keeps its kubernetes.io/pvc-protection finalizer only while the
	// protection controller runs, which this harness does not.
	p, err := h.p.c.Core.CoreV1().Pods(m.Pod.Namespace).Get(ctx, m.Pod.Name, getOpts)
	if !apierrors.IsNotFound(err) {
		t.Errorf("mover pod still there: %v %v", p.DeletionTimestamp, err)
	}
	if m.PVC != nil {
		c, err := h.p.c.Core.CoreV1().PersistentVolumeClaims(m.PVC.Namespace).Get(ctx, m.PVC.Name, getOpts)
		if err == nil && c.DeletionTimestamp == nil {
			t.Errorf("mover PVC %s not deleted", m.PVC.Name)
		}
	}
}

func TestMoverLiveExportAndImportAttachWhereTheVolumeIs(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.boundPVC("data", "nfs.csi.tidemark.test", nil, nil)
	// The application's pod, scheduled on node-a, mounts the RWO volume.
	_, err := h.p.c.Core.CoreV1().Pods(h.ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "db-0"},
		Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "db", Image: "db:1"}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data"}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	run := events.RunID("run-mover-2")
	err = h.p.WithMover(ctx, MoverRequest{Run: run, Volume: "data", Direction: MoverExport, Item: "item-1", Snapshot: LiveSnapshotID(h.ns, "data")}, moverOpts,
		func(ctx context.Context, m *Mover) error {
			if m.PVC != nil {
				t.Error("a live export made a PVC; it must mount the application's")
			}
			pod := m.Pod
			if v := pod.Spec.Volumes[0].PersistentVolumeClaim; v.ClaimName != "data" || !v.ReadOnly {
				t.Errorf("live export mounts %+v, want data read-only", v)
			}
			terms := pod.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
			if f := terms[0].MatchFields[0]; f.Key != "metadata.name" || !slices.Equal(f.Values, []string{"node-a"}) {
				t.Errorf("affinity %+v, want node-a, where the RWO volume is attached", f)
			}
			return errors.New("the datamover failed")
		})
	if err == nil || err.Error() != "the datamover failed" {
		t.Errorf("WithMover = %v, want fn's error", err)
	}
	if l, _ := h.p.c.Core.CoreV1().Pods(h.ns).List(ctx, metav1.ListOptions{LabelSelector: LabelComponent + "=" + ComponentMover}); len(l.Items) != 0 {
		t.Errorf("%d mover pods left after fn failed", len(l.Items))
	}

	// Import into the same PVC: read-write. Left behind (a crashed
	// coordinator), the run's sweep removes it.
	m, err := h.p.StartMover(ctx, MoverRequest{Run: run, Volume: "data", Direction: MoverImport, Item: "item-2", Namespace: h.ns, PVC: "data"}, moverOpts)
	if err != nil {
		t.Fatal(err)
	}
	if v := m.Pod.Spec.Volumes[0].PersistentVolumeClaim; v.ClaimName != "data" || v.ReadOnly || m.Pod.Spec.Containers[0].VolumeMounts[0].ReadOnly {
		t.Errorf("import mounts %+v, want data read-write", v)
	}
	if err := h.p.CleanupMovers(ctx, run); err != nil {
		t.Fatal(err)
	}
	assertMoverGone(t, h, m)
	if _, err := h.p.c.Core.CoreV1().PersistentVolumeClaims(h.ns).Get(ctx, "data", getOpts); err != nil {
		t.Errorf("the sweep touched the application's PVC: %v", err)
	}

	// Bad requests name the field.
	for _, c := range []struct {
		req   MoverRequest
		opts  MoverOptions
		field string
	}{
		{MoverRequest{Run: run, Volume: "data", Direction: MoverExport, Item: "i", Snapshot: "x"}, MoverOptions{}, "image"},
		{MoverRequest{Run: run, Volume: "data", Direction: "sideways", Item: "i"}, moverOpts, "direction"},
		{MoverRequest{Run: run, Volume: "data", Direction: MoverImport, Item: "i"}, moverOpts, "pvc"},
		{MoverRequest{Run: run, Volume: "data", Direction: MoverExport, Item: "i", Snapshot: events.SnapshotID(h.ns + "/missing")}, moverOpts, "mover snapshot"},
	} {
		if _, err := h.p.StartMover(ctx, c.req, c.opts); err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%+v: err = %v, want it to name %s", c.req, err, c.field)
		}
	}
}

// With WithMoverLimit(2), four movers never have more than two pods in
// the cluster at once: the others wait for a slot, which a mover frees
// when its pod is deleted. The pods never run (no kubelet); the test
// holds each mover in its fn instead, and counts pods with a watch, which
// sees every creation and deletion in the order the apiserver made them.
func TestMoverConcurrencyLimitHolds(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	p := New(h.p.c, WithPollInterval(20*time.Millisecond), WithMoverLimit(2))
	const movers = 4
	for i := range movers {
		h.boundPVC(fmt.Sprintf("vol-%d", i), "nfs.csi.tidemark.test", nil, nil)
	}
	w, err := p.c.Core.CoreV1().Pods(h.ns).Watch(ctx, metav1.ListOptions{LabelSelector: LabelComponent + "=" + ComponentMover})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	var (
		mu                     sync.Mutex
		live                   = map[string]bool{}
		most, created, deleted int
	)
	go func() {
		for ev := range w.ResultChan() {
			pod, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			mu.Lock()
			switch ev.Type {
			case watch.Added:
				live[pod.Name] = true
				created++
			case watch.Deleted:
				delete(live, pod.Name)
				deleted++
			}
			most = max(most, len(live))
			mu.Unlock()
		}
	}()
	podsNow := func() int {
		l, err := p.c.Core.CoreV1().Pods(h.ns).List(ctx, metav1.ListOptions{LabelSelector: LabelComponent + "=" + ComponentMover})
		if err != nil {
			t.Fatal(err)
		}
		return len(l.Items)
	}

	run := events.RunID("run-limit")
	started := make(chan int, movers)
	release := make([]chan struct{}, movers)
	errs := make(chan error, movers)
	for i := range movers {
		release[i] = make(chan struct{})
		go func() {
			req := MoverRequest{Run: run, Volume: fmt.Sprintf("vol-%d", i), Direction: MoverExport, Item: fmt.Sprintf("item-%d", i), Snapshot: LiveSnapshotID(h.ns, fmt.Sprintf("vol-%d", i))}
			errs <- p.WithMover(ctx, req, moverOpts, func(context.Context, *Mover) error {
				started <- i
				<-release[i]
				return nil
			})
		}()
	}
	first, second := <-started, <-started
	waitFor(t, "two movers waiting for a slot", func() bool { return p.movers.waiting.Load() == 2 })
	if n := podsNow(); n != 2 {
		t.Fatalf("%d mover pods with the limit reached, want 2", n)
	}
	// Waiting is bounded by its context: an ErrTimeout naming the limit, nothing created.
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		// Not waitFor: t.Fatal may not be called from this goroutine.
		for p.movers.waiting.Load() != 3 && cctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	_, err = p.StartMover(cctx, MoverRequest{Run: run, Volume: "vol-0", Direction: MoverImport, Item: "item-x", Namespace: h.ns, PVC: "vol-0"}, moverOpts)
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "mover slot") {
		t.Errorf("StartMover with the limit reached and its context ended: %v, want ErrTimeout about the slot", err)
	}

	// One ends (its pod is deleted): exactly one waiter starts.
	close(release[first])
	third := <-started
	waitFor(t, "one mover still waiting", func() bool { return p.movers.waiting.Load() == 1 })
	if n := podsNow(); n != 2 {
		t.Errorf("%d mover pods after one of two ended, want 2", n)
	}
	close(release[second])
	close(release[third])
	fourth := <-started
	close(release[fourth])
	for range movers {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	waitFor(t, "the watch to see every pod come and go", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return created == movers && deleted == movers
	})
	mu.Lock()
	defer mu.Unlock()
	if most != 2 {
		t.Errorf("at most %d mover pods existed at once, want the limit, 2", most)
	}
}

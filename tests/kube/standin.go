package kubetest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// The harness has an apiserver but no kube-controller-manager, no kubelet
// and no CSI driver. Three TEST-ONLY STAND-INS (the third,
// GroupSnapshotStandIn, is in groupstandin.go) play the parts the tests need
// of them, each doing the one thing a user would observe and nothing
// more. Behaviour that depends on the real components (pods really
// stopping, snapshots really cut) is covered by the real-cluster tests.

// AnnotationSnapshotError on a PVC makes the snapshot stand-in report its
// value as the status.error of every snapshot of that PVC, as a CSI driver
// that failed to cut it would.
const AnnotationSnapshotError = "kubetest.tidemark.io/snapshot-error"

// SnapshotStandIn stands in for the CSI snapshot controller and driver
// (external-snapshotter's snapshot-controller + csi-snapshotter + a CSI
// plugin): it marks every new VolumeSnapshot readyToUse, with the source
// PVC's requested size as restoreSize, or sets status.error when the PVC
// carries AnnotationSnapshotError. It creates no VolumeSnapshotContent and
// moves no data.
type SnapshotStandIn struct {
	held atomic.Bool
}

// Hold makes the stand-in leave new snapshots pending (a slow driver)
// until Release.
func (s *SnapshotStandIn) Hold()    { s.held.Store(true) }
func (s *SnapshotStandIn) Release() { s.held.Store(false) }

// StartSnapshotStandIn runs the stand-in until the test ends.
func StartSnapshotStandIn(t testing.TB, cfg *rest.Config) *SnapshotStandIn {
	t.Helper()
	cfg = rest.CopyConfig(cfg)
	cfg.ContentType = "application/json"
	snaps := snapclient.NewForConfigOrDie(cfg)
	core := kubernetes.NewForConfigOrDie(cfg)
	s := &SnapshotStandIn{}
	loop(t, func(ctx context.Context) {
		if s.held.Load() {
			return
		}
		l, err := snaps.SnapshotV1().VolumeSnapshots(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
		if err != nil {
			return
		}
		for _, vs := range l.Items {
			if vs.Status != nil && (vs.Status.ReadyToUse != nil || vs.Status.Error != nil) {
				continue
			}
			if isGroupMember(&vs) {
				continue // GroupSnapshotStandIn's, as the real controller's group path makes them
			}
			st := &snapv1.VolumeSnapshotStatus{}
			src := vs.Spec.Source.PersistentVolumeClaimName
			if src == nil {
				continue
			}
			pvc, err := core.CoreV1().PersistentVolumeClaims(vs.Namespace).Get(ctx, *src, metav1.GetOptions{})
			if err != nil {
				msg := fmt.Sprintf("failed to get input parameters to create snapshot %s: %v", vs.Name, err)
				st.Error = &snapv1.VolumeSnapshotError{Message: &msg, Time: &metav1.Time{Time: time.Now()}}
			} else if msg := pvc.Annotations[AnnotationSnapshotError]; msg != "" {
				st.Error = &snapv1.VolumeSnapshotError{Message: &msg, Time: &metav1.Time{Time: time.Now()}}
			} else {
				ready := true
				size := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
				content := "snapcontent-" + string(vs.UID)
				st.ReadyToUse, st.RestoreSize, st.BoundVolumeSnapshotContentName = &ready, &size, &content
				st.CreationTime = &metav1.Time{Time: time.Now()}
			}
			vs.Status = st
			_, _ = snaps.SnapshotV1().VolumeSnapshots(vs.Namespace).UpdateStatus(ctx, &vs, metav1.UpdateOptions{})
		}
	})
	return s
}

// WorkloadStandIn stands in for the StatefulSet and Deployment
// controllers and the kubelet: it makes a StatefulSet's pods <name>-<i>
// exist for i < spec.replicas (deleting the others), and reports
// spec.replicas as observed, ready and available in both kinds' status.
// Pods it makes are never run.
type WorkloadStandIn struct {
	held atomic.Bool
}

// Hold freezes the stand-in (a workload that never stops or starts) until Release.
func (w *WorkloadStandIn) Hold()    { w.held.Store(true) }
func (w *WorkloadStandIn) Release() { w.held.Store(false) }

// StartWorkloadStandIn runs the stand-in in namespace ns until the test ends.
func StartWorkloadStandIn(t testing.TB, cfg *rest.Config, ns string) *WorkloadStandIn {
	t.Helper()
	core := kubernetes.NewForConfigOrDie(cfg)
	w := &WorkloadStandIn{}
	loop(t, func(ctx context.Context) {
		if w.held.Load() {
			return
		}
		sets, err := core.AppsV1().StatefulSets(ns).List(ctx, metav1.ListOptions{})
		if err == nil {
			for i := range sets.Items {
				syncStatefulSet(ctx, core, &sets.Items[i])
			}
		}
		deps, err := core.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{})
		if err == nil {
			for _, d := range deps.Items {
				n := replicas(d.Spec.Replicas)
				st := d.Status
				if st.ObservedGeneration == d.Generation && st.Replicas == n && st.ReadyReplicas == n {
					continue
				}
				d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: n, ReadyReplicas: n, AvailableReplicas: n, UpdatedReplicas: n}
				_, _ = core.AppsV1().Deployments(ns).UpdateStatus(ctx, &d, metav1.UpdateOptions{})
			}
		}
	})
	return w
}

func syncStatefulSet(ctx context.Context, core kubernetes.Interface, s *appsv1.StatefulSet) {
	n := replicas(s.Spec.Replicas)
	pods := core.CoreV1().Pods(s.Namespace)
	for i := int32(0); ; i++ {
		name := fmt.Sprintf("%s-%d", s.Name, i)
		if i < n {
			p := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.Namespace, Labels: s.Spec.Template.Labels,
					OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(s, appsv1.SchemeGroupVersion.WithKind("StatefulSet"))}},
				Spec: *s.Spec.Template.Spec.DeepCopy(),
			}
			for _, t := range s.Spec.VolumeClaimTemplates {
				p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: t.Name, VolumeSource: corev1.VolumeSource{
					PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: fmt.Sprintf("%s-%s-%d", t.Name, s.Name, i)}}})
			}
			if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return
			}
			continue
		}
		// Past the last pod (or the test is over): done.
		if err := pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			break
		}
	}
	st := s.Status
	if st.ObservedGeneration == s.Generation && st.Replicas == n && st.ReadyReplicas == n {
		return
	}
	s.Status = appsv1.StatefulSetStatus{ObservedGeneration: s.Generation, Replicas: n, ReadyReplicas: n, AvailableReplicas: n, CurrentReplicas: n, UpdatedReplicas: n}
	_, _ = core.AppsV1().StatefulSets(s.Namespace).UpdateStatus(ctx, s, metav1.UpdateOptions{})
}

func replicas(r *int32) int32 {
	if r == nil {
		return 1
	}
	return *r
}

// loop calls f every 50ms until the test ends.
func loop(t testing.TB, f func(context.Context)) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			f(ctx)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
)

// TestGroupSnapshotOfTwoPVCs is (c): a snapshot.requested with group set
// for the two PVCs (data and logs) of a test application reaches the
// snapshotter running in the cluster, which cuts one VolumeGroupSnapshot
// through the real snapshot controller, csi-snapshotter and the test CSI
// driver's group controller service, and answers snapshot.ready naming
// the group; snapshot.delete.requested then removes the group and its
// members.
func TestGroupSnapshotOfTwoPVCs(t *testing.T) {
	c := tidemark(t)
	start := time.Now()
	ns := c.testNamespace(t, "e2e-snap-")
	ctx := context.Background()
	sc := storageClass
	for _, name := range []string{"data", "logs"} {
		_, err := c.core.CoreV1().PersistentVolumeClaims(ns).Create(ctx, &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PersistentVolumeClaimSpec{
				StorageClassName: &sc,
				AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	// The application: writes a file on each volume, then stays.
	zero := int64(0)
	_, err := c.core.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app"},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{
				Name: "app", Image: busyboxImage, ImagePullPolicy: corev1.PullNever,
				Command:        []string{"sh", "-c", "echo row-1 > /data/table && echo wal-1 > /logs/wal && touch /tmp/ready && exec sleep 3600"},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"cat", "/tmp/ready"}}}, PeriodSeconds: 1},
				VolumeMounts:   []corev1.VolumeMount{{Name: "data", MountPath: "/data"}, {Name: "logs", MountPath: "/logs"}},
			}},
			Volumes: []corev1.Volume{
				{Name: "data", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data"}}},
				{Name: "logs", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "logs"}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.waitPodReady(t, ns, "app", 2*time.Minute)
	nb := connectBus(t, c)

	run := runID("snap")
	cmd := events.New("tidemark/e2e", ns+"/app", events.SnapshotRequested{
		RunID: run, Application: ns + "/app", Step: "snapshot-volumes", Group: true, IdempotencyKey: string(run) + ":snapshot-volumes",
		Volumes: []events.VolumeRef{{Name: "data", Source: ns + "/data"}, {Name: "logs", Source: ns + "/logs"}},
	}, time.Now())
	cmd.CorrelationID = string(run)
	sent := time.Now()
	nb.Publish(t, cmd)
	ev := nb.WaitFor(t, 3*time.Minute, "snapshot.ready or snapshot.failed of "+string(run), func(ev events.Event) bool {
		if r, ok := events.As[events.SnapshotReady](ev); ok {
			return r.RunID == run
		}
		f, ok := events.As[events.SnapshotFailed](ev)
		return ok && f.RunID == run
	})
	if f, ok := events.As[events.SnapshotFailed](ev); ok {
		t.Fatalf("snapshot.failed: %+v", f)
	}
	ready, _ := events.As[events.SnapshotReady](ev)
	took := time.Since(sent)
	if ready.Group == nil || ready.Group.Fallback != "" {
		t.Fatalf("snapshot.ready group = %+v, want one VolumeGroupSnapshot", ready.Group)
	}
	gns, gname, ok := kube.ParseGroupSnapshotID(ready.Group.SnapshotID)
	if !ok || gns != ns {
		t.Fatalf("group id %q, want group:%s/<name>", ready.Group.SnapshotID, ns)
	}
	g, err := c.snap.GroupsnapshotV1().VolumeGroupSnapshots(ns).Get(ctx, gname, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// snapshot.ready says the group was cut (the driver returned): the
	// controller may still be making its members readyToUse.
	if g.Status == nil || g.Status.BoundVolumeGroupSnapshotContentName == nil {
		t.Fatalf("VolumeGroupSnapshot %s status %+v, want bound to its content", gname, g.Status)
	}
	content, err := c.snap.GroupsnapshotV1().VolumeGroupSnapshotContents().Get(ctx, *g.Status.BoundVolumeGroupSnapshotContentName, metav1.GetOptions{})
	if err != nil || content.Status == nil || content.Status.CreationTime == nil {
		t.Errorf("VolumeGroupSnapshotContent of %s: %v, status %+v; want cut (creationTime set)", gname, err, content.Status)
	}
	if len(ready.Snapshots) != 2 {
		t.Fatalf("snapshots %+v, want data and logs", ready.Snapshots)
	}
	var ids []events.SnapshotID
	for i, sn := range ready.Snapshots {
		if want := []string{"data", "logs"}[i]; sn.Volume != want || sn.Method != platform.MethodCSI {
			t.Errorf("snapshot %d = %+v, want a CSI snapshot of %s", i, sn, want)
		}
		ids = append(ids, sn.SnapshotID)
		vsNS, vsName, _ := strings.Cut(string(sn.SnapshotID), "/")
		vs, err := c.snap.SnapshotV1().VolumeSnapshots(vsNS).Get(ctx, vsName, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("snapshot %s of %s: %v", sn.SnapshotID, sn.Volume, err)
		}
		if !slices.ContainsFunc(vs.OwnerReferences, func(o metav1.OwnerReference) bool { return o.Kind == "VolumeGroupSnapshot" && o.UID == g.UID }) {
			t.Errorf("VolumeSnapshot %s is not a member of %s (owners %+v)", sn.SnapshotID, gname, vs.OwnerReferences)
		}
	}
	// The selector label was only for the call.
	for _, name := range []string{"data", "logs"} {
		pvc, err := c.core.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := pvc.Labels[kube.LabelSnapshotGroup]; ok {
			t.Errorf("PVC %s still has %s=%s", name, kube.LabelSnapshotGroup, v)
		}
	}
	t.Logf("snapshot.ready (group %s) %v after the publish", ready.Group.SnapshotID, took.Round(time.Millisecond))

	del := events.New("tidemark/e2e", ns+"/app", events.SnapshotDeleteRequested{RunID: run, SnapshotIDs: ids, Reason: "e2e done"}, time.Now())
	del.CorrelationID = string(run)
	sent = time.Now()
	nb.Publish(t, del)
	nb.WaitFor(t, 2*time.Minute, "snapshot.deleted of "+string(run), func(ev events.Event) bool {
		d, ok := events.As[events.SnapshotDeleted](ev)
		return ok && d.RunID == run
	})
	deleted := time.Since(sent)
	// The objects are deleted; the snapshot controller removes its
	// finalizers (and the driver's snapshots) after.
	// Deleted right after the cut, while the controller may still be
	// making the members ready: the delete waits for it to finish, else a
	// member would be left that the controller never finalises.
	why, err := poll(ctx, 2*time.Minute, func() (bool, string) {
		vs, err := c.snap.SnapshotV1().VolumeSnapshots(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		vgs, err := c.snap.GroupsnapshotV1().VolumeGroupSnapshots(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		if n, g := len(vs.Items), len(vgs.Items); n+g > 0 {
			return false, fmt.Sprintf("%d VolumeSnapshots and %d VolumeGroupSnapshots left", n, g)
		}
		return true, ""
	})
	if err != nil {
		t.Errorf("after snapshot.deleted: %v: %s", err, why)
	}
	t.Logf("snapshot.deleted %v after the publish, the group and its members gone %v after it; test %v with namespace, PVCs and pod setup",
		deleted.Round(time.Millisecond), time.Since(sent).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

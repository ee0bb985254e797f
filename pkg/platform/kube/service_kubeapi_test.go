//go:build kubeapi

package kube_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	groupv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumegroupsnapshot/v1"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/pkg/service"
	"github.com/tidemark-dev/tidemark/tests/bustest"
	kubetest "github.com/tidemark-dev/tidemark/tests/kube"

	_ "github.com/tidemark-dev/tidemark/services/snapshotter" // registers the service
)

// The snapshotter service as `tidemark serve --platform kube` builds it
// (service.Build with the kube platform in its Deps), driven through a
// real bus: a snapshot.requested for two PVCs with Group set becomes CSI
// VolumeSnapshots and a snapshot.ready that says whether they are members
// of one VolumeGroupSnapshot or were taken per volume (and why);
// snapshot.delete.requested removes them. The CSI snapshot controller is
// the test-only stand-in (and its group half, where a group class exists).
var serviceTestSeq atomic.Int64

// snapshotterOnKube makes a namespace with two bound CSI PVCs (data, wal)
// of a driver of its own with a default VolumeSnapshotClass, and a
// VolumeGroupSnapshotClass too when withGroupClass; it starts the
// snapshot stand-ins and the snapshotter service on a real bus.
func snapshotterOnKube(t *testing.T, withGroupClass bool) (*kube.Clients, *bustest.Env, string) {
	t.Helper()
	cfg := kubetest.Config(t)
	c, err := kube.NewClients(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := kube.New(c, kube.WithPollInterval(20*time.Millisecond))
	ctx := context.Background()
	// The apiserver is shared by every test of the binary (also with -count>1).
	ns := fmt.Sprintf("svc-snapshotter-%d", serviceTestSeq.Add(1))
	driver := ns + ".csi.tidemark.test"
	if _, err := c.Core.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	class := &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: ns + "-default", Annotations: map[string]string{kube.AnnotationDefaultSnapshotClass: "true"}},
		Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
	if _, err := c.Snapshots.SnapshotV1().VolumeSnapshotClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if withGroupClass {
		gc := &groupv1.VolumeGroupSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: ns + "-group", Annotations: map[string]string{kube.AnnotationDefaultGroupSnapshotClass: "true"}},
			Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
		if _, err := c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshotClasses().Create(ctx, gc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshotClasses().Delete(context.Background(), gc.Name, metav1.DeleteOptions{})
		})
	}
	size := resource.MustParse("2Gi")
	for _, name := range []string{"data", "wal"} {
		pv := &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: ns + "-" + name},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:               corev1.ResourceList{corev1.ResourceStorage: size},
				AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: ns + "-" + name}},
				ClaimRef:               &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: ns, Name: name},
			},
		}
		if _, err := c.Core.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		pvc := &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: corev1.PersistentVolumeClaimSpec{AccessModes: pv.Spec.AccessModes, VolumeName: pv.Name,
				Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}}},
		}
		if _, err := c.Core.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	kubetest.StartSnapshotStandIn(t, cfg)
	if withGroupClass {
		kubetest.StartGroupSnapshotStandIn(t, cfg)
	}

	env := bustest.Start(t)
	svcs, err := service.Build([]string{"snapshotter"}, service.Deps{
		Bus: env.Bus, Logger: slog.New(slog.NewTextHandler(t.Output(), nil)), DataDir: t.TempDir(), InstanceID: "test",
		Platform: service.PlatformKube, Kube: p,
	})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- service.RunAll(rctx, svcs, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunAll: %v", err)
		}
	})
	return c, env, ns
}

// snapshotAndDelete asks the service for a group snapshot of data and wal,
// checks the two CSI snapshots, calls inspect with the ready event while
// they exist, then deletes them through the service.
func snapshotAndDelete(t *testing.T, c *kube.Clients, env *bustest.Env, ns string, run events.RunID, inspect func(events.SnapshotReady)) {
	t.Helper()
	ctx := context.Background()
	cmd := events.New("tidemark/test", ns+"/db", events.SnapshotRequested{
		RunID: run, Application: ns + "/db", Step: "snapshot-volumes", Group: true, IdempotencyKey: string(run) + ":snapshot-volumes",
		Volumes: []events.VolumeRef{{Name: "data", Source: ns + "/data"}, {Name: "wal", Source: ns + "/wal"}},
	}, time.Now())
	cmd.CorrelationID = string(run)
	env.Publish(t, cmd)
	ev := env.WaitFor(t, 30*time.Second, "snapshot.ready", func(ev events.Event) bool {
		r, ok := events.As[events.SnapshotReady](ev)
		return ok && r.RunID == run
	})
	ready, _ := events.As[events.SnapshotReady](ev)
	if len(ready.Snapshots) != 2 {
		t.Fatalf("ready %+v", ready)
	}
	var ids []events.SnapshotID
	for i, sn := range ready.Snapshots {
		if sn.Volume != []string{"data", "wal"}[i] || sn.Method != platform.MethodCSI || sn.Bytes != 2<<30 {
			t.Errorf("snapshot %d = %+v, want a 2Gi CSI snapshot of %s", i, sn, []string{"data", "wal"}[i])
		}
		ids = append(ids, sn.SnapshotID)
	}
	l, err := c.Snapshots.SnapshotV1().VolumeSnapshots(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != 2 {
		t.Errorf("%d VolumeSnapshots in %s, want 2", len(l.Items), ns)
	}
	inspect(ready)

	del := events.New("tidemark/test", ns+"/db", events.SnapshotDeleteRequested{RunID: run, SnapshotIDs: ids, Reason: "exported"}, time.Now())
	del.CorrelationID = string(run)
	env.Publish(t, del)
	env.WaitFor(t, 30*time.Second, "snapshot.deleted", func(ev events.Event) bool {
		d, ok := events.As[events.SnapshotDeleted](ev)
		return ok && d.RunID == run
	})
	if l, err := c.Snapshots.SnapshotV1().VolumeSnapshots(ns).List(ctx, metav1.ListOptions{}); err != nil || len(l.Items) != 0 {
		t.Errorf("after snapshot.deleted: %d VolumeSnapshots (%v), want none", len(l.Items), err)
	}
	if l, err := c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshots(ns).List(ctx, metav1.ListOptions{}); err != nil || len(l.Items) != 0 {
		t.Errorf("after snapshot.deleted: %d VolumeGroupSnapshots (%v), want none", len(l.Items), err)
	}
}

// No VolumeGroupSnapshotClass for the driver: one VolumeSnapshot per PVC,
// and snapshot.ready says so and why.
func TestSnapshotterServiceOnKube(t *testing.T) {
	c, env, ns := snapshotterOnKube(t, false)
	snapshotAndDelete(t, c, env, ns, "run-kube-service", func(ready events.SnapshotReady) {
		want := "no VolumeGroupSnapshotClass for CSI driver " + ns + ".csi.tidemark.test"
		if g := ready.Group; g == nil || g.SnapshotID != "" || g.Fallback != want {
			t.Errorf("ready.group = %+v, want the fallback %q", g, want)
		}
		groups, err := c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshots(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil || len(groups.Items) != 0 {
			t.Errorf("%d VolumeGroupSnapshots (%v), want none", len(groups.Items), err)
		}
	})
}

// A VolumeGroupSnapshotClass for the driver: one VolumeGroupSnapshot,
// named in snapshot.ready, whose members are the reported snapshots.
func TestSnapshotterServiceTakesGroupSnapshotsOnKube(t *testing.T) {
	c, env, ns := snapshotterOnKube(t, true)
	snapshotAndDelete(t, c, env, ns, "run-kube-service-group", func(ready events.SnapshotReady) {
		ctx := context.Background()
		groups, err := c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshots(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(groups.Items) != 1 {
			t.Fatalf("%d VolumeGroupSnapshots in %s, want 1", len(groups.Items), ns)
		}
		group := groups.Items[0]
		if g := ready.Group; g == nil || g.Fallback != "" || g.SnapshotID != kube.GroupSnapshotID(ns, group.Name) {
			t.Errorf("ready.group = %+v, want the VolumeGroupSnapshot %s/%s", g, ns, group.Name)
		}
		for _, sn := range ready.Snapshots {
			_, name, _ := strings.Cut(string(sn.SnapshotID), "/")
			vs, err := c.Snapshots.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("snapshot %s of %s: %v", sn.SnapshotID, sn.Volume, err)
			}
			if !slices.ContainsFunc(vs.OwnerReferences, func(o metav1.OwnerReference) bool { return o.Kind == "VolumeGroupSnapshot" && o.UID == group.UID }) {
				t.Errorf("snapshot %s of %s is not a member of %s (owners %+v)", sn.SnapshotID, sn.Volume, group.Name, vs.OwnerReferences)
			}
		}
	})
}

//go:build kubeapi

package kube

import (
	"context"
	"errors"
	corev1 "k8s.io/api/core/v1"
	"slices"
	"strings"
	"testing"
	"time"

	groupv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumegroupsnapshot/v1"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform"
	kubetest "github.com/tidemark-dev/tidemark/tests/kube"
)

// groupSnapshotClass creates a VolumeGroupSnapshotClass for driver
// (cluster-wide, so prefixed with the test's namespace).
func groupSnapshotClass(t *testing.T, h *harness, name, driver string, isDefault bool) {
	t.Helper()
	c := &groupv1.VolumeGroupSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: h.ns + "-" + name}, Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
	if isDefault {
		c.Annotations = map[string]string{AnnotationDefaultGroupSnapshotClass: "true"}
	}
	if _, err := h.p.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshotClasses().Create(context.Background(), c, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = h.p.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshotClasses().Delete(context.Background(), c.Name, metav1.DeleteOptions{})
	})
}

func (h *harness) groupSnapshots(t *testing.T) []groupv1.VolumeGroupSnapshot {
	t.Helper()
	l, err := h.p.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshots(h.ns).List(context.Background(), listAll)
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

// assertPVCsUnlabelled checks the group's selector label was taken off again.
func (h *harness) assertPVCsUnlabelled(t *testing.T) {
	t.Helper()
	l, err := h.p.c.Core.CoreV1().PersistentVolumeClaims(h.ns).List(context.Background(), listAll)
	if err != nil {
		t.Fatal(err)
	}
	for _, pvc := range l.Items {
		if v, ok := pvc.Labels[LabelSnapshotGroup]; ok {
			t.Errorf("PVC %s still has %s=%s after the call", pvc.Name, LabelSnapshotGroup, v)
		}
	}
}

func testDriver(h *harness) string { return strings.SplitN(h.ns, "-", 2)[0] + ".csi.tidemark.test" }

func TestGroupSnapshotOfTwoPVCsIsMappedAndDeletedWhole(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	driver := testDriver(h)
	snapshotClass(t, h, "group-vs", driver, true)
	groupSnapshotClass(t, h, "group-default", driver, true)
	h.boundPVC("data", driver, nil, nil)
	h.boundPVC("wal", driver, nil, nil)
	h.boundPVC("scratch", driver, nil, nil) // same driver, not requested: must stay out of the group
	// wal's PV has no claimRef: the controller then leaves the member's
	// PVC name empty, and the member is mapped through its content's volume handle.
	walPV := "pv-" + h.ns + "-wal"
	if len(walPV) > 63 {
		walPV = strings.TrimLeft(walPV[len(walPV)-63:], "-")
	}
	if _, err := h.p.c.Core.CoreV1().PersistentVolumes().Patch(ctx, walPV, types.MergePatchType, []byte(`{"spec":{"claimRef":null}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.StartGroupSnapshotStandIn(t, kubetest.Config(t))
	s := &Snapshotter{Platform: h.p, Namespace: h.ns, ReadyTimeout: 10 * time.Second}
	run := events.RunID("run-group-1")

	res, err := s.SnapshotGroup(ctx, run, []events.VolumeRef{{Name: "db", Source: "data"}, {Name: "log", Source: h.ns + "/wal"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Fallback != "" || res.Group == "" {
		t.Fatalf("result %+v: want a group, no fallback", res)
	}
	gns, gname, ok := ParseGroupSnapshotID(res.Group)
	if !ok || gns != h.ns {
		t.Fatalf("group id %q", res.Group)
	}
	if len(res.Snapshots) != 2 {
		t.Fatalf("snapshots = %+v, want 2", res.Snapshots)
	}
	g, err := h.p.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshots(h.ns).Get(ctx, gname, getOpts)
	if err != nil {
		t.Fatal(err)
	}
	if g.Labels[LabelRunID] != string(run) || g.Labels[LabelManagedBy] != ManagedBy || g.Annotations[LabelRunID] != string(run) {
		t.Errorf("group labels %v annotations %v: want the run id for the sweep", g.Labels, g.Annotations)
	}
	if sel := g.Spec.Source.Selector; sel == nil || sel.MatchLabels[LabelSnapshotGroup] != gname || *g.Spec.VolumeGroupSnapshotClassName != h.ns+"-group-default" {
		t.Errorf("group spec %+v: want the run's PVC label and the driver's group class", g.Spec)
	}
	content, err := h.p.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshotContents().Get(ctx, *g.Status.BoundVolumeGroupSnapshotContentName, getOpts)
	if err != nil {
		t.Fatal(err)
	}
	if hs := content.Spec.Source.VolumeHandles; len(hs) != 2 || slices.ContainsFunc(hs, func(v string) bool { return strings.HasSuffix(v, "-scratch") }) {
		t.Errorf("the group cut volumes %v: want data's and wal's only", hs)
	}
	h.assertPVCsUnlabelled(t)

	// Each snapshot is the member VolumeSnapshot of its own PVC.
	for i, want := range []struct{ volume, pvc string }{{"db", "data"}, {"log", "wal"}} {
		sn := res.Snapshots[i]
		if sn.Volume != want.volume || sn.Method != platform.MethodCSI || sn.Consistency != "" || sn.Bytes != 1<<30 || sn.RunID != run {
			t.Errorf("snapshot %d = %+v, want volume %s, csi, point-in-time, 1Gi", i, sn, want.volume)
		}
		_, name, _ := strings.Cut(string(sn.ID), "/")
		vs, err := h.p.c.Snapshots.SnapshotV1().VolumeSnapshots(h.ns).Get(ctx, name, getOpts)
		if err != nil {
			t.Fatalf("snapshot %s: %v", sn.ID, err)
		}
		if owner, uid := groupOwner(vs); owner != gname || uid != g.UID {
			t.Errorf("VolumeSnapshot %s is owned by %q, want the group %s", name, owner, gname)
		}
		if src := *vs.Spec.Source.PersistentVolumeClaimName; (want.pvc == "wal") != (src == "") {
			t.Errorf("member %s names PVC %q; the test wants data's named and wal's empty (its PV has no claimRef) to cover both mappings", name, src)
		}
		vsc, err := h.p.c.Snapshots.SnapshotV1().VolumeSnapshotContents().Get(ctx, *vs.Status.BoundVolumeSnapshotContentName, getOpts)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(*vsc.Spec.Source.VolumeHandle, "-"+want.pvc) {
			t.Errorf("volume %s got the member of volume handle %s, want PVC %s's", want.volume, *vsc.Spec.Source.VolumeHandle, want.pvc)
		}
	}

	// A mover reads a member like any VolumeSnapshot.
	m, err := h.p.StartMover(ctx, MoverRequest{Run: run, Volume: "db", Direction: MoverExport, Item: "item-1", Snapshot: res.Snapshots[0].ID}, moverOpts)
	if err != nil {
		t.Fatal(err)
	}
	if _, name, _ := strings.Cut(string(res.Snapshots[0].ID), "/"); m.PVC.Spec.DataSource == nil || m.PVC.Spec.DataSource.Name != name {
		t.Errorf("mover PVC dataSource %+v, want the member %s", m.PVC.Spec.DataSource, name)
	}
	if err := m.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}

	// Deleting one member deletes the group and every member; the others' ids are then gone, which is success.
	for _, sn := range res.Snapshots {
		if err := s.Delete(ctx, sn.ID); err != nil {
			t.Fatalf("Delete(%s): %v", sn.ID, err)
		}
		if n, g := len(h.volumeSnapshots(t)), len(h.groupSnapshots(t)); n != 0 || g != 0 {
			t.Fatalf("after deleting %s: %d VolumeSnapshots, %d VolumeGroupSnapshots left, want none", sn.ID, n, g)
		}
	}
	if err := s.Delete(ctx, res.Group); err != nil {
		t.Errorf("Delete(%s) of a deleted group: %v", res.Group, err)
	}
	// The controller (here the stand-in) then deletes the contents (deletionPolicy Delete).
	waitFor(t, "the group's contents to go", func() bool {
		_, err := h.p.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshotContents().Get(ctx, content.Name, getOpts)
		return apierrors.IsNotFound(err)
	})
	if err := s.Delete(ctx, "group:no-slash"); !errors.Is(err, platform.ErrInvalidSnapshotID) {
		t.Errorf("Delete(group:no-slash) = %v, want ErrInvalidSnapshotID", err)
	}
}

// A group's snapshots are cut when the driver's CreateVolumeGroupSnapshot
// returns; the controller makes the group and its members readyToUse
// later (seconds later on the test cluster, after its retries). The call
// returns at the cut, so the application is thawed then, and a mover's
// PVC made from a member waits for it to be ready, with its restoreSize.
func TestGroupSnapshotReturnsAtTheCut(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	driver := testDriver(h)
	snapshotClass(t, h, "cut-vs", driver, true)
	groupSnapshotClass(t, h, "group-cut", driver, true)
	h.boundPVC("data", driver, nil, nil)
	h.boundPVC("wal", driver, nil, nil)
	standIn := kubetest.StartGroupSnapshotStandIn(t, kubetest.Config(t))
	const readyAfter = 8 * time.Second
	standIn.ReadyAfter(readyAfter)
	s := &Snapshotter{Platform: h.p, Namespace: h.ns, ReadyTimeout: 30 * time.Second}

	res, err := s.SnapshotGroup(ctx, "run-cut", []events.VolumeRef{{Name: "data", Source: "data"}, {Name: "wal", Source: "wal"}})
	if err != nil {
		t.Fatal(err)
	}
	_, gname, _ := ParseGroupSnapshotID(res.Group)
	g, err := h.p.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshots(h.ns).Get(ctx, gname, getOpts)
	if err != nil {
		t.Fatal(err)
	}
	if g.Status == nil || g.Status.ReadyToUse == nil || *g.Status.ReadyToUse {
		t.Fatalf("group status %+v when SnapshotGroup returned: want cut, not yet readyToUse (the stand-in waits %v)", g.Status, readyAfter)
	}
	content, err := h.p.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshotContents().Get(ctx, *g.Status.BoundVolumeGroupSnapshotContentName, getOpts)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Snapshots) != 2 {
		t.Fatalf("snapshots %+v, want data's and wal's", res.Snapshots)
	}
	for _, sn := range res.Snapshots {
		if !sn.CreatedAt.Equal(content.Status.CreationTime.Time) {
			t.Errorf("snapshot %s created at %v, want the cut, %v", sn.ID, sn.CreatedAt, content.Status.CreationTime.Time)
		}
	}

	// The mover's PVC needs the member ready: its spec waits for it.
	pvc, _, err := h.p.MoverSpec(ctx, MoverRequest{Run: "run-cut", Volume: "data", Direction: MoverExport, Item: "item-cut", Snapshot: res.Snapshots[0].ID}, moverOpts)
	if err != nil {
		t.Fatalf("MoverSpec of a member that becomes ready later: %v", err)
	}
	_, name, _ := strings.Cut(string(res.Snapshots[0].ID), "/")
	vs, err := h.p.c.Snapshots.SnapshotV1().VolumeSnapshots(h.ns).Get(ctx, name, getOpts)
	if err != nil {
		t.Fatal(err)
	}
	if vs.Status == nil || vs.Status.ReadyToUse == nil || !*vs.Status.ReadyToUse {
		t.Fatalf("MoverSpec returned before the member was readyToUse: %+v", vs.Status)
	}
	if q := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; q.Cmp(*vs.Status.RestoreSize) != 0 {
		t.Errorf("mover PVC requests %v, want the member's restoreSize %v", q.String(), vs.Status.RestoreSize.String())
	}
}

// The real snapshot controller records an update race it lost as the
// group's status.error and then retries (CI failed a backup on it once).
// That error is not the driver's answer: the snapshot must wait for the
// retry and succeed.
func TestGroupSnapshotWaitsOutAConflictTheControllerRetries(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	driver := testDriver(h)
	groupSnapshotClass(t, h, "group-conflict", driver, false)
	h.boundPVC("data", driver, nil, map[string]string{kubetest.AnnotationSnapshotConflictFirst: "yes"})
	h.boundPVC("wal", driver, nil, nil)
	kubetest.StartGroupSnapshotStandIn(t, kubetest.Config(t))
	s := &Snapshotter{Platform: h.p, Namespace: h.ns, ReadyTimeout: 10 * time.Second}

	started := time.Now()
	res, err := s.SnapshotGroup(ctx, "run-group-conflict", []events.VolumeRef{{Name: "data", Source: "data"}, {Name: "wal", Source: "wal"}})
	if err != nil {
		t.Fatalf("SnapshotGroup: %v (a conflict the controller retries is not a failure)", err)
	}
	if took := time.Since(started); took < time.Second {
		t.Fatalf("the group was ready after %v: the stand-in reports the conflict for over 1s, so the test did not exercise it", took)
	}
	if len(res.Snapshots) != 2 || res.Group == "" {
		t.Fatalf("result %+v: want a group of two", res)
	}

	// Held for longer than ReadyTimeout, the conflict is named in the timeout.
	h.boundPVC("data2", driver, nil, map[string]string{kubetest.AnnotationSnapshotConflictFirst: "yes"})
	s.ReadyTimeout = 500 * time.Millisecond
	_, err = s.SnapshotGroup(ctx, "run-group-conflict-2", []events.VolumeRef{{Name: "data2", Source: "data2"}})
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "the controller retries") || !strings.Contains(err.Error(), "the object has been modified") {
		t.Fatalf("err = %v, want ErrTimeout naming the last status.error", err)
	}
}

func TestGroupSnapshotErrorIsSurfacedAndNothingIsLeft(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	driver := testDriver(h)
	groupSnapshotClass(t, h, "group-errors", driver, false) // the driver's only class
	h.boundPVC("good", driver, nil, nil)
	h.boundPVC("bad", driver, nil, map[string]string{kubetest.AnnotationSnapshotError: "rpc error: code = FailedPrecondition desc = volumes are not in one consistency group"})
	standIn := kubetest.StartGroupSnapshotStandIn(t, kubetest.Config(t))
	s := &Snapshotter{Platform: h.p, Namespace: h.ns, ReadyTimeout: 10 * time.Second}

	_, err := s.SnapshotGroup(ctx, "run-group-err", []events.VolumeRef{{Name: "good", Source: "good"}, {Name: "bad", Source: "bad"}})
	if !errors.Is(err, ErrSnapshotFailed) || !strings.Contains(err.Error(), "not in one consistency group") || !strings.Contains(err.Error(), "VolumeGroupSnapshot") {
		t.Fatalf("err = %v, want ErrSnapshotFailed with the group's status.error", err)
	}
	if n, g := len(h.volumeSnapshots(t)), len(h.groupSnapshots(t)); n != 0 || g != 0 {
		t.Errorf("%d VolumeSnapshots, %d VolumeGroupSnapshots left: a failed call must leave none", n, g)
	}
	h.assertPVCsUnlabelled(t)

	// A driver that never answers: a timeout saying what was seen, nothing left.
	standIn.Hold()
	s.ReadyTimeout = 300 * time.Millisecond
	_, err = s.SnapshotGroup(ctx, "run-group-slow", []events.VolumeRef{{Name: "good", Source: "good"}})
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "VolumeGroupSnapshot") {
		t.Errorf("slow driver: err = %v, want ErrTimeout naming the group", err)
	}
	if g := len(h.groupSnapshots(t)); g != 0 {
		t.Errorf("%d VolumeGroupSnapshots left after a timed-out call", g)
	}
	h.assertPVCsUnlabelled(t)
}

// Without a group class for the driver, the request is carried out one
// VolumeSnapshot per PVC and the result says so.
func TestGroupSnapshotFallsBackToPerVolumeSnapshots(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	driver := testDriver(h)
	snapshotClass(t, h, "fallback-vs", driver, true)
	snapshotClass(t, h, "fallback-vs-other", "other."+driver, true)
	h.boundPVC("data", driver, nil, nil)
	h.boundPVC("wal", driver, nil, nil)
	h.boundPVC("elsewhere", "other."+driver, nil, nil)
	kubetest.StartSnapshotStandIn(t, kubetest.Config(t))
	kubetest.StartGroupSnapshotStandIn(t, kubetest.Config(t))
	s := &Snapshotter{Platform: h.p, Namespace: h.ns, ReadyTimeout: 10 * time.Second}

	res, err := s.SnapshotGroup(ctx, "run-fallback", []events.VolumeRef{{Name: "data", Source: "data"}, {Name: "wal", Source: "wal"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Group != "" || !strings.Contains(res.Fallback, "no VolumeGroupSnapshotClass for CSI driver "+driver) {
		t.Errorf("result group %q fallback %q: want a fallback naming the driver", res.Group, res.Fallback)
	}
	if len(res.Snapshots) != 2 {
		t.Fatalf("snapshots = %+v", res.Snapshots)
	}
	for _, sn := range res.Snapshots {
		if sn.Method != platform.MethodCSI || sn.Consistency != ConsistencyPerVolume || strings.HasPrefix(string(sn.ID), groupPrefix) {
			t.Errorf("snapshot %+v: want a per-volume CSI snapshot saying so", sn)
		}
	}
	if n, g := len(h.volumeSnapshots(t)), len(h.groupSnapshots(t)); n != 2 || g != 0 {
		t.Errorf("%d VolumeSnapshots, %d groups: want 2 and none", n, g)
	}
	for _, sn := range res.Snapshots {
		if err := s.Delete(ctx, sn.ID); err != nil {
			t.Fatal(err)
		}
	}

	// Two drivers cannot share a group, even when one has a class.
	groupSnapshotClass(t, h, "fallback-group", driver, true)
	res, err = s.SnapshotGroup(ctx, "run-fallback-2", []events.VolumeRef{{Name: "data", Source: "data"}, {Name: "elsewhere", Source: "elsewhere"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Group != "" || !strings.Contains(res.Fallback, "several CSI drivers") {
		t.Errorf("two drivers: group %q fallback %q", res.Group, res.Fallback)
	}
	for _, sn := range res.Snapshots {
		_ = s.Delete(ctx, sn.ID)
	}

	// Two group classes and no default: an error saying how to choose.
	groupSnapshotClass(t, h, "fallback-group-2", "other."+driver, false)
	groupSnapshotClass(t, h, "fallback-group-3", "other."+driver, false)
	_, err = s.SnapshotGroup(ctx, "run-fallback-3", []events.VolumeRef{{Name: "elsewhere", Source: "elsewhere"}})
	if !platform.IsPermanentSnapshotError(err) || !strings.Contains(err.Error(), AnnotationDefaultGroupSnapshotClass) {
		t.Errorf("ambiguous group classes: err = %v, want a permanent error naming %s", err, AnnotationDefaultGroupSnapshotClass)
	}
}

// The crash sweep sees a group's members (with their run and volume) and
// a group left without members, and deleting what it lists leaves nothing.
func TestGroupSnapshotSweep(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	driver := testDriver(h)
	groupSnapshotClass(t, h, "sweep", driver, true)
	h.boundPVC("data", driver, nil, nil)
	h.boundPVC("wal", driver, nil, nil)
	standIn := kubetest.StartGroupSnapshotStandIn(t, kubetest.Config(t))
	taker := &Snapshotter{Platform: h.p, Namespace: h.ns, ReadyTimeout: 10 * time.Second}
	if _, err := taker.SnapshotGroup(ctx, "run-crashed", []events.VolumeRef{{Name: "db", Source: "data"}, {Name: "log", Source: "wal"}}); err != nil {
		t.Fatal(err)
	}
	// A taker that died after creating its group, before the driver answered.
	standIn.Hold()
	orphan := &groupv1.VolumeGroupSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: "tm-orphan", Namespace: h.ns,
			Labels: map[string]string{LabelManagedBy: ManagedBy, LabelRunID: "run-orphan"}, Annotations: map[string]string{LabelRunID: "run-orphan"}},
		Spec: groupv1.VolumeGroupSnapshotSpec{Source: groupv1.VolumeGroupSnapshotSource{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelSnapshotGroup: "tm-orphan"}}}},
	}
	if _, err := h.p.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshots(h.ns).Create(ctx, orphan, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	sweeper := &Snapshotter{Platform: h.p} // another process
	all, err := sweeper.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var mine []platform.Snapshot
	for _, sn := range all {
		if strings.Contains(string(sn.ID), h.ns+"/") {
			mine = append(mine, sn)
		}
	}
	volumes := map[string]bool{}
	var orphanSeen bool
	for _, sn := range mine {
		switch sn.RunID {
		case "run-crashed":
			volumes[sn.Volume] = !sn.Incomplete
		case "run-orphan":
			orphanSeen = sn.ID == GroupSnapshotID(h.ns, "tm-orphan") && sn.Incomplete
		}
	}
	if len(mine) != 3 || !volumes["db"] || !volumes["log"] || !orphanSeen {
		t.Fatalf("listed %+v: want the two complete members (db, log) and the orphan group, incomplete", mine)
	}
	for _, sn := range mine {
		if err := sweeper.Delete(ctx, sn.ID); err != nil {
			t.Fatalf("Delete(%s): %v", sn.ID, err)
		}
	}
	if n, g := len(h.volumeSnapshots(t)), len(h.groupSnapshots(t)); n != 0 || g != 0 {
		t.Errorf("%d VolumeSnapshots, %d VolumeGroupSnapshots left after the sweep", n, g)
	}
}

//go:build kubeapi

package kube

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform"
	kubetest "github.com/tidemark-dev/tidemark/tests/kube"
)

// snapshotClass creates a VolumeSnapshotClass for driver (cluster-wide,
// shared by the tests, so names and drivers are prefixed with the test's
// namespace).
func snapshotClass(t *testing.T, h *harness, name, driver string, isDefault bool) {
	t.Helper()
	c := &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: h.ns + "-" + name}, Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
	if isDefault {
		c.Annotations = map[string]string{AnnotationDefaultSnapshotClass: "true"}
	}
	if _, err := h.p.c.Snapshots.SnapshotV1().VolumeSnapshotClasses().Create(context.Background(), c, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) volumeSnapshots(t *testing.T) []snapv1.VolumeSnapshot {
	t.Helper()
	l, err := h.p.c.Snapshots.SnapshotV1().VolumeSnapshots(h.ns).List(context.Background(), listAll)
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

func TestSnapshotLifecycle(t *testing.T) {
	h := newHarness(t)
	driver := strings.SplitN(h.ns, "-", 2)[0] + ".csi.tidemark.test"
	snapshotClass(t, h, "lifecycle-other", driver, false)
	snapshotClass(t, h, "lifecycle-default", driver, true)
	h.boundPVC("data", driver, nil, nil)
	h.boundPVC("wal", driver, nil, map[string]string{AnnotationSnapshotClass: h.ns + "-lifecycle-other"})
	standIn := kubetest.StartSnapshotStandIn(t, kubetest.Config(t))
	s := &Snapshotter{Platform: h.p, Namespace: h.ns, ReadyTimeout: 10 * time.Second}
	run := events.RunID("run-2026-11-22T23:00:00Z")

	snaps, err := s.Snapshot(context.Background(), run, []events.VolumeRef{{Name: "data", Source: "data"}, {Name: "wal", Source: h.ns + "/wal"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 2 || snaps[0].Volume != "data" || snaps[1].Volume != "wal" || snaps[0].Method != platform.MethodCSI || snaps[0].Bytes != 1<<30 {
		t.Fatalf("snapshots = %+v, want data and wal, csi, 1Gi each", snaps)
	}
	vss := h.volumeSnapshots(t)
	classes := map[string]string{}
	for _, vs := range vss {
		classes[*vs.Spec.Source.PersistentVolumeClaimName] = *vs.Spec.VolumeSnapshotClassName
		if vs.Labels[LabelRunID] == "" || vs.Annotations[LabelRunID] != string(run) || vs.Labels[LabelManagedBy] != ManagedBy {
			t.Errorf("VolumeSnapshot %s labels %v annotations %v: want the run id for the sweep", vs.Name, vs.Labels, vs.Annotations)
		}
	}
	if classes["data"] != h.ns+"-lifecycle-default" || classes["wal"] != h.ns+"-lifecycle-other" {
		t.Errorf("classes = %v: want the driver's default for data, the annotated class for wal", classes)
	}

	// The sweep sees them, with their run and volume.
	all, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	mine := 0
	for _, sn := range all {
		if strings.HasPrefix(string(sn.ID), h.ns+"/") {
			mine++
			if sn.RunID != run || sn.Incomplete {
				t.Errorf("listed %+v: want run %s, complete", sn, run)
			}
		}
	}
	if mine != 2 {
		t.Errorf("List found %d of this test's snapshots, want 2", mine)
	}

	for _, sn := range snaps {
		if err := s.Delete(context.Background(), sn.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(context.Background(), sn.ID); err != nil {
			t.Fatalf("deleting %s again: %v (deleting what is gone must succeed)", sn.ID, err)
		}
	}
	if n := len(h.volumeSnapshots(t)); n != 0 {
		t.Errorf("%d VolumeSnapshots left after Delete", n)
	}
	if err := s.Delete(context.Background(), "no-slash"); !errors.Is(err, platform.ErrInvalidSnapshotID) {
		t.Errorf("Delete(no-slash) = %v, want ErrInvalidSnapshotID", err)
	}

	// A driver that never finishes: a timeout that says what it saw, and nothing left behind.
	standIn.Hold()
	s.ReadyTimeout = 300 * time.Millisecond
	_, err = s.Snapshot(context.Background(), "run-slow", []events.VolumeRef{{Name: "data", Source: "data"}})
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), `volume "data"`) {
		t.Errorf("slow driver: err = %v, want ErrTimeout naming the volume", err)
	}
	if n := len(h.volumeSnapshots(t)); n != 0 {
		t.Errorf("%d VolumeSnapshots left after a timed-out Snapshot", n)
	}
}

func TestSnapshotErrorIsSurfacedAndNothingIsLeft(t *testing.T) {
	h := newHarness(t)
	driver := strings.SplitN(h.ns, "-", 2)[0] + ".csi.tidemark.test"
	snapshotClass(t, h, "errors-default", driver, true)
	h.boundPVC("good", driver, nil, nil)
	h.boundPVC("bad", driver, nil, map[string]string{kubetest.AnnotationSnapshotError: "rpc error: code = ResourceExhausted desc = snapshot quota exceeded"})
	kubetest.StartSnapshotStandIn(t, kubetest.Config(t))
	s := &Snapshotter{Platform: h.p, Namespace: h.ns, ReadyTimeout: 10 * time.Second}

	_, err := s.Snapshot(context.Background(), "run-1", []events.VolumeRef{{Name: "good", Source: "good"}, {Name: "bad", Source: "bad"}})
	if !errors.Is(err, ErrSnapshotFailed) || !strings.Contains(err.Error(), "snapshot quota exceeded") || !strings.Contains(err.Error(), `volume "bad"`) {
		t.Fatalf("err = %v, want ErrSnapshotFailed with the driver's status.error and the volume", err)
	}
	if n := len(h.volumeSnapshots(t)); n != 0 {
		t.Errorf("%d VolumeSnapshots left: a failed call must leave none (all or nothing)", n)
	}

	// No class for the driver, and live reads are not allowed: a
	// permanent error saying what to do.
	h.boundPVC("nfs", "nfs."+driver, nil, nil)
	s.RequireCSI = true
	_, err = s.Snapshot(context.Background(), "run-2", []events.VolumeRef{{Name: "nfs", Source: "nfs"}})
	if !IsNoSnapshotClass(err) || !platform.IsPermanentSnapshotError(err) || !strings.Contains(err.Error(), AnnotationSnapshotClass) {
		t.Errorf("no class: err = %v, want ErrNoSnapshotClass, permanent, naming the override annotation", err)
	}
	_, err = s.Snapshot(context.Background(), "run-3", []events.VolumeRef{{Name: "gone", Source: "missing"}})
	if !errors.Is(err, platform.ErrSourceNotFound) {
		t.Errorf("missing PVC: err = %v, want ErrSourceNotFound", err)
	}
}

// A volume whose driver has no VolumeSnapshotClass is read live while the
// application stays quiesced, and the result says so; the others of the
// same call are still CSI snapshots.
func TestSnapshotFallsBackToLiveWithoutAClass(t *testing.T) {
	h := newHarness(t)
	driver := strings.SplitN(h.ns, "-", 2)[0] + ".csi.tidemark.test"
	snapshotClass(t, h, "live-default", driver, true)
	h.boundPVC("data", driver, nil, nil)
	h.boundPVC("shared", "nfs."+driver, nil, nil)
	kubetest.StartSnapshotStandIn(t, kubetest.Config(t))
	s := &Snapshotter{Platform: h.p, Namespace: h.ns, ReadyTimeout: 10 * time.Second}

	snaps, err := s.Snapshot(context.Background(), "run-live", []events.VolumeRef{{Name: "data", Source: "data"}, {Name: "shared", Source: "shared"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 2 || snaps[0].Method != platform.MethodCSI || snaps[0].Consistency != "" {
		t.Fatalf("snapshots = %+v, want data as a CSI snapshot first", snaps)
	}
	live := snaps[1]
	if live.Volume != "shared" || live.Method != platform.MethodLive || live.Consistency != platform.ConsistencyLive || live.RunID != "run-live" {
		t.Errorf("shared = %+v, want method live, consistency %q", live, platform.ConsistencyLive)
	}
	if ns, pvc, ok := ParseLiveSnapshotID(live.ID); !ok || ns != h.ns || pvc != "shared" {
		t.Errorf("live id %q does not name the PVC", live.ID)
	}
	vss := h.volumeSnapshots(t)
	if len(vss) != 1 || *vss[0].Spec.Source.PersistentVolumeClaimName != "data" {
		t.Errorf("%d VolumeSnapshots, want only data's", len(vss))
	}
	for _, sn := range snaps {
		if err := s.Delete(context.Background(), sn.ID); err != nil {
			t.Errorf("Delete(%s): %v", sn.ID, err)
		}
	}
	if err := s.Delete(context.Background(), "live:no-pvc"); !errors.Is(err, platform.ErrInvalidSnapshotID) {
		t.Errorf("Delete(live:no-pvc) = %v", err)
	}
}

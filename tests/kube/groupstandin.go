package kubetest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	groupv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumegroupsnapshot/v1"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// LabelStandIn marks the cluster-scoped contents the group snapshot
// stand-in made, so it deletes only its own when their snapshot is gone.
const LabelStandIn = "kubetest.tidemark.io/stand-in"

// GroupSnapshotStandIn is a TEST-ONLY STAND-IN for the group snapshot
// half of the CSI snapshot controller and csi-snapshotter (with a CSI
// driver that supports CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT). For each
// new VolumeGroupSnapshot (groupsnapshot.storage.k8s.io/v1) it does what
// the external-snapshotter v8 controller does, as far as a client can
// observe it:
//   - the PVCs are those in the group's namespace matching
//     spec.source.selector; none is an error, as in the controller;
//   - if one of them carries AnnotationSnapshotError, the group's
//     status.error is that message (the driver's CreateVolumeGroupSnapshot
//     failed) and nothing else is made;
//   - otherwise a VolumeGroupSnapshotContent (status.volumeSnapshotInfoList:
//     volume handle → snapshot handle), and per volume a
//     VolumeSnapshotContent (spec.source.volumeHandle) and a member
//     VolumeSnapshot named like the controller's (snapshot-<sha256 of the
//     group UID and volume handle>), owned by the group, with
//     spec.source.persistentVolumeClaimName taken from the PV's claimRef
//     (empty when the PV has none, as the controller does), bound to its
//     content and readyToUse with the PVC's requested size; then the
//     group's status: bound content, creationTime, readyToUse.
//
// Unlike the controller it puts no finalizers on what it makes (nothing
// here would remove them) and there is no garbage collector: it deletes
// the contents it made once their VolumeSnapshot or VolumeGroupSnapshot
// is gone (deletionPolicy Delete), but deleting a group does not delete
// its members — that is left to whoever deletes the group (Tidemark does
// both). It moves no data.
type GroupSnapshotStandIn struct {
	held       atomic.Bool
	readyAfter atomic.Int64 // a time.Duration
}

// ReadyAfter makes the stand-in cut new groups at once — the group's
// content gets its creationTime and the member VolumeSnapshots exist,
// bound — but mark the members (with their restoreSize) and the group
// readyToUse only d later, as the real snapshot controller does after
// its retries (seen on the test cluster: ~5 s).
func (g *GroupSnapshotStandIn) ReadyAfter(d time.Duration) { g.readyAfter.Store(int64(d)) }

// Hold makes the stand-in leave new group snapshots pending (a slow
// driver) until Release.
func (g *GroupSnapshotStandIn) Hold()    { g.held.Store(true) }
func (g *GroupSnapshotStandIn) Release() { g.held.Store(false) }

// AnnotationSnapshotConflictFirst on a PVC makes the group snapshot
// stand-in first report, for conflictFor, the status.error the real
// controller reports when it lost an update race with csi-snapshotter
// (seen on a real cluster), and then complete the group as the
// controller does on its retry.
const AnnotationSnapshotConflictFirst = "kubetest.tidemark.io/snapshot-conflict-first"

const (
	conflictMessage = "the object has been modified; please apply your changes to the latest version and try again"
	conflictFor     = 2 * time.Second // status times have whole seconds: at least 1s is seen
)

// retrying reports whether a group carries the conflict error the
// controller retries after.
func retrying(vgs *groupv1.VolumeGroupSnapshot) bool {
	st := vgs.Status
	return st != nil && st.Error != nil && st.Error.Message != nil && st.Error.Time != nil && strings.Contains(*st.Error.Message, conflictMessage)
}

// StartGroupSnapshotStandIn runs the stand-in until the test ends.
func StartGroupSnapshotStandIn(t testing.TB, cfg *rest.Config) *GroupSnapshotStandIn {
	t.Helper()
	cfg = rest.CopyConfig(cfg)
	cfg.ContentType = "application/json"
	snaps := snapclient.NewForConfigOrDie(cfg)
	core := kubernetes.NewForConfigOrDie(cfg)
	g := &GroupSnapshotStandIn{}
	loop(t, func(ctx context.Context) {
		collectContents(ctx, snaps)
		if g.held.Load() {
			return
		}
		l, err := snaps.GroupsnapshotV1().VolumeGroupSnapshots(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
		if err != nil {
			return
		}
		delay := time.Duration(g.readyAfter.Load())
		for i := range l.Items {
			vgs := &l.Items[i]
			if vgs.DeletionTimestamp != nil {
				continue
			}
			if cutNotReady(vgs) {
				finishGroup(ctx, core, snaps, vgs, delay)
				continue
			}
			if vgs.Status != nil && (vgs.Status.ReadyToUse != nil || vgs.Status.Error != nil) && !retrying(vgs) {
				continue
			}
			syncGroup(ctx, core, snaps, vgs, delay)
		}
	})
	return g
}

func syncGroup(ctx context.Context, core kubernetes.Interface, snaps snapclient.Interface, vgs *groupv1.VolumeGroupSnapshot, delay time.Duration) {
	now := metav1.Now()
	fail := func(msg string) {
		ready := false
		vgs.Status = &groupv1.VolumeGroupSnapshotStatus{ReadyToUse: &ready, Error: &snapv1.VolumeSnapshotError{Message: &msg, Time: &now}}
		_, _ = snaps.GroupsnapshotV1().VolumeGroupSnapshots(vgs.Namespace).UpdateStatus(ctx, vgs, metav1.UpdateOptions{})
	}
	sel := vgs.Spec.Source.Selector
	if sel == nil {
		fail("pre-provisioned group snapshots are not played by the stand-in")
		return
	}
	selector, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		fail(fmt.Sprintf("invalid label selector: %v", err))
		return
	}
	pvcs, err := core.CoreV1().PersistentVolumeClaims(vgs.Namespace).List(ctx, metav1.ListOptions{LabelSelector: selector.String()})
	if err != nil {
		return
	}
	if len(pvcs.Items) == 0 {
		fail(fmt.Sprintf("label selector %s for group snapshot not applied to any PVC", selector))
		return
	}
	type member struct {
		pvc corev1.PersistentVolumeClaim
		pv  *corev1.PersistentVolume
	}
	var members []member
	driver := ""
	for _, pvc := range pvcs.Items {
		if msg := pvc.Annotations[AnnotationSnapshotError]; msg != "" {
			fail(msg)
			return
		}
		if pvc.Annotations[AnnotationSnapshotConflictFirst] != "" && vgs.Status == nil {
			fail(fmt.Sprintf("error updating status for volume group snapshot content groupsnapcontent-%s: snapshot controller failed to update groupsnapcontent-%[1]s on API server: "+
				"Operation cannot be fulfilled on volumegroupsnapshotcontents.groupsnapshot.storage.k8s.io \"groupsnapcontent-%[1]s\": %s", vgs.UID, conflictMessage))
			return
		}
		if retrying(vgs) && time.Since(vgs.Status.Error.Time.Time) < conflictFor {
			return
		}
		pv, err := core.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		if err != nil || pv.Spec.CSI == nil {
			fail(fmt.Sprintf("the PVC %s is not bound to a CSI volume", pvc.Name))
			return
		}
		driver = pv.Spec.CSI.Driver
		members = append(members, member{pvc: pvc, pv: pv})
	}

	groupHandle := "group-" + string(vgs.UID)
	contentName := "groupsnapcontent-" + string(vgs.UID)
	ready := true
	var handles []string
	var infos []groupv1.VolumeSnapshotInfo
	for _, m := range members {
		h := m.pv.Spec.CSI.VolumeHandle
		size := m.pvc.Spec.Resources.Requests[corev1.ResourceStorage]
		bytes, ct := size.Value(), now.UnixNano()
		handles = append(handles, h)
		infos = append(infos, groupv1.VolumeSnapshotInfo{VolumeHandle: h, SnapshotHandle: "snap-" + h, CreationTime: &ct, ReadyToUse: &ready, RestoreSize: &bytes})
	}
	gc := &groupv1.VolumeGroupSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: contentName, Labels: map[string]string{LabelStandIn: "group-snapshot"}},
		Spec: groupv1.VolumeGroupSnapshotContentSpec{
			VolumeGroupSnapshotRef:       corev1.ObjectReference{Kind: "VolumeGroupSnapshot", Name: vgs.Name, Namespace: vgs.Namespace, UID: vgs.UID},
			DeletionPolicy:               snapv1.VolumeSnapshotContentDelete,
			Driver:                       driver,
			VolumeGroupSnapshotClassName: vgs.Spec.VolumeGroupSnapshotClassName,
			Source:                       groupv1.VolumeGroupSnapshotContentSource{VolumeHandles: handles},
		},
	}
	created, err := snaps.GroupsnapshotV1().VolumeGroupSnapshotContents().Create(ctx, gc, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		created, err = snaps.GroupsnapshotV1().VolumeGroupSnapshotContents().Get(ctx, contentName, metav1.GetOptions{})
	}
	if err != nil {
		return
	}
	created.Status = &groupv1.VolumeGroupSnapshotContentStatus{VolumeGroupSnapshotHandle: &groupHandle, CreationTime: &now, ReadyToUse: &ready, VolumeSnapshotInfoList: infos}
	if _, err := snaps.GroupsnapshotV1().VolumeGroupSnapshotContents().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return
	}

	yes := true
	owner := metav1.OwnerReference{APIVersion: groupv1.SchemeGroupVersion.String(), Kind: "VolumeGroupSnapshot", Name: vgs.Name, UID: vgs.UID, Controller: &yes}
	for i, m := range members {
		h := m.pv.Spec.CSI.VolumeHandle
		sum := sha256.Sum256([]byte(string(vgs.UID) + h))
		vsName, vscName := fmt.Sprintf("snapshot-%x", sum), fmt.Sprintf("snapcontent-%x", sum)
		vsc := &snapv1.VolumeSnapshotContent{
			ObjectMeta: metav1.ObjectMeta{Name: vscName, Labels: map[string]string{LabelStandIn: "group-snapshot"},
				Annotations: map[string]string{"groupsnapshot.storage.k8s.io/volume-group-snapshot-handle": groupHandle}},
			Spec: snapv1.VolumeSnapshotContentSpec{
				VolumeSnapshotRef: corev1.ObjectReference{Kind: "VolumeSnapshot", Name: vsName, Namespace: vgs.Namespace},
				DeletionPolicy:    snapv1.VolumeSnapshotContentDelete,
				Driver:            driver,
				Source:            snapv1.VolumeSnapshotContentSource{VolumeHandle: &h},
			},
		}
		cvsc, err := snaps.SnapshotV1().VolumeSnapshotContents().Create(ctx, vsc, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			cvsc, err = snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, vscName, metav1.GetOptions{})
		}
		if err != nil {
			return
		}
		info := infos[i]
		cvsc.Status = &snapv1.VolumeSnapshotContentStatus{SnapshotHandle: &info.SnapshotHandle, VolumeGroupSnapshotHandle: &groupHandle,
			CreationTime: info.CreationTime, RestoreSize: info.RestoreSize, ReadyToUse: &ready}
		if _, err := snaps.SnapshotV1().VolumeSnapshotContents().UpdateStatus(ctx, cvsc, metav1.UpdateOptions{}); err != nil {
			return
		}

		claim := ""
		if ref := m.pv.Spec.ClaimRef; ref != nil {
			claim = ref.Name
		}
		vs := &snapv1.VolumeSnapshot{
			ObjectMeta: metav1.ObjectMeta{Name: vsName, Namespace: vgs.Namespace, OwnerReferences: []metav1.OwnerReference{owner}},
			Spec:       snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &claim}},
		}
		cvs, err := snaps.SnapshotV1().VolumeSnapshots(vgs.Namespace).Create(ctx, vs, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			cvs, err = snaps.SnapshotV1().VolumeSnapshots(vgs.Namespace).Get(ctx, vsName, metav1.GetOptions{})
		}
		if err != nil {
			return
		}
		size := m.pvc.Spec.Resources.Requests[corev1.ResourceStorage]
		groupName := vgs.Name
		cvs.Status = &snapv1.VolumeSnapshotStatus{BoundVolumeSnapshotContentName: &vscName, CreationTime: &now, ReadyToUse: &ready,
			RestoreSize: &size, VolumeGroupSnapshotName: &groupName}
		if delay > 0 {
			notYet := false
			cvs.Status.ReadyToUse, cvs.Status.RestoreSize, cvs.Status.CreationTime = &notYet, nil, nil
		}
		if _, err := snaps.SnapshotV1().VolumeSnapshots(vgs.Namespace).UpdateStatus(ctx, cvs, metav1.UpdateOptions{}); err != nil {
			return
		}
	}
	vgs.Status = &groupv1.VolumeGroupSnapshotStatus{BoundVolumeGroupSnapshotContentName: &contentName, CreationTime: &now, ReadyToUse: &ready}
	if delay > 0 {
		notYet := false
		vgs.Status.CreationTime, vgs.Status.ReadyToUse = nil, &notYet
	}
	_, _ = snaps.GroupsnapshotV1().VolumeGroupSnapshots(vgs.Namespace).UpdateStatus(ctx, vgs, metav1.UpdateOptions{})
}

// cutNotReady reports a group the stand-in cut but has not made ready
// (ReadyAfter).
func cutNotReady(vgs *groupv1.VolumeGroupSnapshot) bool {
	st := vgs.Status
	return st != nil && st.Error == nil && st.ReadyToUse != nil && !*st.ReadyToUse && st.BoundVolumeGroupSnapshotContentName != nil
}

// finishGroup makes a cut group and its members readyToUse once delay
// has passed since its content's creationTime.
func finishGroup(ctx context.Context, core kubernetes.Interface, snaps snapclient.Interface, vgs *groupv1.VolumeGroupSnapshot, delay time.Duration) {
	c, err := snaps.GroupsnapshotV1().VolumeGroupSnapshotContents().Get(ctx, *vgs.Status.BoundVolumeGroupSnapshotContentName, metav1.GetOptions{})
	if err != nil || c.Status == nil || c.Status.CreationTime == nil || time.Since(c.Status.CreationTime.Time) < delay {
		return
	}
	ready := true
	l, err := snaps.SnapshotV1().VolumeSnapshots(vgs.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for i := range l.Items {
		vs := &l.Items[i]
		if !isGroupMember(vs) || vs.OwnerReferences[0].UID != vgs.UID || vs.Status == nil {
			continue
		}
		var size resource.Quantity
		if src := vs.Spec.Source.PersistentVolumeClaimName; src != nil && *src != "" {
			if pvc, err := core.CoreV1().PersistentVolumeClaims(vs.Namespace).Get(ctx, *src, metav1.GetOptions{}); err == nil {
				size = pvc.Spec.Resources.Requests[corev1.ResourceStorage]
			}
		}
		vs.Status.ReadyToUse, vs.Status.RestoreSize, vs.Status.CreationTime = &ready, &size, c.Status.CreationTime
		if _, err := snaps.SnapshotV1().VolumeSnapshots(vs.Namespace).UpdateStatus(ctx, vs, metav1.UpdateOptions{}); err != nil {
			return
		}
	}
	vgs.Status.ReadyToUse, vgs.Status.CreationTime = &ready, c.Status.CreationTime
	_, _ = snaps.GroupsnapshotV1().VolumeGroupSnapshots(vgs.Namespace).UpdateStatus(ctx, vgs, metav1.UpdateOptions{})
}

// collectContents deletes the contents the stand-in made whose snapshot
// is gone, as the controller does for deletionPolicy Delete.
func collectContents(ctx context.Context, snaps snapclient.Interface) {
	sel := metav1.ListOptions{LabelSelector: LabelStandIn + "=group-snapshot"}
	if l, err := snaps.SnapshotV1().VolumeSnapshotContents().List(ctx, sel); err == nil {
		for _, c := range l.Items {
			ref := c.Spec.VolumeSnapshotRef
			if _, err := snaps.SnapshotV1().VolumeSnapshots(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
				_ = snaps.SnapshotV1().VolumeSnapshotContents().Delete(ctx, c.Name, metav1.DeleteOptions{})
			}
		}
	}
	if l, err := snaps.GroupsnapshotV1().VolumeGroupSnapshotContents().List(ctx, sel); err == nil {
		for _, c := range l.Items {
			ref := c.Spec.VolumeGroupSnapshotRef
			g, err := snaps.GroupsnapshotV1().VolumeGroupSnapshots(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) || (err == nil && g.UID != ref.UID) {
				_ = snaps.GroupsnapshotV1().VolumeGroupSnapshotContents().Delete(ctx, c.Name, metav1.DeleteOptions{})
			}
		}
	}
}

// isGroupMember reports whether a VolumeSnapshot was made for a
// VolumeGroupSnapshot (the group's controller sets its status).
func isGroupMember(vs *snapv1.VolumeSnapshot) bool {
	for _, o := range vs.OwnerReferences {
		if o.Kind == "VolumeGroupSnapshot" {
			return true
		}
	}
	return false
}

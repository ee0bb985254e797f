package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	groupv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumegroupsnapshot/v1"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform"
)

// Group snapshots: one VolumeGroupSnapshot (groupsnapshot.storage.k8s.io/v1)
// cuts every volume of a request at the same instant on the storage side.
// The snapshot controller answers it with one member VolumeSnapshot per
// PVC, owned by the group, which Tidemark reports (and movers read) like
// any other VolumeSnapshot.

const (
	// AnnotationDefaultGroupSnapshotClass marks a cluster's default
	// VolumeGroupSnapshotClass for a driver.
	AnnotationDefaultGroupSnapshotClass = "groupsnapshot.storage.kubernetes.io/is-default-class"
	// LabelSnapshotGroup is put on each PVC of a group snapshot for the
	// duration of the call; the VolumeGroupSnapshot selects on it.
	LabelSnapshotGroup = "tidemark.io/snapshot-group"
	// annotationGroupVolumes on a VolumeGroupSnapshot maps each PVC to the
	// application's volume name (JSON), so List can name a member's volume.
	annotationGroupVolumes = "tidemark.io/group-volumes"
	// ConsistencyPerVolume is the Consistency of the CSI snapshots of a
	// group request carried out one VolumeSnapshot per PVC (see
	// GroupResult.Fallback): each volume is point-in-time, but they were
	// cut one after another, held together only by the application being
	// quiesced.
	ConsistencyPerVolume = "per-volume snapshots, not one group snapshot"
)

// groupPrefix starts the id of a VolumeGroupSnapshot that has no members
// (yet): group:namespace/name. Members have ordinary VolumeSnapshot ids.
const groupPrefix = "group:"

// GroupSnapshotID is the id of a VolumeGroupSnapshot as a whole.
func GroupSnapshotID(ns, name string) events.SnapshotID {
	return events.SnapshotID(groupPrefix + ns + "/" + name)
}

// ParseGroupSnapshotID returns the VolumeGroupSnapshot of a group id.
func ParseGroupSnapshotID(id events.SnapshotID) (ns, name string, ok bool) {
	rest, isGroup := strings.CutPrefix(string(id), groupPrefix)
	if !isGroup {
		return "", "", false
	}
	ns, name, ok = strings.Cut(rest, "/")
	return ns, name, ok && ns != "" && name != "" && !strings.Contains(name, "/")
}

// GroupResult is how a group request was carried out: Group is the
// VolumeGroupSnapshot (GroupSnapshotID) the CSI snapshots are members of;
// a Fallback means one VolumeSnapshot per PVC, and each CSI snapshot's
// Consistency is ConsistencyPerVolume.
type GroupResult = platform.GroupResult

// The snapshotter service takes group requests through this interface.
var _ platform.GroupSnapshotter = (*Snapshotter)(nil)

// groupVolume is one requested volume of a group call.
type groupVolume struct {
	vol     events.VolumeRef
	ns, pvc string
	pv      *corev1.PersistentVolume // nil: not a CSI volume
}

// SnapshotGroup snapshots volumes as one VolumeGroupSnapshot when it can:
// every CSI volume of the request in one namespace, with one CSI driver,
// which has a VolumeGroupSnapshotClass (the one annotated
// AnnotationDefaultGroupSnapshotClass=true, else its only one). Volumes
// that are not CSI volumes are read live, as in Snapshot. Otherwise it
// falls back to Snapshot (one VolumeSnapshot per PVC) and says why in the
// result's Fallback and each CSI snapshot's Consistency.
//
// The group selects the request's PVCs by LabelSnapshotGroup=<group
// name>, a label put on them for this call and removed after, rather than
// by the application's selector: the request names PVCs, not a selector;
// an application's selector may match PVCs the blueprint does not back up
// (caches, scratch) or miss ones it does; and a run-unique value can never
// pull another run's or application's PVCs into the group.
//
// It waits (ReadyTimeout) for the group's readyToUse, fails with its
// status.error, then maps each member VolumeSnapshot back to its PVC: by
// the member's spec.source.persistentVolumeClaimName, which the snapshot
// controller fills from the PV's claimRef, else through its bound
// VolumeSnapshotContent's volume handle (the v1 API has no PVC-to-member
// list in the group's status). Each snapshot's id is its member
// VolumeSnapshot; deleting any member deletes the whole group. All or
// nothing: on any failure the group and its members are deleted.
func (s *Snapshotter) SnapshotGroup(ctx context.Context, run events.RunID, volumes []events.VolumeRef) (GroupResult, error) {
	if len(volumes) == 0 {
		return GroupResult{}, fmt.Errorf("%w: no volumes to snapshot", platform.ErrInvalidVolume)
	}
	var (
		all     []groupVolume
		csi     []int // indexes in all
		seen    = map[string]bool{}
		ns      string
		drivers = map[string]bool{}
	)
	for _, v := range volumes {
		pns, pvcName, err := s.parseVolume(v, seen)
		if err != nil {
			return GroupResult{}, err
		}
		gv := groupVolume{vol: v, ns: pns, pvc: pvcName}
		pvc, err := s.Platform.c.Core.CoreV1().PersistentVolumeClaims(pns).Get(ctx, pvcName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return GroupResult{}, fmt.Errorf("%w: volume %q: PVC %s/%s does not exist", platform.ErrSourceNotFound, v.Name, pns, pvcName)
		}
		if err != nil {
			return GroupResult{}, fmt.Errorf("volume %q: reading PVC %s/%s: %w", v.Name, pns, pvcName, err)
		}
		if pvc.Spec.VolumeName == "" {
			return GroupResult{}, fmt.Errorf("%w: volume %q: PVC %s/%s is not bound to a volume yet", platform.ErrInvalidVolume, v.Name, pns, pvcName)
		}
		pv, err := s.Platform.c.Core.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			return GroupResult{}, fmt.Errorf("volume %q: reading PV %s of PVC %s/%s: %w", v.Name, pvc.Spec.VolumeName, pns, pvcName, err)
		}
		if pv.Spec.CSI != nil {
			gv.pv = pv
			csi = append(csi, len(all))
			drivers[pv.Spec.CSI.Driver] = true
			if ns == "" {
				ns = pns
			} else if ns != pns {
				ns = "\x00" // several
			}
		}
		all = append(all, gv)
	}

	fallback := func(reason string) (GroupResult, error) {
		snaps, err := s.Snapshot(ctx, run, volumes)
		if err != nil {
			return GroupResult{}, err
		}
		for i := range snaps {
			if snaps[i].Method == platform.MethodCSI {
				snaps[i].Consistency = ConsistencyPerVolume
			}
		}
		return GroupResult{Snapshots: snaps, Fallback: reason}, nil
	}
	switch {
	case len(csi) == 0:
		return fallback("no volume is a CSI volume")
	case ns == "\x00":
		// A VolumeGroupSnapshot selects PVCs of its own namespace only.
		return fallback("the volumes are in several namespaces; a VolumeGroupSnapshot covers one")
	case len(drivers) > 1:
		names := make([]string, 0, len(drivers))
		for d := range drivers {
			names = append(names, d)
		}
		sort.Strings(names)
		return fallback("the volumes use several CSI drivers (" + strings.Join(names, ", ") + "); a VolumeGroupSnapshot is cut by one")
	}
	driver := all[csi[0]].pv.Spec.CSI.Driver
	class, reason, err := s.groupClassFor(ctx, driver)
	if err != nil {
		return GroupResult{}, err
	}
	if class == "" {
		return fallback(reason)
	}
	if s.RequireCSI && len(csi) < len(all) {
		for _, gv := range all {
			if gv.pv == nil {
				return GroupResult{}, fmt.Errorf("%w: volume %q: PVC %s/%s is not a CSI volume, so it has no VolumeSnapshotClass (%w)", platform.ErrInvalidVolume, gv.vol.Name, gv.ns, gv.pvc, ErrNoSnapshotClass)
			}
		}
	}
	return s.takeGroup(ctx, run, ns, class, all)
}

// groupClassFor picks the VolumeGroupSnapshotClass of a driver. None (or
// a cluster without the group snapshot API) is not an error: the reason
// says why there is no group.
func (s *Snapshotter) groupClassFor(ctx context.Context, driver string) (class, reason string, err error) {
	classes, err := s.Platform.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshotClasses().List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) {
		return "", "the cluster does not serve groupsnapshot.storage.k8s.io/v1 (install the external-snapshotter's VolumeGroupSnapshot CRDs and controller)", nil
	}
	if err != nil {
		return "", "", fmt.Errorf("listing VolumeGroupSnapshotClasses: %w", err)
	}
	var mine []string
	for _, c := range classes.Items {
		if c.Driver != driver {
			continue
		}
		if c.Annotations[AnnotationDefaultGroupSnapshotClass] == "true" {
			return c.Name, "", nil
		}
		mine = append(mine, c.Name)
	}
	sort.Strings(mine)
	switch len(mine) {
	case 0:
		return "", "no VolumeGroupSnapshotClass for CSI driver " + driver, nil
	case 1:
		return mine[0], "", nil
	}
	return "", "", fmt.Errorf("%w: CSI driver %s has %d VolumeGroupSnapshotClasses (%s) and none is annotated %s=true; mark one as default",
		platform.ErrInvalidVolume, driver, len(mine), strings.Join(mine, ", "), AnnotationDefaultGroupSnapshotClass)
}

// takeGroup creates the VolumeGroupSnapshot over the CSI volumes of all
// (all in ns), waits for it and maps its members.
func (s *Snapshotter) takeGroup(ctx context.Context, run events.RunID, ns, class string, all []groupVolume) (GroupResult, error) {
	name := snapshotName(run, "\x00group")
	gid := GroupSnapshotID(ns, name)
	s.mu.Lock()
	if s.taking == nil {
		s.taking = map[string]bool{}
	}
	s.taking[string(gid)] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.taking, string(gid))
		s.mu.Unlock()
	}()
	detached := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	}

	volumeOf := map[string]string{} // pvc → the application's volume name
	byHandle := map[string]string{} // CSI volume handle → pvc
	var labelled []string
	defer func() {
		// The label only selects the PVCs for this group; the manifests
		// a backup captures should not carry it.
		dctx, cancel := detached()
		defer cancel()
		for _, pvc := range labelled {
			_ = s.labelPVC(dctx, ns, pvc, nil)
		}
	}()
	for _, gv := range all {
		if gv.pv == nil {
			continue
		}
		volumeOf[gv.pvc] = gv.vol.Name
		byHandle[gv.pv.Spec.CSI.VolumeHandle] = gv.pvc
		if err := s.labelPVC(ctx, ns, gv.pvc, &name); err != nil {
			return GroupResult{}, fmt.Errorf("volume %q: labelling PVC %s/%s %s=%s for the group snapshot: %w", gv.vol.Name, ns, gv.pvc, LabelSnapshotGroup, name, err)
		}
		labelled = append(labelled, gv.pvc)
	}
	volumesJSON, err := json.Marshal(volumeOf)
	if err != nil {
		return GroupResult{}, err
	}
	g := &groupv1.VolumeGroupSnapshot{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns,
			Labels:      map[string]string{LabelManagedBy: ManagedBy, LabelRunID: labelValue(string(run))},
			Annotations: map[string]string{LabelRunID: string(run), annotationGroupVolumes: string(volumesJSON)},
		},
		Spec: groupv1.VolumeGroupSnapshotSpec{
			Source:                       groupv1.VolumeGroupSnapshotSource{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelSnapshotGroup: name}}},
			VolumeGroupSnapshotClassName: &class,
		},
	}
	startedAt := time.Now()
	_, err = s.Platform.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshots(ns).Create(ctx, g, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		err = nil // a redelivered request of the same run: reuse it
	}
	if err != nil {
		dctx, cancel := detached()
		defer cancel()
		_ = s.deleteGroup(dctx, ns, name)
		return GroupResult{}, fmt.Errorf("creating VolumeGroupSnapshot %s/%s (class %s): %w", ns, name, class, err)
	}
	fail := func(err error) (GroupResult, error) {
		dctx, cancel := detached()
		defer cancel()
		_ = s.deleteGroup(dctx, ns, name)
		return GroupResult{}, err
	}
	timeout := s.ReadyTimeout
	if timeout <= 0 {
		timeout = DefaultReadyTimeout
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ready, cutAt, err := s.waitGroupCut(wctx, ns, name)
	if err != nil {
		return fail(err)
	}
	members, err := s.waitMembers(wctx, ready, volumeOf, byHandle)
	if err != nil {
		return fail(err)
	}
	out := make([]platform.Snapshot, len(all))
	for i, gv := range all {
		if gv.pv == nil {
			out[i] = platform.Snapshot{ID: LiveSnapshotID(gv.ns, gv.pvc), RunID: run, Volume: gv.vol.Name,
				Method: platform.MethodLive, Consistency: platform.ConsistencyLive, CreatedAt: time.Now()}
			continue
		}
		vs := members[gv.pvc]
		sn := platform.Snapshot{ID: events.SnapshotID(ns + "/" + vs.Name), RunID: run, Volume: gv.vol.Name, Method: platform.MethodCSI,
			Duration: time.Since(startedAt), CreatedAt: vs.CreationTimestamp.Time}
		if cutAt != nil {
			sn.CreatedAt = cutAt.Time // one instant for the whole group
		}
		if st := vs.Status; st != nil && st.RestoreSize != nil {
			sn.Bytes = st.RestoreSize.Value()
		}
		out[i] = sn
	}
	return GroupResult{Snapshots: out, Group: GroupSnapshotID(ns, name)}, nil
}

// labelPVC sets (value non-nil) or removes LabelSnapshotGroup on a PVC.
func (s *Snapshotter) labelPVC(ctx context.Context, ns, pvc string, value *string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{LabelSnapshotGroup: value}}})
	if err != nil {
		return err
	}
	_, err = s.Platform.c.Core.CoreV1().PersistentVolumeClaims(ns).Patch(ctx, pvc, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager})
	if value == nil && apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// waitGroupCut polls a VolumeGroupSnapshot until it was cut — readyToUse,
// or its creationTime or its bound content's set (the driver's
// CreateVolumeGroupSnapshot returned: see waitSnapshot) — an error, or ctx
// ends. It returns the group and when it was cut.
func (s *Snapshotter) waitGroupCut(ctx context.Context, ns, name string) (*groupv1.VolumeGroupSnapshot, *metav1.Time, error) {
	last := "no status yet"
	for {
		g, err := s.Platform.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshots(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case err != nil && !endingWith(ctx, err):
			return nil, nil, fmt.Errorf("reading VolumeGroupSnapshot %s/%s: %w", ns, name, err)
		case err == nil && g.Status != nil:
			st := g.Status
			if st.CreationTime != nil || (st.ReadyToUse != nil && *st.ReadyToUse) {
				return g, st.CreationTime, nil
			}
			if st.BoundVolumeGroupSnapshotContentName != nil {
				c, err := s.Platform.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshotContents().Get(ctx, *st.BoundVolumeGroupSnapshotContentName, metav1.GetOptions{})
				if err == nil && c.Status != nil && c.Status.CreationTime != nil {
					return g, c.Status.CreationTime, nil
				}
			}
			if msg := errorMessage(st.Error); msg != "" && !controllerRetries(msg) {
				return nil, nil, fmt.Errorf("%w: VolumeGroupSnapshot %s/%s: status.error: %s", ErrSnapshotFailed, ns, name, msg)
			}
			last = "readyToUse false"
			if st.BoundVolumeGroupSnapshotContentName != nil {
				last += ", content " + *st.BoundVolumeGroupSnapshotContentName
			}
			if msg := errorMessage(st.Error); msg != "" {
				last += ", status.error (the controller retries): " + msg
			}
		}
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("%w: VolumeGroupSnapshot %s/%s not cut (last seen: %s); is the CSI snapshot controller running with group snapshots enabled, and does the driver support them?", ErrTimeout, ns, name, last)
		case <-time.After(s.Platform.pollInterval):
		}
	}
}

// waitMembers polls the member VolumeSnapshots of a cut group until
// every wanted PVC has a member (which may not be readyToUse yet: the
// controller makes them ready after the cut, with retries, and a mover's
// PVC waits for that), one of them reports an error, or ctx ends. A member is mapped to its PVC by spec.source's
// persistentVolumeClaimName (the controller sets it from the PV's
// claimRef; empty when the PV has none), else by its
// VolumeSnapshotContent's spec.source.volumeHandle.
func (s *Snapshotter) waitMembers(ctx context.Context, g *groupv1.VolumeGroupSnapshot, want, byHandle map[string]string) (map[string]*snapv1.VolumeSnapshot, error) {
	handleOf := map[string]string{} // VolumeSnapshotContent → volume handle, read once
	for {
		members, err := s.groupMembers(ctx, g.Namespace, g.Name, g.UID)
		if err != nil && !endingWith(ctx, err) {
			return nil, err
		}
		got := map[string]*snapv1.VolumeSnapshot{}
		for i := range members {
			vs := &members[i]
			pvc := ""
			if p := vs.Spec.Source.PersistentVolumeClaimName; p != nil && want[*p] != "" {
				pvc = *p
			} else if st := vs.Status; st != nil && st.BoundVolumeSnapshotContentName != nil {
				cname := *st.BoundVolumeSnapshotContentName
				h, ok := handleOf[cname]
				if !ok {
					c, err := s.Platform.c.Snapshots.SnapshotV1().VolumeSnapshotContents().Get(ctx, cname, metav1.GetOptions{})
					if err == nil && c.Spec.Source.VolumeHandle != nil {
						h = *c.Spec.Source.VolumeHandle
						handleOf[cname] = h
					}
				}
				pvc = byHandle[h]
			}
			if pvc == "" {
				continue // not (yet) mappable, or not one of ours
			}
			if st := vs.Status; st != nil && (st.ReadyToUse == nil || !*st.ReadyToUse) && errorMessage(st.Error) != "" && !controllerRetries(*st.Error.Message) {
				return nil, fmt.Errorf("%w: volume %q (PVC %s/%s): VolumeSnapshot %s/%s of VolumeGroupSnapshot %s: status.error: %s",
					ErrSnapshotFailed, want[pvc], g.Namespace, pvc, vs.Namespace, vs.Name, g.Name, *st.Error.Message)
			}
			got[pvc] = vs
		}
		var missing []string
		for pvc, vol := range want {
			if _, ok := got[pvc]; !ok {
				missing = append(missing, fmt.Sprintf("volume %q (PVC %s)", vol, pvc))
			}
		}
		if len(missing) == 0 {
			return got, nil
		}
		select {
		case <-ctx.Done():
			sort.Strings(missing)
			return nil, fmt.Errorf("%w: VolumeGroupSnapshot %s/%s was cut but has no member VolumeSnapshot for %s", ErrTimeout, g.Namespace, g.Name, strings.Join(missing, ", "))
		case <-time.After(s.Platform.pollInterval):
		}
	}
}

// groupMembers lists the VolumeSnapshots a group owns (uid empty: any
// group of that name).
func (s *Snapshotter) groupMembers(ctx context.Context, ns, group string, uid types.UID) ([]snapv1.VolumeSnapshot, error) {
	l, err := s.Platform.c.Snapshots.SnapshotV1().VolumeSnapshots(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing the VolumeSnapshots of VolumeGroupSnapshot %s/%s: %w", ns, group, err)
	}
	var out []snapv1.VolumeSnapshot
	for _, vs := range l.Items {
		if owner, ownerUID := groupOwner(&vs); owner == group && (uid == "" || ownerUID == uid) {
			out = append(out, vs)
		}
	}
	return out, nil
}

// groupOwner is the VolumeGroupSnapshot a VolumeSnapshot is a member of.
func groupOwner(vs *snapv1.VolumeSnapshot) (string, types.UID) {
	for _, o := range vs.OwnerReferences {
		if o.Kind == "VolumeGroupSnapshot" && strings.HasPrefix(o.APIVersion, groupv1.GroupName+"/") {
			return o.Name, o.UID
		}
	}
	return "", ""
}

// deleteGroup deletes a VolumeGroupSnapshot and its member
// VolumeSnapshots. The snapshot controller would delete the members
// itself (they carry a finalizer that keeps them until their group is
// deleted), and the garbage collector would via their owner reference;
// deleting them here too makes cleanup not depend on either.
func (s *Snapshotter) deleteGroup(ctx context.Context, ns, name string) error {
	s.waitGroupSettled(ctx, ns, name)
	var errs []error
	err := s.Platform.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshots(ns).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("deleting VolumeGroupSnapshot %s/%s: %w", ns, name, err))
	}
	members, err := s.groupMembers(ctx, ns, name, "")
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, vs := range members {
		err := s.Platform.c.Snapshots.SnapshotV1().VolumeSnapshots(ns).Delete(ctx, vs.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting VolumeSnapshot %s/%s of VolumeGroupSnapshot %s: %w", ns, vs.Name, name, err))
		}
	}
	return errors.Join(errs...)
}

// GroupSettleTimeout bounds how long a group snapshot the controller is
// still completing is waited for before it is deleted anyway.
const GroupSettleTimeout = 2 * time.Minute

// waitGroupSettled waits until the controller has finished with a group
// (readyToUse, or failed) before it is deleted. The application is thawed
// at the cut, so a run may delete its group while the controller is
// still making and binding the members; deleting it then left a member
// VolumeSnapshot that the controller never finalised, and its namespace
// could not be deleted (seen on the test cluster).
func (s *Snapshotter) waitGroupSettled(ctx context.Context, ns, name string) {
	ctx, cancel := context.WithTimeout(ctx, GroupSettleTimeout)
	defer cancel()
	for {
		g, err := s.Platform.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshots(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil || g.DeletionTimestamp != nil || g.Status == nil || g.Status.BoundVolumeGroupSnapshotContentName == nil {
			return // gone, going, or never cut: nothing is being completed
		}
		st := g.Status
		if errorMessage(st.Error) != "" && !controllerRetries(*st.Error.Message) {
			return
		}
		// The group may say readyToUse before its members are (seen on the
		// test cluster): settled is every member made and readyToUse.
		if st.ReadyToUse != nil && *st.ReadyToUse && s.membersSettled(ctx, g) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.Platform.pollInterval):
		}
	}
}

// membersSettled reports whether every member of a group exists (as many
// as its content lists) and is readyToUse or failed.
func (s *Snapshotter) membersSettled(ctx context.Context, g *groupv1.VolumeGroupSnapshot) bool {
	members, err := s.groupMembers(ctx, g.Namespace, g.Name, g.UID)
	if err != nil {
		return false
	}
	want := len(members)
	if c, err := s.Platform.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshotContents().Get(ctx, *g.Status.BoundVolumeGroupSnapshotContentName, metav1.GetOptions{}); err == nil && c.Status != nil {
		want = max(want, len(c.Status.VolumeSnapshotInfoList))
	}
	if len(members) < want {
		return false
	}
	for _, vs := range members {
		st := vs.Status
		if st == nil || ((st.ReadyToUse == nil || !*st.ReadyToUse) && errorMessage(st.Error) == "") {
			return false
		}
	}
	return true
}

// listGroups is List's part for group snapshots: each member of every
// VolumeGroupSnapshot Tidemark made, or the group itself (GroupSnapshotID)
// while it has none. A cluster without the group snapshot API has none.
func (s *Snapshotter) listGroups(ctx context.Context) ([]platform.Snapshot, error) {
	l, err := s.Platform.c.Snapshots.GroupsnapshotV1().VolumeGroupSnapshots(metav1.NamespaceAll).List(ctx, metav1.ListOptions{LabelSelector: LabelManagedBy + "=" + ManagedBy})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing VolumeGroupSnapshots: %w", err)
	}
	var out []platform.Snapshot
	for _, g := range l.Items {
		gid := GroupSnapshotID(g.Namespace, g.Name)
		s.mu.Lock()
		taking := s.taking[string(gid)]
		s.mu.Unlock()
		if taking {
			continue
		}
		groupReady := g.Status != nil && g.Status.ReadyToUse != nil && *g.Status.ReadyToUse
		run := events.RunID(g.Annotations[LabelRunID])
		var volumeOf map[string]string
		_ = json.Unmarshal([]byte(g.Annotations[annotationGroupVolumes]), &volumeOf)
		members, err := s.groupMembers(ctx, g.Namespace, g.Name, g.UID)
		if err != nil {
			return nil, err
		}
		if len(members) == 0 {
			out = append(out, platform.Snapshot{ID: gid, RunID: run, Method: platform.MethodCSI, CreatedAt: g.CreationTimestamp.Time, Incomplete: !groupReady})
			continue
		}
		for _, vs := range members {
			sn := platform.Snapshot{ID: events.SnapshotID(vs.Namespace + "/" + vs.Name), RunID: run, Method: platform.MethodCSI,
				CreatedAt: g.CreationTimestamp.Time, Incomplete: true}
			if p := vs.Spec.Source.PersistentVolumeClaimName; p != nil {
				sn.Volume = volumeOf[*p]
			}
			if st := vs.Status; st != nil {
				sn.Incomplete = !groupReady || st.ReadyToUse == nil || !*st.ReadyToUse
				if st.RestoreSize != nil {
					sn.Bytes = st.RestoreSize.Value()
				}
			}
			out = append(out, sn)
		}
	}
	return out, nil
}

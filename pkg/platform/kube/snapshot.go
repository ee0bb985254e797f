package kube

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform"
)

// AnnotationDefaultSnapshotClass marks a cluster's default VolumeSnapshotClass for a driver.
const AnnotationDefaultSnapshotClass = "snapshot.storage.kubernetes.io/is-default-class"

// DefaultReadyTimeout bounds how long a snapshot may take to become readyToUse.
const DefaultReadyTimeout = 5 * time.Minute

// Snapshotter takes CSI VolumeSnapshots of an application's PVCs. A
// volume's Source is a PVC name in Namespace, or "namespace/pvc". The
// snapshot class is the PVC's tidemark.io/volume-snapshot-class
// annotation, else the default VolumeSnapshotClass of its CSI driver, else
// that driver's only class. Snapshot ids are "namespace/name" of the
// VolumeSnapshot; each carries the run id label for the crash sweep.
type Snapshotter struct {
	Platform  *Platform
	Namespace string
	// ReadyTimeout bounds the wait for readyToUse (DefaultReadyTimeout).
	ReadyTimeout time.Duration
	// RequireCSI makes a volume without a VolumeSnapshotClass an error
	// (ErrNoSnapshotClass) instead of a live snapshot.
	RequireCSI bool

	mu     sync.Mutex
	taking map[string]bool // "ns/name" of snapshots this process is taking
}

var _ platform.Snapshotter = (*Snapshotter)(nil)

// Snapshot implements platform.Snapshotter: one VolumeSnapshot per
// volume, all created first (so they are cut as close together as the
// driver allows), then waited on. Any failure deletes every snapshot of the
// call. A snapshot whose status reports an error fails the call with that
// error's message.
//
// A volume whose storage has no VolumeSnapshotClass (no class for its CSI
// driver, or not a CSI volume) is not an error unless RequireCSI: its
// snapshot is MethodLive with Consistency ConsistencyLive and id
// LiveSnapshotID, and the mover reads the PVC itself while the
// application stays quiesced.
func (s *Snapshotter) Snapshot(ctx context.Context, run events.RunID, volumes []events.VolumeRef) ([]platform.Snapshot, error) {
	if len(volumes) == 0 {
		return nil, fmt.Errorf("%w: no volumes to snapshot", platform.ErrInvalidVolume)
	}
	type planned struct {
		vol       events.VolumeRef
		ns, pvc   string
		class     string
		name      string
		live      bool
		startedAt time.Time
		created   int // index in created, for CSI snapshots
	}
	seen := map[string]bool{}
	plan := make([]planned, 0, len(volumes))
	for _, v := range volumes {
		ns, pvc, err := s.parseVolume(v, seen)
		if err != nil {
			return nil, err
		}
		class, err := s.classFor(ctx, ns, pvc)
		if IsNoSnapshotClass(err) && !s.RequireCSI {
			// The storage cannot be snapshotted: the mover reads the
			// volume itself while the application stays quiesced.
			plan = append(plan, planned{vol: v, ns: ns, pvc: pvc, live: true})
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("volume %q: %w", v.Name, err)
		}
		plan = append(plan, planned{vol: v, ns: ns, pvc: pvc, class: class, name: snapshotName(run, v.Name)})
	}

	var created []platform.Snapshot
	cleanup := func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, sn := range created {
			_ = s.Delete(dctx, sn.ID)
		}
	}
	defer func() {
		s.mu.Lock()
		for _, sn := range created {
			delete(s.taking, string(sn.ID))
		}
		s.mu.Unlock()
	}()
	for i := range plan {
		pl := &plan[i]
		if pl.live {
			continue
		}
		id := events.SnapshotID(pl.ns + "/" + pl.name)
		s.mu.Lock()
		if s.taking == nil {
			s.taking = map[string]bool{}
		}
		s.taking[string(id)] = true
		s.mu.Unlock()
		class := pl.class
		pvc := pl.pvc
		vs := &snapv1.VolumeSnapshot{
			ObjectMeta: metav1.ObjectMeta{
				Name: pl.name, Namespace: pl.ns,
				Labels:      map[string]string{LabelManagedBy: ManagedBy, LabelRunID: labelValue(string(run)), LabelVolume: labelValue(pl.vol.Name)},
				Annotations: map[string]string{LabelRunID: string(run), LabelVolume: pl.vol.Name},
			},
			Spec: snapv1.VolumeSnapshotSpec{
				Source:                  snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &pvc},
				VolumeSnapshotClassName: &class,
			},
		}
		pl.startedAt = time.Now()
		_, err := s.Platform.c.Snapshots.SnapshotV1().VolumeSnapshots(pl.ns).Create(ctx, vs, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			// A redelivered request of the same run: reuse it.
			err = nil
		}
		if err != nil {
			cleanup()
			return nil, fmt.Errorf("creating VolumeSnapshot %s for volume %q (PVC %s): %w", id, pl.vol.Name, pl.pvc, err)
		}
		pl.created = len(created)
		created = append(created, platform.Snapshot{ID: id, RunID: run, Volume: pl.vol.Name, Method: platform.MethodCSI})
	}
	timeout := s.ReadyTimeout
	if timeout <= 0 {
		timeout = DefaultReadyTimeout
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out := make([]platform.Snapshot, len(plan))
	for i, pl := range plan {
		if pl.live {
			out[i] = platform.Snapshot{ID: LiveSnapshotID(pl.ns, pl.pvc), RunID: run, Volume: pl.vol.Name,
				Method: platform.MethodLive, Consistency: platform.ConsistencyLive, CreatedAt: time.Now()}
			continue
		}
		vs, err := s.waitReady(wctx, pl.ns, pl.name)
		if err != nil {
			cleanup()
			return nil, fmt.Errorf("volume %q (PVC %s/%s): %w", pl.vol.Name, pl.ns, pl.pvc, err)
		}
		sn := created[pl.created]
		sn.Duration = time.Since(pl.startedAt)
		sn.CreatedAt = vs.CreationTimestamp.Time
		if st := vs.Status; st != nil {
			if st.RestoreSize != nil {
				sn.Bytes = st.RestoreSize.Value()
			}
			if st.CreationTime != nil {
				sn.CreatedAt = st.CreationTime.Time
			}
		}
		out[i] = sn
	}
	return out, nil
}

// parseVolume checks a requested volume (named, not listed twice: seen)
// and returns its PVC.
func (s *Snapshotter) parseVolume(v events.VolumeRef, seen map[string]bool) (ns, pvc string, err error) {
	if v.Name == "" {
		return "", "", fmt.Errorf("%w: a volume without a name (source %q)", platform.ErrInvalidVolume, v.Source)
	}
	if seen[v.Name] {
		return "", "", fmt.Errorf("%w: volume %q is listed twice", platform.ErrInvalidVolume, v.Name)
	}
	seen[v.Name] = true
	ns, pvc = s.Namespace, v.Source
	if n, c, ok := strings.Cut(v.Source, "/"); ok {
		ns, pvc = n, c
	}
	if ns == "" || pvc == "" || strings.Contains(pvc, "/") {
		return "", "", fmt.Errorf("%w: volume %q: source %q is not a PVC name or namespace/pvc", platform.ErrInvalidVolume, v.Name, v.Source)
	}
	return ns, pvc, nil
}

// waitReady waits until a VolumeSnapshot was cut (waitSnapshot).
func (s *Snapshotter) waitReady(ctx context.Context, ns, name string) (*snapv1.VolumeSnapshot, error) {
	return s.Platform.waitSnapshot(ctx, ns, name, true)
}

// waitSnapshot polls a VolumeSnapshot until it was cut (cut: the driver
// returned its creationTime) or is readyToUse (!cut), an error, or ctx
// ends. The CSI spec lets I/O resume once a snapshot is cut: readyToUse
// may follow much later (a cloud uploading it), and a VolumeGroupSnapshot's
// members become ready only after the snapshot controller's retries, so
// the application's freeze ends at the cut. A PVC made from the snapshot
// waits for readyToUse.
func (p *Platform) waitSnapshot(ctx context.Context, ns, name string, cut bool) (*snapv1.VolumeSnapshot, error) {
	last := "no status yet"
	for {
		vs, err := p.c.Snapshots.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case err != nil && !endingWith(ctx, err):
			return nil, fmt.Errorf("reading VolumeSnapshot %s/%s: %w", ns, name, err)
		case err == nil && vs.Status != nil:
			st := vs.Status
			if (st.ReadyToUse != nil && *st.ReadyToUse) || (cut && st.CreationTime != nil) {
				return vs, nil
			}
			if msg := errorMessage(st.Error); msg != "" && !controllerRetries(msg) {
				return nil, fmt.Errorf("%w: VolumeSnapshot %s/%s: status.error: %s", ErrSnapshotFailed, ns, name, msg)
			}
			last = "readyToUse false"
			if st.CreationTime != nil {
				last = "cut, readyToUse false"
			}
			if st.BoundVolumeSnapshotContentName != nil {
				last += ", content " + *st.BoundVolumeSnapshotContentName
			}
			if msg := errorMessage(st.Error); msg != "" {
				last += ", status.error (the controller retries): " + msg
			}
		}
		select {
		case <-ctx.Done():
			want := "readyToUse"
			if cut {
				want = "cut (no creationTime)"
			}
			return nil, fmt.Errorf("%w: VolumeSnapshot %s/%s not %s (last seen: %s); is the CSI snapshot controller running?", ErrTimeout, ns, name, want, last)
		case <-time.After(p.pollInterval):
		}
	}
}

// classFor picks the VolumeSnapshotClass for a PVC.
func (s *Snapshotter) classFor(ctx context.Context, ns, pvcName string) (string, error) {
	pvc, err := s.Platform.c.Core.CoreV1().PersistentVolumeClaims(ns).Get(ctx, pvcName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("%w: PVC %s/%s does not exist", platform.ErrSourceNotFound, ns, pvcName)
	}
	if err != nil {
		return "", fmt.Errorf("reading PVC %s/%s: %w", ns, pvcName, err)
	}
	if c := pvc.Annotations[AnnotationSnapshotClass]; c != "" {
		return c, nil
	}
	if pvc.Spec.VolumeName == "" {
		return "", fmt.Errorf("%w: PVC %s/%s is not bound to a volume yet", platform.ErrInvalidVolume, ns, pvcName)
	}
	pv, err := s.Platform.c.Core.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading PV %s of PVC %s/%s: %w", pvc.Spec.VolumeName, ns, pvcName, err)
	}
	if pv.Spec.CSI == nil {
		return "", fmt.Errorf("%w: PVC %s/%s: its volume %s is not a CSI volume, so it has no VolumeSnapshotClass (%w)", platform.ErrInvalidVolume, ns, pvcName, pv.Name, ErrNoSnapshotClass)
	}
	driver := pv.Spec.CSI.Driver
	classes, err := s.Platform.c.Snapshots.SnapshotV1().VolumeSnapshotClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("listing VolumeSnapshotClasses: %w", err)
	}
	var mine []string
	for _, c := range classes.Items {
		if c.Driver != driver {
			continue
		}
		if c.Annotations[AnnotationDefaultSnapshotClass] == "true" {
			return c.Name, nil
		}
		mine = append(mine, c.Name)
	}
	sort.Strings(mine)
	switch len(mine) {
	case 0:
		return "", fmt.Errorf("%w: PVC %s/%s (driver %s): %w; create one, or annotate the PVC %s=CLASS",
			platform.ErrInvalidVolume, ns, pvcName, driver, ErrNoSnapshotClass, AnnotationSnapshotClass)
	case 1:
		return mine[0], nil
	}
	return "", fmt.Errorf("%w: PVC %s/%s: driver %s has %d VolumeSnapshotClasses (%s) and none is annotated %s=true; mark one as default or annotate the PVC %s=CLASS",
		platform.ErrInvalidVolume, ns, pvcName, driver, len(mine), strings.Join(mine, ", "), AnnotationDefaultSnapshotClass, AnnotationSnapshotClass)
}

// livePrefix starts the id of a live snapshot: live:namespace/pvc.
const livePrefix = "live:"

// LiveSnapshotID is the id of a live "snapshot" of a PVC: the PVC itself,
// read by the mover while the application stays quiesced.
func LiveSnapshotID(ns, pvc string) events.SnapshotID {
	return events.SnapshotID(livePrefix + ns + "/" + pvc)
}

// ParseLiveSnapshotID returns the PVC of a live snapshot id.
func ParseLiveSnapshotID(id events.SnapshotID) (ns, pvc string, ok bool) {
	rest, isLive := strings.CutPrefix(string(id), livePrefix)
	if !isLive {
		return "", "", false
	}
	ns, pvc, ok = strings.Cut(rest, "/")
	return ns, pvc, ok && ns != "" && pvc != "" && !strings.Contains(pvc, "/")
}

// Delete implements platform.Snapshotter. A live snapshot has nothing to
// delete. Deleting a member of a VolumeGroupSnapshot (or the group's own
// id) deletes the group and all its members: the snapshot controller keeps
// a member until its group is deleted, and a group's snapshots are used
// and dropped together.
func (s *Snapshotter) Delete(ctx context.Context, id events.SnapshotID) error {
	if strings.HasPrefix(string(id), livePrefix) {
		if _, _, ok := ParseLiveSnapshotID(id); !ok {
			return fmt.Errorf("%w: %q is not live:namespace/pvc", platform.ErrInvalidSnapshotID, id)
		}
		return nil
	}
	if strings.HasPrefix(string(id), groupPrefix) {
		ns, name, ok := ParseGroupSnapshotID(id)
		if !ok {
			return fmt.Errorf("%w: %q is not group:namespace/name", platform.ErrInvalidSnapshotID, id)
		}
		return s.deleteGroup(ctx, ns, name)
	}
	ns, name, ok := strings.Cut(string(id), "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("%w: %q is not namespace/name", platform.ErrInvalidSnapshotID, id)
	}
	vs, err := s.Platform.c.Snapshots.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading VolumeSnapshot %s: %w", id, err)
	}
	if group, _ := groupOwner(vs); group != "" {
		return s.deleteGroup(ctx, ns, group)
	}
	err = s.Platform.c.Snapshots.SnapshotV1().VolumeSnapshots(ns).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting VolumeSnapshot %s: %w", id, err)
	}
	return nil
}

// List implements platform.Snapshotter: every VolumeSnapshot Tidemark made
// (in every namespace it may read), and every member of a
// VolumeGroupSnapshot it made (or the group, while it has none), except
// those this process is taking. One that is not readyToUse is Incomplete.
func (s *Snapshotter) List(ctx context.Context) ([]platform.Snapshot, error) {
	l, err := s.Platform.c.Snapshots.SnapshotV1().VolumeSnapshots(metav1.NamespaceAll).List(ctx, metav1.ListOptions{LabelSelector: LabelManagedBy + "=" + ManagedBy})
	if err != nil {
		return nil, fmt.Errorf("listing VolumeSnapshots: %w", err)
	}
	out, err := s.listGroups(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, vs := range l.Items {
		id := vs.Namespace + "/" + vs.Name
		if s.taking[id] {
			continue
		}
		sn := platform.Snapshot{
			ID: events.SnapshotID(id), RunID: events.RunID(vs.Annotations[LabelRunID]), Volume: vs.Annotations[LabelVolume],
			Method: platform.MethodCSI, CreatedAt: vs.CreationTimestamp.Time, Incomplete: true,
		}
		if st := vs.Status; st != nil {
			sn.Incomplete = st.ReadyToUse == nil || !*st.ReadyToUse
			if st.RestoreSize != nil {
				sn.Bytes = st.RestoreSize.Value()
			}
		}
		out = append(out, sn)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

var nameUnsafe = regexp.MustCompile(`[^a-z0-9-]+`)

// snapshotName is tm-<run>-<volume> made a DNS label, with a hash of both
// appended so distinct runs and volumes never share a name.
func snapshotName(run events.RunID, volume string) string {
	h := sha256.Sum256([]byte(string(run) + "\x00" + volume))
	base := strings.Trim(nameUnsafe.ReplaceAllString(strings.ToLower(string(run)+"-"+volume), "-"), "-")
	if len(base) > 40 {
		base = strings.Trim(base[:40], "-")
	}
	return "tm-" + base + "-" + hex.EncodeToString(h[:])[:10]
}

// labelValue returns v if it is a valid label value, else a hash of it
// (the full value is kept in the annotation of the same name).
func labelValue(v string) string {
	if len(validation.IsValidLabelValue(v)) == 0 {
		return v
	}
	h := sha256.Sum256([]byte(v))
	return "h-" + hex.EncodeToString(h[:])[:40]
}

// IsNoSnapshotClass reports whether err says a volume has no snapshot
// class, so it must be backed up live while the application stays quiesced.
func IsNoSnapshotClass(err error) bool { return errors.Is(err, ErrNoSnapshotClass) }

// conflictMessage is the apiserver's message for a write that lost an
// optimistic-concurrency race (a 409 Conflict).
const conflictMessage = "the object has been modified; please apply your changes to the latest version and try again"

// controllerRetries reports whether a snapshot's status.error is one the
// snapshot controller recovers from by itself: it records the last error
// it met and keeps retrying, clearing the error on success. A lost
// update race between the controller and csi-snapshotter is such an
// error (seen in CI on a real cluster: "failed to update
// groupsnapcontent-… on API server: Operation cannot be fulfilled …").
// Any other error is the driver's answer and fails the snapshot at once,
// rather than after ReadyTimeout.
func controllerRetries(msg string) bool {
	return strings.Contains(msg, conflictMessage)
}

func errorMessage(e *snapv1.VolumeSnapshotError) string {
	if e == nil || e.Message == nil {
		return ""
	}
	return *e.Message
}

package kube

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidemark-dev/tidemark/events"
)

// Mover pods move one volume between the cluster and the repository:
// an export reads a PVC made from a snapshot (or, for a live snapshot,
// the application's PVC) mounted read-only; an import writes into a PVC
// mounted read-write. Each runs the tidemark image for exactly one work
// item (MoverArgs) and is deleted with its PVC afterwards (Cleanup, or
// CleanupMovers for a run whose coordinator crashed).

// Labels of mover objects, besides LabelManagedBy, LabelRunID and LabelVolume.
const (
	// LabelComponent is "mover" on mover pods and the PVCs made for them,
	// so a sweep never mistakes an application's restored PVC for one.
	LabelComponent = "tidemark.io/component"
	ComponentMover = "mover"
	// MoverMountPath is where the volume is mounted in the mover pod.
	MoverMountPath = "/tidemark/volume"
)

// MoverDirection is export (volume → repository) or import (repository → volume).
type MoverDirection string

const (
	MoverExport MoverDirection = "export"
	MoverImport MoverDirection = "import"
)

// MoverOptions are the deployment's choices for every mover pod.
type MoverOptions struct {
	// Image is the tidemark image (required).
	Image           string
	ImagePullPolicy corev1.PullPolicy
	// Resources are the mover container's requests and limits.
	Resources corev1.ResourceRequirements
	// ServiceAccount runs the pod; the mover needs no Kubernetes API
	// access, so its token is not mounted.
	ServiceAccount string
	NodeSelector   map[string]string
	Tolerations    []corev1.Toleration
	// ActiveDeadline bounds the pod's run time; 0 leaves it unbounded.
	ActiveDeadline time.Duration
}

// MoverRequest is one volume to move.
type MoverRequest struct {
	Run       events.RunID
	Volume    string // the application's name for the volume
	Direction MoverDirection
	// Item is the work item the datamover runs (passed to MoverArgs).
	Item string
	// Snapshot is what an export reads: a VolumeSnapshot id
	// ("namespace/name", a PVC is made from it) or a live snapshot id
	// (LiveSnapshotID: the PVC itself).
	Snapshot events.SnapshotID
	// Namespace and PVC are where an import writes (an existing PVC,
	// created by the manifest restore or reused in place).
	Namespace string
	PVC       string
	// StorageClass overrides the class of the PVC made from a snapshot
	// (default: the source PVC's).
	StorageClass *string
}

// MoverArgs are the arguments of the tidemark image for exactly one work
// item: the datamover service, which exits after the item.
func MoverArgs(item string, dir MoverDirection) []string {
	return []string{"serve", "--services", "datamover", "--one-item", item, "--direction", string(dir), "--volume-path", MoverMountPath}
}

// Mover is a started mover: its pod and, for an export from a snapshot,
// the PVC made for it.
type Mover struct {
	Pod *corev1.Pod
	// PVC was made from the snapshot for this mover; nil when the mover
	// mounts an existing PVC (import, live export).
	PVC *corev1.PersistentVolumeClaim
	p   *Platform
}

// WithMover starts a mover, runs fn with it (typically m.Wait), and
// always deletes the pod and its PVC afterwards, also when fn fails or
// ctx ends.
func (p *Platform) WithMover(ctx context.Context, req MoverRequest, opts MoverOptions, fn func(context.Context, *Mover) error) error {
	m, err := p.StartMover(ctx, req, opts)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = m.Cleanup(cctx)
	}()
	return fn(ctx, m)
}

// StartMover creates the mover's PVC (for an export from a snapshot) and
// pod. With WithMoverLimit it first waits for a free slot (until ctx
// ends: ErrTimeout). On error nothing it created is left and its slot is
// free again.
func (p *Platform) StartMover(ctx context.Context, req MoverRequest, opts MoverOptions) (*Mover, error) {
	pvc, pod, err := p.MoverSpec(ctx, req, opts)
	if err != nil {
		return nil, err
	}
	key := pod.Namespace + "/" + pod.Name
	if err := p.movers.acquire(ctx, key); err != nil {
		return nil, fmt.Errorf("mover pod %s for volume %q: %w", key, req.Volume, err)
	}
	m := &Mover{p: p}
	if pvc != nil {
		if m.PVC, err = p.c.Core.CoreV1().PersistentVolumeClaims(pvc.Namespace).Create(ctx, pvc, metav1.CreateOptions{FieldManager: FieldManager}); err != nil {
			p.movers.release(key)
			return nil, fmt.Errorf("creating the mover's PVC %s/%s from snapshot %s: %w", pvc.Namespace, pvc.Name, req.Snapshot, err)
		}
	}
	if m.Pod, err = p.c.Core.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{FieldManager: FieldManager}); err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = m.Cleanup(cctx)
		p.movers.release(key)
		return nil, fmt.Errorf("creating mover pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return m, nil
}

// moverSlots is the Platform's bound on mover pods (WithMoverLimit): a
// slot per pod, held from just before the pod is created until it is
// deleted, keyed by the pod's namespace/name so any Cleanup of that pod
// (also the crash sweep's) frees it exactly once.
type moverSlots struct {
	limit chan struct{} // nil: no bound
	mu    sync.Mutex
	held  map[string]bool
	// waiting counts StartMover calls blocked on a full limit; the tests
	// observe it to know a mover is held back rather than slow.
	waiting atomic.Int32
}

func (s *moverSlots) acquire(ctx context.Context, key string) error {
	if s.limit == nil {
		return nil
	}
	s.mu.Lock()
	if s.held[key] {
		// The same pod again (a retried item): it holds its slot already.
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	select {
	case s.limit <- struct{}{}:
	default:
		s.waiting.Add(1)
		select {
		case s.limit <- struct{}{}:
			s.waiting.Add(-1)
		case <-ctx.Done():
			s.waiting.Add(-1)
			return fmt.Errorf("%w waiting for a free mover slot: all %d are taken (WithMoverLimit); %v", ErrTimeout, cap(s.limit), ctx.Err())
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held == nil {
		s.held = map[string]bool{}
	}
	if s.held[key] {
		<-s.limit // raced with itself: keep one slot
		return nil
	}
	s.held[key] = true
	return nil
}

func (s *moverSlots) release(key string) {
	if s.limit == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held[key] {
		delete(s.held, key)
		<-s.limit
	}
}

// MoverSpec builds (without creating) the mover's PVC, nil when it
// mounts an existing one, and pod. It reads the snapshot, the source PVC
// and the pods using it, to size the new PVC and to place the pod where
// the volume can attach.
func (p *Platform) MoverSpec(ctx context.Context, req MoverRequest, opts MoverOptions) (*corev1.PersistentVolumeClaim, *corev1.Pod, error) {
	if err := req.validate(opts); err != nil {
		return nil, nil, err
	}
	name := moverName(req)
	labels := map[string]string{LabelManagedBy: ManagedBy, LabelComponent: ComponentMover,
		LabelRunID: labelValue(string(req.Run)), LabelVolume: labelValue(req.Volume)}
	annotations := map[string]string{LabelRunID: string(req.Run), LabelVolume: req.Volume}

	var (
		ns, claim string
		pvc       *corev1.PersistentVolumeClaim
		readOnly  = req.Direction == MoverExport
		affinity  *corev1.Affinity
	)
	switch {
	case req.Direction == MoverImport:
		ns, claim = req.Namespace, req.PVC
		a, err := p.attachAffinity(ctx, ns, claim)
		if err != nil {
			return nil, nil, err
		}
		affinity = a
	default:
		if lns, lpvc, ok := ParseLiveSnapshotID(req.Snapshot); ok {
			ns, claim = lns, lpvc
			a, err := p.attachAffinity(ctx, ns, claim)
			if err != nil {
				return nil, nil, err
			}
			affinity = a
			break
		}
		var err error
		if pvc, err = p.snapshotPVC(ctx, req, name, labels, annotations); err != nil {
			return nil, nil, err
		}
		ns, claim = pvc.Namespace, pvc.Name
	}

	var deadline *int64
	if opts.ActiveDeadline > 0 {
		d := int64(opts.ActiveDeadline / time.Second)
		deadline = &d
	}
	no := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			ServiceAccountName:            opts.ServiceAccount,
			AutomountServiceAccountToken:  &no,
			NodeSelector:                  opts.NodeSelector,
			Tolerations:                   opts.Tolerations,
			Affinity:                      affinity,
			ActiveDeadlineSeconds:         deadline,
			TerminationGracePeriodSeconds: new(int64(30)),
			Containers: []corev1.Container{{
				Name:            "mover",
				Image:           opts.Image,
				ImagePullPolicy: opts.ImagePullPolicy,
				Args:            MoverArgs(req.Item, req.Direction),
				Resources:       opts.Resources,
				VolumeMounts:    []corev1.VolumeMount{{Name: "volume", MountPath: MoverMountPath, ReadOnly: readOnly}},
				SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: &no, ReadOnlyRootFilesystem: new(true)},
			}},
			Volumes: []corev1.Volume{{Name: "volume", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim, ReadOnly: readOnly}}}},
		},
	}
	return pvc, pod, nil
}

func (r *MoverRequest) validate(opts MoverOptions) error {
	bad := func(field, msg string) error { return fmt.Errorf("%w: mover: %s %s", ErrInvalidSpec, field, msg) }
	switch {
	case opts.Image == "":
		return bad("image", "is empty: give the tidemark image, such as ghcr.io/tidemark-dev/tidemark:v1")
	case r.Run == "":
		return bad("run", "is empty: the run id labels the mover for cleanup")
	case r.Volume == "":
		return bad("volume", "is empty: name the application's volume")
	case r.Item == "":
		return bad("item", "is empty: the mover runs exactly one work item")
	}
	switch r.Direction {
	case MoverExport:
		if r.Snapshot == "" {
			return bad("snapshot", "is empty: an export reads a snapshot (namespace/name or live:namespace/pvc)")
		}
	case MoverImport:
		if r.Namespace == "" || r.PVC == "" {
			return bad("pvc", "is empty: an import writes into an existing PVC (namespace and pvc)")
		}
	default:
		return bad("direction", fmt.Sprintf("%q is not export or import", r.Direction))
	}
	return nil
}

// snapshotPVC is a PVC restored from the VolumeSnapshot req.Snapshot, in
// its namespace, shaped like the PVC the snapshot was taken of (class,
// access modes, volume mode), sized to the snapshot's restoreSize.
func (p *Platform) snapshotPVC(ctx context.Context, req MoverRequest, name string, labels, annotations map[string]string) (*corev1.PersistentVolumeClaim, error) {
	ns, vsName, ok := strings.Cut(string(req.Snapshot), "/")
	if !ok || ns == "" || vsName == "" || strings.Contains(vsName, "/") {
		return nil, fmt.Errorf("%w: mover: snapshot %q is not namespace/name or live:namespace/pvc", ErrInvalidSpec, req.Snapshot)
	}
	vs, err := p.c.Snapshots.SnapshotV1().VolumeSnapshots(ns).Get(ctx, vsName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: VolumeSnapshot %s (mover snapshot)", ErrNotFound, req.Snapshot)
	}
	if err != nil {
		return nil, fmt.Errorf("reading VolumeSnapshot %s: %w", req.Snapshot, err)
	}
	if vs.Status == nil || vs.Status.ReadyToUse == nil || !*vs.Status.ReadyToUse {
		return nil, fmt.Errorf("%w: mover: VolumeSnapshot %s is not readyToUse yet", ErrInvalidSpec, req.Snapshot)
	}
	spec := corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}}
	if src := vs.Spec.Source.PersistentVolumeClaimName; src != nil {
		// The source may be gone (the application was deleted): the
		// defaults above and the snapshot's size will do.
		if s, err := p.c.Core.CoreV1().PersistentVolumeClaims(ns).Get(ctx, *src, metav1.GetOptions{}); err == nil {
			spec.AccessModes, spec.StorageClassName, spec.VolumeMode = s.Spec.AccessModes, s.Spec.StorageClassName, s.Spec.VolumeMode
			spec.Resources.Requests = corev1.ResourceList{corev1.ResourceStorage: s.Spec.Resources.Requests[corev1.ResourceStorage]}
		}
	}
	if vs.Status.RestoreSize != nil && !vs.Status.RestoreSize.IsZero() {
		spec.Resources.Requests = corev1.ResourceList{corev1.ResourceStorage: *vs.Status.RestoreSize}
	}
	if q := spec.Resources.Requests[corev1.ResourceStorage]; q.IsZero() {
		return nil, fmt.Errorf("%w: mover: VolumeSnapshot %s has no restoreSize and its PVC is gone, so the size of the volume to restore it into is unknown", ErrInvalidSpec, req.Snapshot)
	}
	if req.StorageClass != nil {
		spec.StorageClassName = req.StorageClass
	}
	group := "snapshot.storage.k8s.io"
	spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: &group, Kind: "VolumeSnapshot", Name: vsName}
	return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels, Annotations: annotations}, Spec: spec}, nil
}

// attachAffinity places a mover that mounts an existing PVC where that
// volume can attach: a ReadWriteOnce volume in use by a pod can only be
// mounted on that pod's node. A ReadWriteOncePod volume in use cannot be
// mounted a second time at all.
func (p *Platform) attachAffinity(ctx context.Context, ns, claim string) (*corev1.Affinity, error) {
	pvc, err := p.c.Core.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: PVC %s/%s (mover pvc)", ErrNotFound, ns, claim)
	}
	if err != nil {
		return nil, fmt.Errorf("reading PVC %s/%s: %w", ns, claim, err)
	}
	modes := pvc.Spec.AccessModes
	if slices.Contains(modes, corev1.ReadWriteMany) || slices.Contains(modes, corev1.ReadOnlyMany) {
		return nil, nil
	}
	pods, err := p.c.Core.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing the pods of %s: %w", ns, err)
	}
	var nodes []string
	for _, pod := range pods.Items {
		if pod.Labels[LabelComponent] == ComponentMover || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, v := range pod.Spec.Volumes {
			if v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != claim {
				continue
			}
			if slices.Contains(modes, corev1.ReadWriteOncePod) {
				return nil, fmt.Errorf("%w: PVC %s/%s is ReadWriteOncePod and pod %s uses it, so a mover cannot mount it; scale the application down or give its driver a VolumeSnapshotClass",
					ErrInvalidSpec, ns, claim, pod.Name)
			}
			if pod.Spec.NodeName != "" && !slices.Contains(nodes, pod.Spec.NodeName) {
				nodes = append(nodes, pod.Spec.NodeName)
			}
		}
	}
	if len(nodes) == 0 {
		return nil, nil // not mounted: the scheduler follows the volume's own node affinity
	}
	return &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: nodes}},
		}}},
	}}, nil
}

// ErrMoverFailed: the mover pod ended without success.
var ErrMoverFailed = errors.New("mover failed")

// Wait polls the pod until it succeeded (nil), failed (ErrMoverFailed
// with its container's termination message), or ctx ends.
func (m *Mover) Wait(ctx context.Context) error {
	for {
		pod, err := m.p.c.Core.CoreV1().Pods(m.Pod.Namespace).Get(ctx, m.Pod.Name, metav1.GetOptions{})
		switch {
		case err != nil && !endingWith(ctx, err):
			return fmt.Errorf("reading mover pod %s/%s: %w", m.Pod.Namespace, m.Pod.Name, err)
		case err == nil && pod.Status.Phase == corev1.PodSucceeded:
			return nil
		case err == nil && pod.Status.Phase == corev1.PodFailed:
			msg := pod.Status.Message
			for _, cs := range pod.Status.ContainerStatuses {
				if t := cs.State.Terminated; t != nil && t.Message != "" {
					msg = t.Message
				}
			}
			return fmt.Errorf("%w: pod %s/%s: %s", ErrMoverFailed, pod.Namespace, pod.Name, msg)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w waiting for mover pod %s/%s: %v", ErrTimeout, m.Pod.Namespace, m.Pod.Name, ctx.Err())
		case <-time.After(m.p.pollInterval):
		}
	}
}

// Cleanup deletes the mover's pod and the PVC made for it. What is
// already gone is not an error.
func (m *Mover) Cleanup(ctx context.Context) error {
	var errs []error
	if m.Pod != nil {
		err := m.p.c.Core.CoreV1().Pods(m.Pod.Namespace).Delete(ctx, m.Pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))})
		if err != nil && !apierrors.IsNotFound(err) {
			// The slot stays taken: the pod may still run. A later
			// Cleanup or the run's CleanupMovers frees it.
			errs = append(errs, fmt.Errorf("deleting mover pod %s/%s: %w", m.Pod.Namespace, m.Pod.Name, err))
		} else {
			m.p.movers.release(m.Pod.Namespace + "/" + m.Pod.Name)
		}
	}
	if m.PVC != nil {
		err := m.p.c.Core.CoreV1().PersistentVolumeClaims(m.PVC.Namespace).Delete(ctx, m.PVC.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting mover PVC %s/%s: %w", m.PVC.Namespace, m.PVC.Name, err))
		}
	}
	return errors.Join(errs...)
}

// CleanupMovers deletes every mover pod and mover PVC of run, in every
// namespace: the crash sweep for a run whose movers were never cleaned up.
func (p *Platform) CleanupMovers(ctx context.Context, run events.RunID) error {
	sel := metav1.ListOptions{LabelSelector: fmt.Sprintf("%s=%s,%s=%s", LabelComponent, ComponentMover, LabelRunID, labelValue(string(run)))}
	var errs []error
	pods, err := p.c.Core.CoreV1().Pods(metav1.NamespaceAll).List(ctx, sel)
	if err != nil {
		return fmt.Errorf("listing mover pods of run %s: %w", run, err)
	}
	for _, pod := range pods.Items {
		m := &Mover{p: p, Pod: &pod}
		errs = append(errs, m.Cleanup(ctx))
	}
	pvcs, err := p.c.Core.CoreV1().PersistentVolumeClaims(metav1.NamespaceAll).List(ctx, sel)
	if err != nil {
		return fmt.Errorf("listing mover PVCs of run %s: %w", run, err)
	}
	for _, pvc := range pvcs.Items {
		m := &Mover{p: p, PVC: &pvc}
		errs = append(errs, m.Cleanup(ctx))
	}
	return errors.Join(errs...)
}

// moverName is tm-mv-<direction initial>-<run and volume>, a DNS label,
// with a hash so distinct runs and volumes never share a name.
func moverName(r MoverRequest) string {
	h := sha256.Sum256([]byte(string(r.Run) + "\x00" + r.Volume + "\x00" + string(r.Direction)))
	base := strings.Trim(nameUnsafe.ReplaceAllString(strings.ToLower(string(r.Run)+"-"+r.Volume), "-"), "-")
	if len(base) > 36 {
		base = strings.Trim(base[:36], "-")
	}
	return "tm-mv-" + string(r.Direction[0]) + "-" + base + "-" + hex.EncodeToString(h[:])[:10]
}

package kube

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
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
// item (MoverArgs: `tidemark mover`) and is deleted with its PVC and its
// credentials Secret afterwards (Cleanup, or CleanupMovers for a run
// whose coordinator or data mover crashed).
//
// A mover pod opens the repository itself, so the volume's bytes go from
// its node straight to the repository. It has no NATS access and no
// Kubernetes token: it reports its result in its termination message
// (MoverResultPath), which the data mover that started it reads from the
// pod's status and publishes. The repository credentials reach it only
// through a Secret made for that pod in the volume's namespace (a pod can
// mount only Secrets of its own namespace), owned by the pod so that the
// garbage collector removes it with the pod even if no Cleanup runs.

// Labels of mover objects, besides LabelManagedBy, LabelRunID and LabelVolume.
const (
	// LabelComponent is "mover" on mover pods and the PVCs made for them,
	// so a sweep never mistakes an application's restored PVC for one.
	LabelComponent = "tidemark.io/component"
	ComponentMover = "mover"
	// MoverMountPath is where the volume is mounted in the mover pod.
	MoverMountPath = "/tidemark/volume"
	// MoverResultPath is the mover container's terminationMessagePath:
	// what `tidemark mover` writes there (its result, or why it failed)
	// the kubelet copies into the pod's status, where WaitEnd reads it.
	MoverResultPath = "/dev/termination-log"
	// MoverCredentialsPath is where the mover pod's Secret (MoverOptions.
	// Credentials) is mounted, one file per key.
	MoverCredentialsPath = "/etc/tidemark/mover-credentials"
	// MoverScratchPath is the mover's only writable directory besides an
	// import's volume (an emptyDir; TMPDIR): kopia's caches go there.
	MoverScratchPath = "/tidemark/scratch"
	// MoverContainer is the name of the mover pod's one container.
	MoverContainer = "mover"
	// DefaultMoverStartTimeout is MoverOptions.StartTimeout's default.
	DefaultMoverStartTimeout = 10 * time.Minute
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
	// StartTimeout bounds how long the pod may take to start running
	// (scheduling, provisioning its PVC, pulling the image) before WaitEnd
	// gives up on it with what held it back (DefaultMoverStartTimeout
	// when zero; negative: no bound).
	StartTimeout time.Duration
	// Env is set in the mover container besides TMPDIR and GOMEMLIMIT:
	// the repository's settings, never a secret (they are readable in the
	// pod's spec by anyone who may read pods).
	Env map[string]string
	// Credentials are files (key: file name) mounted read-only at
	// MoverCredentialsPath from a Secret made for each mover pod in its
	// namespace: the repository password and storage keys. Env names
	// them through the *_FILE variables. Nothing of them is in the pod's
	// spec.
	Credentials map[string][]byte
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
// item: `tidemark mover`, which moves the item between MoverMountPath and
// the repository, writes its result to MoverResultPath and exits. item
// is the work item's data (JSON); it holds no secret.
func MoverArgs(item string, dir MoverDirection) []string {
	return []string{"mover", "--direction", string(dir), "--path", MoverMountPath, "--result-file", MoverResultPath, "--item", item}
}

// Mover is a started mover: its pod and, for an export from a snapshot,
// the PVC made for it.
type Mover struct {
	Pod *corev1.Pod
	// PVC was made from the snapshot for this mover; nil when the mover
	// mounts an existing PVC (import, live export).
	PVC *corev1.PersistentVolumeClaim
	// secret names the pod's credentials Secret (same namespace); empty
	// when it has none.
	secret       string
	startTimeout time.Duration
	p            *Platform
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

// StartMover creates the mover's PVC (for an export from a snapshot),
// pod and credentials Secret. With WithMoverLimit it first waits for a
// free slot (until ctx ends: ErrTimeout). On error nothing it created is
// left and its slot is free again.
//
// A mover of the same run, volume and direction may exist already: the
// work item was redelivered after the data mover that started it died.
// A pod running exactly this item (the same args) is adopted, so its
// work is not done twice; any other (an earlier attempt's leftover) is
// deleted first.
func (p *Platform) StartMover(ctx context.Context, req MoverRequest, opts MoverOptions) (*Mover, error) {
	pvc, pod, err := p.MoverSpec(ctx, req, opts)
	if err != nil {
		return nil, err
	}
	key := pod.Namespace + "/" + pod.Name
	if err := p.movers.acquire(ctx, key); err != nil {
		return nil, fmt.Errorf("mover pod %s for volume %q: %w", key, req.Volume, err)
	}
	m := &Mover{p: p, startTimeout: opts.StartTimeout}
	if m.startTimeout == 0 {
		m.startTimeout = DefaultMoverStartTimeout
	}
	fail := func(err error) (*Mover, error) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = m.Cleanup(cctx)
		p.movers.release(key)
		return nil, err
	}
	if pvc != nil {
		if m.PVC, err = p.createMoverPVC(ctx, pvc); err != nil {
			return fail(fmt.Errorf("creating the mover's PVC %s/%s from snapshot %s: %w", pvc.Namespace, pvc.Name, req.Snapshot, err))
		}
	}
	if m.Pod, err = p.createMoverPod(ctx, pod); err != nil {
		return fail(fmt.Errorf("creating mover pod %s/%s: %w", pod.Namespace, pod.Name, err))
	}
	if len(opts.Credentials) > 0 {
		// After the pod, so that the Secret can be owned by it: the
		// garbage collector then deletes it with the pod whatever happens
		// to this process. The kubelet retries the mount until it exists.
		m.secret = pod.Name
		if err := p.createMoverSecret(ctx, m.Pod, opts.Credentials); err != nil {
			return fail(fmt.Errorf("creating the credentials Secret of mover pod %s/%s: %w", pod.Namespace, pod.Name, err))
		}
	}
	return m, nil
}

func (p *Platform) createMoverPVC(ctx context.Context, pvc *corev1.PersistentVolumeClaim) (*corev1.PersistentVolumeClaim, error) {
	api := p.c.Core.CoreV1().PersistentVolumeClaims(pvc.Namespace)
	for {
		created, err := api.Create(ctx, pvc, metav1.CreateOptions{FieldManager: FieldManager})
		if !apierrors.IsAlreadyExists(err) {
			return created, err
		}
		old, err := api.Get(ctx, pvc.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return nil, err
		case old.Labels[LabelComponent] != ComponentMover:
			return nil, fmt.Errorf("%w: PVC %s/%s exists and is not a mover's", ErrInvalidSpec, pvc.Namespace, pvc.Name)
		case old.DeletionTimestamp == nil:
			// Made from the same snapshot for the same run and volume.
			return old, nil
		}
		if err := p.waitGone(ctx, func(ctx context.Context) error {
			_, err := api.Get(ctx, pvc.Name, metav1.GetOptions{})
			return err
		}); err != nil {
			return nil, fmt.Errorf("waiting for an earlier mover's PVC to go: %w", err)
		}
	}
}

func (p *Platform) createMoverPod(ctx context.Context, pod *corev1.Pod) (*corev1.Pod, error) {
	api := p.c.Core.CoreV1().Pods(pod.Namespace)
	for {
		created, err := api.Create(ctx, pod, metav1.CreateOptions{FieldManager: FieldManager})
		if !apierrors.IsAlreadyExists(err) {
			return created, err
		}
		old, err := api.Get(ctx, pod.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return nil, err
		case old.Labels[LabelComponent] != ComponentMover:
			return nil, fmt.Errorf("%w: pod %s/%s exists and is not a mover", ErrInvalidSpec, pod.Namespace, pod.Name)
		case old.DeletionTimestamp == nil && len(old.Spec.Containers) == 1 &&
			slices.Equal(old.Spec.Containers[0].Args, pod.Spec.Containers[0].Args):
			return old, nil
		case old.DeletionTimestamp == nil:
			err := api.Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))})
			if err != nil && !apierrors.IsNotFound(err) {
				return nil, fmt.Errorf("deleting an earlier attempt's mover pod: %w", err)
			}
		}
		if err := p.waitGone(ctx, func(ctx context.Context) error {
			_, err := api.Get(ctx, pod.Name, metav1.GetOptions{})
			return err
		}); err != nil {
			return nil, fmt.Errorf("waiting for an earlier mover pod to go: %w", err)
		}
	}
}

func (p *Platform) createMoverSecret(ctx context.Context, pod *corev1.Pod, data map[string][]byte) error {
	api := p.c.Core.CoreV1().Secrets(pod.Namespace)
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace, Labels: pod.Labels, Annotations: pod.Annotations,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}},
		},
		Type: corev1.SecretTypeOpaque,
		Data: data,
	}
	_, err := api.Create(ctx, sec, metav1.CreateOptions{FieldManager: FieldManager})
	if apierrors.IsAlreadyExists(err) {
		// An earlier attempt's (or an adopted pod's): replace it, so it is
		// owned by this pod and holds the current credentials.
		if err := api.Delete(ctx, sec.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		_, err = api.Create(ctx, sec, metav1.CreateOptions{FieldManager: FieldManager})
	}
	return err
}

// waitGone polls get until it reports NotFound, or ctx ends.
func (p *Platform) waitGone(ctx context.Context, get func(context.Context) error) error {
	for {
		err := get(ctx)
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil && !endingWith(ctx, err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v", ErrTimeout, ctx.Err())
		case <-time.After(p.pollInterval):
		}
	}
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
	no, yes := false, true
	env := []corev1.EnvVar{{Name: "TMPDIR", Value: MoverScratchPath}}
	for _, k := range slices.Sorted(maps.Keys(opts.Env)) {
		env = append(env, corev1.EnvVar{Name: k, Value: opts.Env[k]})
	}
	if _, ok := opts.Resources.Limits[corev1.ResourceMemory]; ok {
		// The Go heap stays under the memory limit instead of the
		// mover being OOM-killed.
		env = append(env, corev1.EnvVar{Name: "GOMEMLIMIT", ValueFrom: &corev1.EnvVarSource{
			ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory"}}})
	}
	mounts := []corev1.VolumeMount{
		{Name: "volume", MountPath: MoverMountPath, ReadOnly: readOnly},
		{Name: "scratch", MountPath: MoverScratchPath},
	}
	volumes := []corev1.Volume{
		{Name: "volume", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim, ReadOnly: readOnly}}},
		{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	if len(opts.Credentials) > 0 {
		mounts = append(mounts, corev1.VolumeMount{Name: "credentials", MountPath: MoverCredentialsPath, ReadOnly: true})
		volumes = append(volumes, corev1.Volume{Name: "credentials", VolumeSource: corev1.VolumeSource{
			Secret: &corev1.SecretVolumeSource{SecretName: name, DefaultMode: new(int32(0o400))}}})
	}
	// The mover reads (export) or writes (import) files of any owner and
	// mode, so it runs as root, but with only the capabilities that needs
	// (all on the Pod Security "baseline" list): DAC_OVERRIDE to read and
	// write whatever the modes say, and for an import CHOWN, FOWNER and
	// FSETID to give files back their owners, modes and set-id bits. No
	// fsGroup: the kubelet would chown the application's volume to it.
	caps := []corev1.Capability{"DAC_OVERRIDE"}
	if req.Direction == MoverImport {
		caps = append(caps, "CHOWN", "FOWNER", "FSETID")
	}
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
			EnableServiceLinks:            &no,
			SecurityContext: &corev1.PodSecurityContext{
				RunAsUser: new(int64(0)), RunAsNonRoot: &no,
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:            MoverContainer,
				Image:           opts.Image,
				ImagePullPolicy: opts.ImagePullPolicy,
				Args:            MoverArgs(req.Item, req.Direction),
				Env:             env,
				Resources:       opts.Resources,
				VolumeMounts:    mounts,
				// What `tidemark mover` wrote there, or, when it died
				// before writing anything, the tail of its log.
				TerminationMessagePath:   MoverResultPath,
				TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: &no, ReadOnlyRootFilesystem: &yes,
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: caps},
				},
			}},
			Volumes: volumes,
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
	if _, err := p.c.Snapshots.SnapshotV1().VolumeSnapshots(ns).Get(ctx, vsName, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: VolumeSnapshot %s (mover snapshot)", ErrNotFound, req.Snapshot)
	}
	// The snapshot was cut when the application was thawed; its size
	// (restoreSize), and a PVC made from it, need it readyToUse.
	wctx, cancel := context.WithTimeout(ctx, DefaultReadyTimeout)
	defer cancel()
	vs, err := p.waitSnapshot(wctx, ns, vsName, false)
	if err != nil {
		return nil, fmt.Errorf("mover: %w", err)
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

// ErrMoverFailed: the mover pod ended without success, was deleted
// before it ended, or did not start in time.
var ErrMoverFailed = errors.New("mover failed")

// MoverEnd is how a mover pod's container ended.
type MoverEnd struct {
	Succeeded bool
	// Reason is the container's (Completed, Error, OOMKilled) or, when
	// the pod was stopped as a whole, the pod's (DeadlineExceeded,
	// Evicted).
	Reason   string
	ExitCode int32
	// Message is the container's termination message: what the mover
	// wrote to MoverResultPath or, when it failed without writing
	// anything, the tail of its log; else the pod's status message.
	Message string
}

// String says how the pod ended, for a failure's text.
func (e MoverEnd) String() string {
	var b strings.Builder
	if e.Reason != "" {
		b.WriteString(e.Reason)
	} else {
		b.WriteString("failed")
	}
	if e.ExitCode != 0 {
		fmt.Fprintf(&b, ", exit code %d", e.ExitCode)
	}
	if m := strings.TrimSpace(e.Message); m != "" {
		b.WriteString(": ")
		b.WriteString(m)
	}
	return b.String()
}

// Wait polls the pod until it succeeded (nil), failed (ErrMoverFailed
// with its container's termination message), or ctx ends.
func (m *Mover) Wait(ctx context.Context) error {
	end, err := m.WaitEnd(ctx)
	if err != nil {
		return err
	}
	if !end.Succeeded {
		return fmt.Errorf("%w: pod %s/%s: %s", ErrMoverFailed, m.Pod.Namespace, m.Pod.Name, end)
	}
	return nil
}

// WaitEnd polls the pod until it ended, and says how. It fails with
// ErrMoverFailed when the pod is deleted before it ended (the run's
// cleanup), or has not started running within the StartTimeout (with
// what holds it back: an image that cannot be pulled, no node that
// fits), and with ErrTimeout when ctx ends.
func (m *Mover) WaitEnd(ctx context.Context) (MoverEnd, error) {
	ns, name := m.Pod.Namespace, m.Pod.Name
	since := time.Now()
	for {
		pod, err := m.p.c.Core.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return MoverEnd{}, fmt.Errorf("%w: pod %s/%s was deleted before it ended (its run ended, or someone deleted it)", ErrMoverFailed, ns, name)
		case err != nil && !endingWith(ctx, err):
			return MoverEnd{}, fmt.Errorf("reading mover pod %s/%s: %w", ns, name, err)
		case err == nil && (pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed):
			return moverEnd(pod), nil
		case err == nil && m.startTimeout > 0 && !moverStarted(pod) && time.Since(since) > m.startTimeout:
			return MoverEnd{}, fmt.Errorf("%w: pod %s/%s did not start within %s: %s", ErrMoverFailed, ns, name, m.startTimeout, moverHeldBack(pod))
		}
		select {
		case <-ctx.Done():
			return MoverEnd{}, fmt.Errorf("%w waiting for mover pod %s/%s: %v", ErrTimeout, ns, name, ctx.Err())
		case <-time.After(m.p.pollInterval):
		}
	}
}

func moverEnd(pod *corev1.Pod) MoverEnd {
	e := MoverEnd{Succeeded: pod.Status.Phase == corev1.PodSucceeded, Reason: pod.Status.Reason, Message: pod.Status.Message}
	for _, cs := range pod.Status.ContainerStatuses {
		if t := cs.State.Terminated; t != nil && cs.Name == MoverContainer {
			if e.Reason == "" {
				e.Reason = t.Reason
			}
			e.ExitCode = t.ExitCode
			if t.Message != "" {
				e.Message = t.Message
			}
		}
	}
	return e
}

// moverStarted: the container runs or ran.
func moverStarted(pod *corev1.Pod) bool {
	if pod.Status.Phase != corev1.PodPending && pod.Status.Phase != "" {
		return true
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.State.Running != nil || cs.State.Terminated != nil {
			return true
		}
	}
	return false
}

// moverHeldBack says why a pending pod is not running, as far as its
// status tells.
func moverHeldBack(pod *corev1.Pod) string {
	for _, cs := range pod.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			return strings.TrimSpace(w.Reason + " " + w.Message)
		}
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
			return strings.TrimSpace("not scheduled: " + c.Reason + " " + c.Message)
		}
	}
	if pod.Spec.NodeName == "" {
		return "not scheduled yet (is its PVC provisioned? see the pod's and the PVC's events)"
	}
	return "scheduled on " + pod.Spec.NodeName + " but not running (see the pod's events)"
}

// Logs follows the mover container's log from its start. It fails while
// the container has not started yet, and wherever no kubelet serves it.
func (m *Mover) Logs(ctx context.Context) (io.ReadCloser, error) {
	return m.p.c.Core.CoreV1().Pods(m.Pod.Namespace).GetLogs(m.Pod.Name, &corev1.PodLogOptions{Container: MoverContainer, Follow: true}).Stream(ctx)
}

// Cleanup deletes the mover's pod, its credentials Secret and the PVC
// made for it. What is already gone is not an error.
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
		if m.secret != "" {
			// The garbage collector would delete it with the pod; not
			// waiting for it keeps the credentials there no longer than
			// the pod.
			err := m.p.c.Core.CoreV1().Secrets(m.Pod.Namespace).Delete(ctx, m.secret, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("deleting mover Secret %s/%s: %w", m.Pod.Namespace, m.secret, err))
			}
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

// CleanupMovers deletes every mover pod (with its credentials Secret)
// and mover PVC of run, in every namespace: the sweep for a run that
// ended, or whose movers were never cleaned up.
func (p *Platform) CleanupMovers(ctx context.Context, run events.RunID) error {
	sel := metav1.ListOptions{LabelSelector: fmt.Sprintf("%s=%s,%s=%s", LabelComponent, ComponentMover, LabelRunID, labelValue(string(run)))}
	var errs []error
	pods, err := p.c.Core.CoreV1().Pods(metav1.NamespaceAll).List(ctx, sel)
	if err != nil {
		return fmt.Errorf("listing mover pods of run %s: %w", run, err)
	}
	for _, pod := range pods.Items {
		m := &Mover{p: p, Pod: &pod}
		for _, v := range pod.Spec.Volumes {
			if v.Secret != nil && v.Secret.SecretName == pod.Name {
				m.secret = pod.Name
			}
		}
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

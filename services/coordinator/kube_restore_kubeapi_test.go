//go:build kubeapi

// Restores on Kubernetes, against a real kube-apiserver: `make test-kube`.

package coordinator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/pkg/service"
	"github.com/tidemark-dev/tidemark/services/catalog"
	"github.com/tidemark-dev/tidemark/services/coordinator"
	"github.com/tidemark-dev/tidemark/services/datamover"
	"github.com/tidemark-dev/tidemark/services/hookrunner"
	"github.com/tidemark-dev/tidemark/services/snapshotter"
	"github.com/tidemark-dev/tidemark/tests/bustest"
	kubetest "github.com/tidemark-dev/tidemark/tests/kube"
	"github.com/tidemark-dev/tidemark/tests/s3server"
	"github.com/tidemark-dev/tidemark/tests/toolbuild"
)

// scaleRestore stops the StatefulSet around its snapshots, and around the
// imports of a restore; the restore's last step writes what it was given
// (.Restore, .Namespace) into a ConfigMap of the application's namespace.
const scaleRestore = `
apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: scale-restore}
spec:
  actions:
    backup:
      - name: stop
        kind: scale
        timeout: 30s
        scale: {workload: "statefulset/{{ .StatefulSet.Name }}", replicas: 0}
        inverse:
          kind: scale
          timeout: 30s
          scale: {workload: "statefulset/{{ .StatefulSet.Name }}", replicas: "{{ .Steps.stop.Output.originalReplicas }}"}
      - name: snap
        kind: snapshot
    restore:
      - name: stop
        kind: scale
        timeout: 30s
        scale: {workload: "statefulset/{{ .StatefulSet.Name }}", replicas: 0}
        inverse:
          kind: scale
          timeout: 30s
          scale: {workload: "statefulset/{{ .StatefulSet.Name }}", replicas: "{{ .Steps.stop.Output.originalReplicas }}"}
      - name: snap
        kind: snapshot
      - name: start
        kind: scale
        timeout: 30s
        scale: {workload: "statefulset/{{ .StatefulSet.Name }}", replicas: "{{ .Steps.stop.Output.originalReplicas }}"}
      - name: mark
        kind: apply
        timeout: 30s
        apply:
          object:
            apiVersion: v1
            kind: ConfigMap
            metadata: {name: restored}
            data: {mode: "{{ .Restore.Mode }}", target: "{{ .Restore.Target }}", namespace: "{{ .Namespace }}", volume: '{{ index .App.Volumes "data-db-0" }}'}
`

const restoreMoverImage = "tidemark.test/tidemark:dev"

// kubeRestore is all of Tidemark as `tidemark serve --platform kube`
// builds it (coordinator, hookrunner, snapshotter, data mover, catalog),
// on a real NATS server, the shared kube-apiserver and a real kopia
// repository on S3 (versitygw), with the application of kubeSystem
// (StatefulSet db, here 2 replicas, PVCs data-db-0 and data-db-1, bound
// by annotation to the Blueprint scale-restore).
//
// Besides kubeSystem's stand-ins (workload controllers, CSI snapshot
// controller), the TEST-ONLY kubelet stand-in (tests/kube) runs each
// mover pod's `tidemark mover` as a process of the tidemark binary built
// from this tree, on a directory standing for its PVC: the application's
// PVCs have directories with files; a PVC made from a VolumeSnapshot
// stands as its source PVC's directory (the snapshot stand-in copies
// nothing); a PVC a restore created gets an empty directory of its own.
// A TEST-ONLY stand-in for kube-controller-manager's ServiceAccount
// controller gives every namespace its default ServiceAccount, which pods
// need.
type kubeRestore struct {
	*kubeSystem
	cfg     *rest.Config
	kubelet *kubetest.KubeletStandIn

	// files are the application's volumes at backup time, by PVC.
	files map[string]map[string]string

	mu   sync.Mutex
	dirs map[string]string // namespace/pvc → the directory standing for its volume
	// imports records, for each mover pod mounting an existing PVC, how
	// many pods of the application's namespace were running as it started.
	imports []moverStart
	// unmounted makes the stand-in give mover pods that mount an existing
	// PVC a directory that is not there: a volume that failed to mount.
	unmounted bool
}

type moverStart struct {
	pvc  string
	pods int
}

func newKubeRestore(t *testing.T) *kubeRestore {
	t.Helper()
	bin := tidemarkBinary(t)
	cfg := kubetest.Config(t)
	c, err := kube.NewClients(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s3 := s3server.Start(t, s3server.Options{})
	s3.CreateBucket(t, "backups")
	const password = "kube-restore-password-51c0"
	s3cfg := &repository.S3{Endpoint: s3.URL(), Bucket: "backups", Region: s3.Region, AccessKeyID: s3.AccessKey, SecretAccessKey: s3.SecretKey}
	for k, v := range map[string]string{
		repository.EnvPassword: password, repository.EnvS3Bucket: s3cfg.Bucket, repository.EnvS3Endpoint: s3cfg.Endpoint,
		repository.EnvS3Region: s3cfg.Region, repository.EnvS3AccessKey: s3cfg.AccessKeyID, repository.EnvS3SecretKey: s3cfg.SecretAccessKey,
	} {
		t.Setenv(k, v)
	}
	// Made once here, so the services and the mover pods all open it.
	repo, err := repository.Open(context.Background(), repository.Config{S3: s3cfg, Password: password, CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	k := &kubeRestore{
		kubeSystem: &kubeSystem{t: t, env: bustest.Start(t), p: kube.New(c, kube.WithPollInterval(20*time.Millisecond)), ns: fmt.Sprintf("rst%d", kubeNS.Add(1))},
		cfg:        cfg, files: map[string]map[string]string{}, dirs: map[string]string{},
	}
	ctx := context.Background()
	core := c.Core
	startServiceAccountStandIn(t, cfg)
	if _, err := core.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: k.ns, Labels: map[string]string{"team": "shop"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	k.installBlueprintCRD()
	driver := k.ns + ".csi.tidemark.test"
	class := &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: k.ns, Annotations: map[string]string{kube.AnnotationDefaultSnapshotClass: "true"}}, Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
	if _, err := c.Snapshots.SnapshotV1().VolumeSnapshotClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		name := fmt.Sprintf("data-db-%d", i)
		k.boundPVC(name, driver)
		k.files[name] = map[string]string{"PG_VERSION": "17\n", "base/1/1259": strings.Repeat(fmt.Sprint(i), 40000+i), fmt.Sprintf("only-in-%d", i): name}
		dir := t.TempDir()
		writeTree(t, dir, k.files[name])
		k.dirs[k.ns+"/"+name] = dir
	}
	replicas := int32(2)
	labels := map[string]string{"app": "db"}
	_, err = core.AppsV1().StatefulSets(k.ns).Create(ctx, &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Labels: labels, Annotations: map[string]string{kube.AnnotationBlueprint: "scale-restore"}},
		Spec: appsv1.StatefulSetSpec{
			Replicas: &replicas, ServiceName: "db", Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "postgres", Image: "postgres:17"}}}},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{ObjectMeta: metav1.ObjectMeta{Name: "data"}, Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	k.createBlueprint(scaleRestore)
	kubetest.StartWorkloadStandIn(t, cfg, k.ns)
	k.snaps = kubetest.StartSnapshotStandIn(t, cfg)
	k.kubelet = kubetest.StartKubeletStandIn(t, cfg, kubetest.KubeletOptions{
		Selector: kube.LabelComponent + "=" + kube.ComponentMover,
		Volume:   k.volume,
		Command: func(args []string) *exec.Cmd {
			// Nothing of this test's environment: the pod's own is added.
			cmd := exec.Command(bin, args...)
			cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
			return cmd
		},
	})
	k.waitFor("the 2 pods of db", func() bool { return k.podsIn(k.ns) == 2 })
	k.startAll()
	return k
}

// startAll builds the services exactly as `tidemark serve --platform kube`
// does (service.Build: the wiring in services/*/register.go) and runs them
// until the test ends.
func (k *kubeRestore) startAll() {
	t := k.t
	names := []string{coordinator.Name, hookrunner.Name, snapshotter.Name, datamover.Name, catalog.Name}
	svcs, err := service.Build(names, service.Deps{
		Bus: k.env.Bus, Logger: testLogger(), DataDir: t.TempDir(), AppsDir: t.TempDir(), InstanceID: "kube-restore-test",
		Platform: service.PlatformKube, Kube: k.p,
		Coordinator:      service.CoordinatorTuning{AnswerGrace: time.Second, InverseTimeout: 30 * time.Second, ExportTimeout: 2 * time.Minute},
		MoverConcurrency: 2, MoverLimit: 4,
		Mover: kube.MoverOptions{Image: restoreMoverImage, ImagePullPolicy: corev1.PullIfNotPresent, StartTimeout: time.Minute},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- service.RunAll(ctx, svcs, testLogger()) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("services: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("the services did not stop")
		}
	})
}

// volume is the kubelet stand-in's view of a PVC (see kubeRestore).
func (k *kubeRestore) volume(ctx context.Context, pvc *corev1.PersistentVolumeClaim) (string, error) {
	key := pvc.Namespace + "/" + pvc.Name
	fromSnapshot := false
	if ds := pvc.Spec.DataSource; ds != nil && ds.Kind == "VolumeSnapshot" {
		vs, err := k.p.Clients().Snapshots.SnapshotV1().VolumeSnapshots(pvc.Namespace).Get(ctx, ds.Name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		key, fromSnapshot = pvc.Namespace+"/"+*vs.Spec.Source.PersistentVolumeClaimName, true
	}
	if !fromSnapshot {
		pods, err := k.p.Clients().Core.CoreV1().Pods(pvc.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=db"})
		if err != nil {
			return "", err
		}
		k.mu.Lock()
		k.imports = append(k.imports, moverStart{pvc: key, pods: len(pods.Items)})
		k.mu.Unlock()
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.unmounted && !fromSnapshot {
		return filepath.Join(k.t.TempDir(), "not-mounted"), nil
	}
	if dir, ok := k.dirs[key]; ok {
		return dir, nil
	}
	if pvc.Annotations[kube.AnnotationRestoredBy] == "" {
		return "", fmt.Errorf("no directory stands for PVC %s", key)
	}
	dir, err := os.MkdirTemp(k.t.TempDir(), "restored-")
	if err != nil {
		return "", err
	}
	k.dirs[key] = dir
	return dir, nil
}

func (k *kubeRestore) dir(pvc string) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.dirs[pvc]
}

func (k *kubeRestore) importStarts() []moverStart {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.imports)
}

func (k *kubeRestore) podsIn(ns string) int {
	k.t.Helper()
	l, err := k.p.Clients().Core.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=db"})
	if err != nil {
		k.t.Fatal(err)
	}
	return len(l.Items)
}

func (k *kubeRestore) statefulSetIn(ns string) *appsv1.StatefulSet {
	k.t.Helper()
	st, err := k.p.Clients().Core.AppsV1().StatefulSets(ns).Get(context.Background(), "db", metav1.GetOptions{})
	if err != nil {
		k.t.Fatalf("StatefulSet %s/db: %v", ns, err)
	}
	return st
}

// backupPoint backs db up and returns the run and its restore point.
func (k *kubeRestore) backupPoint() (events.RunID, events.RestorePointRecorded) {
	k.t.Helper()
	id := k.backup(k.ns + "/db")
	ev := k.env.WaitFor(k.t, 3*time.Minute, "the restore point of "+string(id), func(e events.Event) bool {
		rec, ok := events.As[events.RestorePointRecorded](e)
		f, failed := events.As[events.BackupFailed](e)
		return (ok && rec.RunID == id) || (failed && f.RunID == id)
	})
	rec, ok := events.As[events.RestorePointRecorded](ev)
	if !ok {
		k.t.Fatalf("backup %s: %+v", id, ev.Data)
	}
	return id, rec
}

// restore publishes req and returns its first answer (restore.accepted,
// or restore.failed for a refusal) and, once accepted, its end.
func (k *kubeRestore) restore(req events.RestoreRequested) (first, end events.Event) {
	k.t.Helper()
	req.RequestedBy = "test"
	ev := events.New("tidemark/test", string(req.RestorePointID), req, time.Now())
	k.env.Publish(k.t, ev)
	first = k.env.WaitFor(k.t, 3*time.Minute, "restore.accepted or failed", func(e events.Event) bool {
		_, a := events.As[events.RestoreAccepted](e)
		_, f := events.As[events.RestoreFailed](e)
		return e.CausationID == ev.ID && (a || f)
	})
	acc, ok := events.As[events.RestoreAccepted](first)
	if !ok {
		return first, first
	}
	k.t.Cleanup(func() {
		if k.t.Failed() {
			r := k.run(acc.RunID)
			k.t.Logf("restore %s: %s/%s history:\n%s", acc.RunID, r.Status, r.Stage, history(r))
			for _, tk := range r.Tasks {
				k.t.Logf("  task %s %s attempt %d: %s", tk.Key, tk.State, tk.Attempt, tk.Error)
			}
		}
	})
	end = k.env.WaitFor(k.t, 3*time.Minute, "the end of restore "+string(acc.RunID), func(e events.Event) bool {
		switch p := e.Data.(type) {
		case events.RestoreCompleted:
			return p.RunID == acc.RunID
		case events.RestoreFailed:
			return p.RunID == acc.RunID
		}
		return false
	})
	return first, end
}

func (k *kubeRestore) completed(req events.RestoreRequested) (events.RestoreAccepted, events.RestoreCompleted) {
	k.t.Helper()
	first, end := k.restore(req)
	acc, ok := events.As[events.RestoreAccepted](first)
	if !ok {
		k.t.Fatalf("restore refused: %+v", first.Data)
	}
	done, ok := events.As[events.RestoreCompleted](end)
	if !ok {
		k.t.Fatalf("restore failed: %+v", end.Data)
	}
	return acc, done
}

// state describes what a user sees of namespace ns's objects (their
// resource versions included), so that "nothing changed" can be checked.
func (k *kubeRestore) state(ns string) string {
	k.t.Helper()
	ctx := context.Background()
	core := k.p.Clients().Core
	var out []string
	if n, err := core.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err == nil {
		out = append(out, "namespace "+n.ResourceVersion)
	} else if !apierrors.IsNotFound(err) {
		k.t.Fatal(err)
	}
	sets, err := core.AppsV1().StatefulSets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	for _, s := range sets.Items {
		out = append(out, fmt.Sprintf("statefulset %s replicas %d rv %s annotations %v", s.Name, *s.Spec.Replicas, s.ResourceVersion, s.Annotations))
	}
	pvcs, err := core.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	for _, c := range pvcs.Items {
		out = append(out, "pvc "+c.Name+" "+c.ResourceVersion)
	}
	cms, err := core.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	for _, c := range cms.Items {
		out = append(out, "configmap "+c.Name+" "+c.ResourceVersion)
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

func (k *kubeRestore) configMap(ns, name string) map[string]string {
	k.t.Helper()
	cm, err := k.p.Clients().Core.CoreV1().ConfigMaps(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		k.t.Fatalf("ConfigMap %s/%s: %v", ns, name, err)
	}
	return cm.Data
}

// assertMoversGone waits until no mover pod or Secret is left, and no
// mover PVC other than one being deleted (the PVC protection controller
// that would remove its finalizer does not run here).
func (k *kubeRestore) assertMoversGone(when string) {
	k.t.Helper()
	sel := metav1.ListOptions{LabelSelector: kube.LabelComponent + "=" + kube.ComponentMover}
	core := k.p.Clients().Core
	k.waitFor("no mover objects "+when, func() bool {
		pods, err1 := core.CoreV1().Pods(metav1.NamespaceAll).List(context.Background(), sel)
		secrets, err2 := core.CoreV1().Secrets(metav1.NamespaceAll).List(context.Background(), sel)
		pvcs, err3 := core.CoreV1().PersistentVolumeClaims(metav1.NamespaceAll).List(context.Background(), sel)
		left := 0
		if err3 == nil {
			for _, c := range pvcs.Items {
				if c.DeletionTimestamp == nil {
					left++
				}
			}
		}
		return err1 == nil && err2 == nil && err3 == nil && len(pods.Items)+len(secrets.Items)+left == 0
	})
}

// A backup of the application (the whole namespace: the StatefulSet, its
// PVCs, a Secret, a ConfigMap, a Service, the Blueprint) moves its volumes
// through mover pods and stores its objects with the restore point; a
// restore of that point into a new namespace creates the objects there
// (the StatefulSet held at 0 replicas), imports the volumes into the new
// PVCs through mover pods, starts the StatefulSet at its 2 replicas and
// runs the blueprint's restore steps on the copy, with .Restore.Target
// the namespace. The original is not touched, and the Secret's value is
// in no event and no run record.
func TestKubeRestoreToANewNamespace(t *testing.T) {
	k := newKubeRestore(t)
	ctx := context.Background()
	core := k.p.Clients().Core
	const password = "db-password-3e9c1f"
	if _, err := core.CoreV1().Secrets(k.ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db-credentials"}, StringData: map[string]string{"password": password}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := core.CoreV1().ConfigMaps(k.ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "db-config"}, Data: map[string]string{"max_connections": "200"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := core.CoreV1().Services(k.ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "db"}, Spec: corev1.ServiceSpec{
		Selector: map[string]string{"app": "db"}, Ports: []corev1.ServicePort{{Name: "pg", Port: 5432}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	id := k.backup(k.ns)
	ev := k.env.WaitFor(t, 3*time.Minute, "the restore point of "+string(id), func(e events.Event) bool {
		rec, ok := events.As[events.RestorePointRecorded](e)
		f, failed := events.As[events.BackupFailed](e)
		return (ok && rec.RunID == id) || (failed && f.RunID == id)
	})
	rec, ok := events.As[events.RestorePointRecorded](ev)
	if !ok {
		t.Fatalf("backup: %+v", ev.Data)
	}
	kinds := map[string]string{}
	for _, a := range rec.Artifacts {
		kinds[a.Name] = a.Kind
	}
	if kinds["data-db-0"] != "volume" || kinds["data-db-1"] != "volume" || kinds[kube.ManifestArtifact] != "dump" || rec.Consistency != "application" {
		t.Fatalf("restore point %s: artifacts %v, consistency %s; want both PVCs and the objects (%s), application-consistent", rec.RestorePointID, kinds, rec.Consistency, kube.ManifestArtifact)
	}
	if h := history(k.run(id)); !strings.Contains(h, "Kubernetes objects; they are stored with the restore point as "+kube.ManifestArtifact) {
		t.Errorf("the backup's history does not say it captured the objects:\n%s", h)
	}
	k.assertMoversGone("after the backup")
	before := k.state(k.ns)

	target := k.ns + "-copy"
	kubetest.StartWorkloadStandIn(t, k.cfg, target)
	acc, done := k.completed(events.RestoreRequested{RestorePointID: rec.RestorePointID, Target: events.RestoreTarget{Mode: "new", Name: target}})
	if acc.Application != target || done.BytesRestored == 0 {
		t.Errorf("restore of %s into %s: accepted %+v, completed %+v; want it to act on the copy, %s", k.ns, target, acc, done, target)
	}
	sec, err := core.CoreV1().Secrets(target).Get(ctx, "db-credentials", metav1.GetOptions{})
	if err != nil || string(sec.Data["password"]) != password {
		t.Errorf("Secret %s/db-credentials: %v; want the captured one", target, err)
	}
	if cm := k.configMap(target, "db-config"); cm["max_connections"] != "200" {
		t.Errorf("ConfigMap %s/db-config: %v", target, cm)
	}
	if s, err := core.CoreV1().Services(target).Get(ctx, "db", metav1.GetOptions{}); err != nil || s.Spec.ClusterIP == "" || s.Spec.ClusterIP == svc.Spec.ClusterIP || s.Spec.Ports[0].Port != 5432 {
		t.Errorf("Service %s/db: %v; want it with its own cluster IP (not the original's %s)", target, err, svc.Spec.ClusterIP)
	}
	if _, err := k.p.Clients().Dynamic.Resource(kube.BlueprintGVR).Namespace(target).Get(ctx, "scale-restore", metav1.GetOptions{}); err != nil {
		t.Errorf("Blueprint %s/scale-restore: %v", target, err)
	}

	// The objects, in the new namespace.
	st := k.statefulSetIn(target)
	if *st.Spec.Replicas != 2 || st.Status.ReadyReplicas != 2 || k.podsIn(target) != 2 {
		t.Errorf("restored StatefulSet: replicas %d (ready %d), %d pods; want its original 2", *st.Spec.Replicas, st.Status.ReadyReplicas, k.podsIn(target))
	}
	if st.Annotations[kube.AnnotationScaledFrom] != "" || st.Annotations[kube.AnnotationRestoredBy] != string(acc.RunID) || st.Annotations[kube.AnnotationBlueprint] != "scale-restore" {
		t.Errorf("restored StatefulSet annotations %v: want the blueprint binding and the restore's run, no scaled-from", st.Annotations)
	}
	ns, err := k.p.Clients().Core.CoreV1().Namespaces().Get(context.Background(), target, metav1.GetOptions{})
	if err != nil || ns.Labels["team"] != "shop" {
		t.Errorf("namespace %s: %v, labels %v; want the captured namespace's labels", target, err, ns.Labels)
	}
	// The volumes, in the new PVCs: the same files as at backup time.
	for pvc, files := range k.files {
		if _, err := k.p.Clients().Core.CoreV1().PersistentVolumeClaims(target).Get(context.Background(), pvc, metav1.GetOptions{}); err != nil {
			t.Errorf("PVC %s/%s: %v", target, pvc, err)
		}
		dir := k.dir(target + "/" + pvc)
		if dir == "" {
			t.Errorf("no mover pod imported into PVC %s/%s", target, pvc)
			continue
		}
		if got := readTree(t, dir); fmt.Sprint(got) != fmt.Sprint(files) {
			t.Errorf("PVC %s/%s holds %v, want %v", target, pvc, keys(got), keys(files))
		}
	}
	// The blueprint's restore steps ran on the copy.
	if got := k.configMap(target, "restored"); got["mode"] != "new" || got["target"] != target || got["namespace"] != target || got["volume"] != "data-db-0" {
		t.Errorf("the restore step saw %v; want .Restore.Mode new, .Restore.Target and .Namespace %s, the volume named by its PVC", got, target)
	}
	r := k.run(acc.RunID)
	if start := task(r, "step/tidemark-start-statefulset-db"); start == nil || start.State != coordinator.TaskSucceeded {
		t.Errorf("the step starting the held StatefulSet: %+v", start)
	}
	if h := history(r); !strings.Contains(h, "restored the point's objects into namespace "+target) || !strings.Contains(h, "held at 0 replicas until the volumes are imported: statefulset/db (2)") {
		t.Errorf("the restore's history does not say what it created:\n%s", h)
	}
	for _, f := range k.env.Facts() {
		if b, _ := json.Marshal(f.Data); strings.Contains(string(b), password) {
			t.Errorf("the Secret's value is in a %s event", f.Type())
		}
	}
	for _, r := range []events.RunID{id, acc.RunID} {
		if b, _ := json.Marshal(k.run(r)); strings.Contains(string(b), password) {
			t.Errorf("the Secret's value is in run %s's record", r)
		}
	}
	// The original is as it was.
	if after := k.state(k.ns); after != before {
		t.Errorf("the restore to new changed the original namespace:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if _, err := k.p.Clients().Core.CoreV1().ConfigMaps(k.ns).Get(context.Background(), "restored", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a restore step ran in the original namespace: %v", err)
	}
	for _, m := range k.importStarts() {
		if strings.HasPrefix(m.pvc, k.ns+"/") {
			t.Errorf("a mover pod mounted the original's PVC %s during the restore to new", m.pvc)
		}
	}
	k.assertMoversGone("after the restore")
}

// A restore to production stops the StatefulSet (the blueprint's scale
// step), replaces what its PVCs hold with the point's files through mover
// pods (keeping the previous contents in each volume), and starts it
// again.
func TestKubeRestoreToProduction(t *testing.T) {
	k := newKubeRestore(t)
	_, rec := k.backupPoint()
	// Work done after the backup, which the restore takes back.
	for pvc := range k.files {
		writeTree(t, k.dir(k.ns+"/"+pvc), map[string]string{"PG_VERSION": "18\n", "after-backup": "lost"})
	}
	acc, done := k.completed(events.RestoreRequested{RestorePointID: rec.RestorePointID, Target: events.RestoreTarget{Mode: "production"}})
	if acc.Application != k.ns+"/db" {
		t.Errorf("accepted for %s, want %s/db", acc.Application, k.ns)
	}
	starts := k.importStarts()
	if len(starts) != 2 {
		t.Errorf("mover pods mounting the application's PVCs: %+v, want one import per PVC", starts)
	}
	for _, m := range starts {
		if m.pods != 0 {
			t.Errorf("the import into %s started while %d pods of db ran; want the StatefulSet stopped first", m.pvc, m.pods)
		}
	}
	for pvc, files := range k.files {
		dir := k.dir(k.ns + "/" + pvc)
		got := readTree(t, dir)
		previous := map[string]string{}
		for name, content := range got {
			if rest, ok := strings.CutPrefix(name, ".tidemark-previous-"+string(acc.RunID)[:8]+"/"); ok {
				previous[rest] = content
				delete(got, name)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(files) {
			t.Errorf("PVC %s holds %v after the restore, want the point's %v", pvc, keys(got), keys(files))
		}
		if previous["after-backup"] != "lost" || previous["PG_VERSION"] != "18\n" {
			t.Errorf("PVC %s: the previous contents kept are %v; want what it held before the restore", pvc, keys(previous))
		}
	}
	st := k.statefulSet()
	if *st.Spec.Replicas != 2 || st.Status.ReadyReplicas != 2 || k.podsIn(k.ns) != 2 || st.Annotations[kube.AnnotationScaledFrom] != "" {
		t.Errorf("after the restore: replicas %d (ready %d), %d pods, annotations %v; want db running at 2 again", *st.Spec.Replicas, st.Status.ReadyReplicas, k.podsIn(k.ns), st.Annotations)
	}
	r := k.run(acc.RunID)
	if stop := task(r, "step/stop"); stop == nil || stop.Outputs[kube.OutputOriginalReplicas] != "2" {
		t.Errorf("the stop step: %+v", stop)
	}
	if got := k.configMap(k.ns, "restored"); got["mode"] != "production" || got["target"] != "" || got["namespace"] != k.ns || got["volume"] != "data-db-0" {
		t.Errorf("the restore step saw %v; want .Restore.Mode production in %s", got, k.ns)
	}
	if done.BytesRestored == 0 {
		t.Errorf("completed %+v", done)
	}
	k.assertMoversGone("after the restore")
}

// The volumes cannot be mounted in the import's mover pods during a
// restore to production, after the StatefulSet was stopped: the restore
// fails with the mover's reason, the stop's inverse scales the
// StatefulSet back to its 2 replicas, and the volumes still hold what
// they held.
func TestKubeProductionRestoreFailureStartsTheApplicationAgain(t *testing.T) {
	k := newKubeRestore(t)
	_, rec := k.backupPoint()
	writeTree(t, k.dir(k.ns+"/data-db-0"), map[string]string{"after-backup": "kept"})
	want := map[string]map[string]string{}
	for pvc := range k.files {
		want[pvc] = readTree(t, k.dir(k.ns+"/"+pvc))
	}
	k.mu.Lock()
	k.unmounted = true
	k.mu.Unlock()

	first, end := k.restore(events.RestoreRequested{RestorePointID: rec.RestorePointID, Target: events.RestoreTarget{Mode: "production"}})
	if _, ok := events.As[events.RestoreAccepted](first); !ok {
		t.Fatalf("restore refused: %+v", first.Data)
	}
	f, ok := events.As[events.RestoreFailed](end)
	if !ok || !strings.Contains(f.Reason, "the volume is not mounted at") || !strings.HasPrefix(f.FailedStep, "import data-db-") {
		t.Fatalf("outcome %+v: want restore.failed at an import with the mover's reason", end.Data)
	}
	if len(f.Compensations) != 1 || f.Compensations[0].Outcome != "succeeded" {
		t.Errorf("compensations %+v: want the stop's inverse, succeeded", f.Compensations)
	}
	st := k.statefulSet()
	if *st.Spec.Replicas != 2 || st.Status.ReadyReplicas != 2 || k.podsIn(k.ns) != 2 || st.Annotations[kube.AnnotationScaledFrom] != "" {
		t.Errorf("after the failure: replicas %d (ready %d), %d pods, annotations %v; want db running at 2 again", *st.Spec.Replicas, st.Status.ReadyReplicas, k.podsIn(k.ns), st.Annotations)
	}
	for pvc, files := range want {
		if got := readTree(t, k.dir(k.ns+"/"+pvc)); fmt.Sprint(got) != fmt.Sprint(files) {
			t.Errorf("PVC %s holds %v after the failed restore, want what it held before, %v", pvc, keys(got), keys(files))
		}
	}
	if r := k.run(f.RunID); r.Status != coordinator.StatusFailed || len(r.Unresolved) != 0 {
		t.Errorf("run %s, unresolved %v", r.Status, r.Unresolved)
	}
	k.assertMoversGone("after the failed restore")
}

// Each restore the target cannot take is refused before anything is
// changed, with a reason that names the fix; no mover pod runs. With
// --force, the restore into a namespace that holds the application's
// objects goes ahead.
func TestKubeRestoreRefusalsNameTheFixAndChangeNothing(t *testing.T) {
	k := newKubeRestore(t)
	_, rec := k.backupPoint()
	ctx := context.Background()
	core := k.p.Clients().Core

	// A namespace where db already is (another copy, made by hand).
	taken := k.ns + "-taken"
	if _, err := core.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: taken}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	existing := k.statefulSet().DeepCopy()
	existing.ObjectMeta = metav1.ObjectMeta{Name: "db", Namespace: taken, Labels: existing.Labels}
	existing.Status = appsv1.StatefulSetStatus{}
	if _, err := core.AppsV1().StatefulSets(taken).Create(ctx, existing, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	k.waitFor("the service account of "+taken, func() bool {
		_, err := core.CoreV1().ServiceAccounts(taken).Get(ctx, "default", metav1.GetOptions{})
		return err == nil
	})
	movers := len(k.kubelet.Pods())
	original, other := k.state(k.ns), k.state(taken)

	newTo := func(ns string) events.RestoreRequested {
		return events.RestoreRequested{RestorePointID: rec.RestorePointID, Target: events.RestoreTarget{Mode: "new", Name: ns}}
	}
	only := newTo(k.ns + "-only")
	only.Only = []string{kube.ManifestArtifact}
	for _, tc := range []struct {
		what string
		req  events.RestoreRequested
		want []string
	}{
		{"no target", newTo(""), []string{"needs a target namespace (--target NAMESPACE)"}},
		{"not a namespace name", newTo("Shop_Copy"), []string{`target "Shop_Copy"`, "goes into a namespace, named as a DNS label"}},
		{"the application's own namespace", newTo(k.ns), []string{"is the application's own namespace", "--to production"}},
		{"objects of the same names", newTo(taken), []string{"namespace " + taken + " already holds 1 object the restore would create (StatefulSet db)", "another namespace, or pass --force", "nothing was changed"}},
		{"only the objects", only, []string{"--only " + kube.ManifestArtifact + ": that is the application's objects"}},
	} {
		first, _ := k.restore(tc.req)
		f, ok := events.As[events.RestoreFailed](first)
		if !ok {
			t.Errorf("%s: %+v, want a refusal", tc.what, first.Data)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(f.Reason, w) {
				t.Errorf("%s: refused with %q, want it to say %q", tc.what, f.Reason, w)
			}
		}
	}
	if got := k.state(taken); got != other {
		t.Errorf("a refused restore changed namespace %s:\nbefore:\n%s\nafter:\n%s", taken, other, got)
	}
	if got := k.state(k.ns); got != original {
		t.Errorf("a refused restore changed the application:\nbefore:\n%s\nafter:\n%s", original, got)
	}
	if _, err := core.CoreV1().Namespaces().Get(ctx, k.ns+"-only", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a refused restore created namespace %s-only: %v", k.ns, err)
	}
	if n := len(k.kubelet.Pods()); n != movers {
		t.Errorf("%d mover pods ran for refused restores", n-movers)
	}

	// With --force the same restore goes ahead: the StatefulSet there is
	// updated to the point's, its PVCs made, the volumes imported.
	kubetest.StartWorkloadStandIn(t, k.cfg, taken)
	force := newTo(taken)
	force.Force = true
	acc, _ := k.completed(force)
	st := k.statefulSetIn(taken)
	if st.Annotations[kube.AnnotationRestoredBy] != string(acc.RunID) || *st.Spec.Replicas != 2 || st.Status.ReadyReplicas != 2 {
		t.Errorf("with --force: StatefulSet %s/db replicas %d (ready %d), annotations %v; want it updated by the restore and running at 2", taken, *st.Spec.Replicas, st.Status.ReadyReplicas, st.Annotations)
	}
	for pvc, files := range k.files {
		if got := readTree(t, k.dir(taken+"/"+pvc)); fmt.Sprint(got) != fmt.Sprint(files) {
			t.Errorf("with --force: PVC %s/%s holds %v, want %v", taken, pvc, keys(got), keys(files))
		}
	}

	// A PVC of the application is going away: production has nowhere to
	// put that volume.
	if err := core.CoreV1().PersistentVolumeClaims(k.ns).Delete(ctx, "data-db-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The PVC protection finalizer would keep it otherwise.
		if c, err := core.CoreV1().PersistentVolumeClaims(k.ns).Get(ctx, "data-db-1", metav1.GetOptions{}); err == nil {
			c.Finalizers = nil
			_, _ = core.CoreV1().PersistentVolumeClaims(k.ns).Update(ctx, c, metav1.UpdateOptions{})
		}
	})
	original = k.state(k.ns)
	first, _ := k.restore(events.RestoreRequested{RestorePointID: rec.RestorePointID, Target: events.RestoreTarget{Mode: "production"}})
	if f, ok := events.As[events.RestoreFailed](first); !ok || !strings.Contains(f.Reason, "volume data-db-1: PVC "+k.ns+"/data-db-1 no longer exists") || !strings.Contains(f.Reason, "--to new --target NAMESPACE") {
		t.Errorf("production without a PVC: %+v, want a refusal naming the PVC and the fix", first.Data)
	}
	if got := k.state(k.ns); got != original {
		t.Errorf("a refused restore to production changed the application:\nbefore:\n%s\nafter:\n%s", original, got)
	}
}

// startServiceAccountStandIn is a TEST-ONLY stand-in for
// kube-controller-manager's ServiceAccount controller, which this harness
// does not run: every namespace gets its default ServiceAccount, without
// which the apiserver refuses its pods. A restore into a new namespace
// creates it; in a cluster the controller fills it.
func startServiceAccountStandIn(t *testing.T, cfg *rest.Config) {
	t.Helper()
	c, err := kube.NewClients(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if l, err := c.Core.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err == nil {
				for _, ns := range l.Items {
					if ns.DeletionTimestamp != nil {
						continue
					}
					_, err := c.Core.CoreV1().ServiceAccounts(ns.Name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
					_ = err // exists already, mostly
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// tidemarkBinary builds the tidemark binary of this tree (what the
// mover pods run) once per test binary, into the test cache.
func tidemarkBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		cache, err := toolbuild.CacheDir()
		if err != nil {
			binErr = err
			return
		}
		dir := filepath.Join(cache, "bin", "tidemark-under-test")
		if binErr = os.MkdirAll(dir, 0o755); binErr != nil {
			return
		}
		tmp, err := os.CreateTemp(dir, "tidemark-*.tmp")
		if err != nil {
			binErr = err
			return
		}
		tmp.Close()
		out, err := exec.Command("go", "build", "-o", tmp.Name(), "github.com/tidemark-dev/tidemark/cmd/tidemark").CombinedOutput()
		if err != nil {
			os.Remove(tmp.Name())
			binErr = fmt.Errorf("go build ./cmd/tidemark: %v\n%s", err, out)
			return
		}
		binPath = filepath.Join(dir, "tidemark")
		binErr = os.Rename(tmp.Name(), binPath)
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func writeTree(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// readTree returns every regular file under dir by its slash path.
func readTree(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if d.Name() == ".tidemark-kept" {
			return nil // the marker of a replacing import's kept copy
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

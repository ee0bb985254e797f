//go:build kubeapi

// The data mover on --platform kube against a real kube-apiserver, a real
// NATS server and a real kopia repository: `make test-kube`.

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/services/datamover"
	"github.com/tidemark-dev/tidemark/tests/bustest"
	kubetest "github.com/tidemark-dev/tidemark/tests/kube"
	"github.com/tidemark-dev/tidemark/tests/s3server"
)

const (
	moverNS     = "shop"
	moverDriver = "hostpath.csi.tidemark.test"
	moverApp    = "shop/db"
	moverImage  = "tidemark.test/tidemark:dev"
)

// kubeMover is `tidemark serve --services datamover --platform kube` on
// a control plane of its own, with the stand-ins that play the parts no
// process here plays: the CSI snapshot controller (kubetest.SnapshotStandIn)
// and the kubelet (kubetest.KubeletStandIn, which runs each mover pod's
// `tidemark mover` args as a child process of this test binary, on a
// directory standing for the pod's PVC).
type kubeMover struct {
	t       *testing.T
	core    kubernetes.Interface
	plat    *kube.Platform
	bus     *bustest.Env
	serve   *tidemarkProcess
	kubelet *kubetest.KubeletStandIn

	serveArgs []string

	mu   sync.Mutex
	dirs map[string]string // PVC name → the directory standing for its volume
}

// startKubeMover starts it all; repoEnv is the repository the data mover
// is given (TIDEMARK_REPOSITORY_*), extra its other flags.
func startKubeMover(t *testing.T, repoEnv map[string]string, extra ...string) *kubeMover {
	t.Helper()
	plane := kubetest.Start(t)
	c, err := kube.NewClients(plane.Config)
	if err != nil {
		t.Fatal(err)
	}
	k := &kubeMover{t: t, core: c.Core, plat: kube.New(c, kube.WithPollInterval(50*time.Millisecond)), dirs: map[string]string{}}
	ctx := context.Background()
	if _, err := k.core.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: moverNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// No controller-manager makes the ServiceAccount pods need.
	if _, err := k.core.CoreV1().ServiceAccounts(moverNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Snapshots.SnapshotV1().VolumeSnapshotClasses().Create(ctx, &snapv1.VolumeSnapshotClass{
		ObjectMeta: metav1.ObjectMeta{Name: "hostpath", Annotations: map[string]string{kube.AnnotationDefaultSnapshotClass: "true"}},
		Driver:     moverDriver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kubetest.StartSnapshotStandIn(t, plane.Config)
	k.kubelet = kubetest.StartKubeletStandIn(t, plane.Config, kubetest.KubeletOptions{
		Selector: kube.LabelComponent + "=" + kube.ComponentMover,
		Volume:   k.volume,
		Command: func(args []string) *exec.Cmd {
			// Nothing of this test's environment: the pod's own is added.
			cmd := exec.Command(os.Args[0], args...)
			cmd.Env = []string{"TIDEMARK_TEST_RUN_MAIN=1", "PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
			return cmd
		},
	})
	k.bus = bustest.Start(t)

	t.Setenv("KUBECONFIG", plane.KubeConfig)
	for name, v := range repoEnv {
		t.Setenv(name, v)
	}
	k.serveArgs = append([]string{"serve", "--services", "datamover", "--platform", "kube", "--nats-url", k.bus.Server.ClientURL(),
		"--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--log-format", "json", "--mover-image", moverImage}, extra...)
	k.serve = startTidemark(t, k.serveArgs...)
	k.serve.logField(t, "tidemark serving", "http")
	return k
}

// restart stops the data mover as Kubernetes does (SIGTERM) and starts
// another.
func (k *kubeMover) restart(t testing.TB) {
	t.Helper()
	if err := k.serve.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-k.serve.done:
		if err != nil {
			t.Fatalf("the data mover did not stop cleanly: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the data mover did not stop")
	}
	k.serve = startTidemark(t, k.serveArgs...)
	k.serve.logField(t, "tidemark serving", "http")
}

// volume is the kubelet stand-in's view of a PVC: a PVC made from a
// VolumeSnapshot stands as its source PVC's directory (the stand-in
// snapshot controller copies nothing), any other as its own.
func (k *kubeMover) volume(ctx context.Context, pvc *corev1.PersistentVolumeClaim) (string, error) {
	name := pvc.Name
	if ds := pvc.Spec.DataSource; ds != nil && ds.Kind == "VolumeSnapshot" {
		vs, err := k.plat.Clients().Snapshots.SnapshotV1().VolumeSnapshots(pvc.Namespace).Get(ctx, ds.Name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		name = *vs.Spec.Source.PersistentVolumeClaimName
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	dir, ok := k.dirs[name]
	if !ok {
		return "", fmt.Errorf("no directory stands for PVC %s", name)
	}
	return dir, nil
}

// pvc makes a bound CSI PVC (with its PV, as a provisioner would) whose
// volume holds files, and returns its directory.
func (k *kubeMover) pvc(name string, files map[string]string) string {
	k.t.Helper()
	ctx := context.Background()
	size := resource.MustParse("1Gi")
	pv := "pv-" + moverNS + "-" + name
	_, err := k.core.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pv},
		Spec: corev1.PersistentVolumeSpec{
			Capacity: corev1.ResourceList{corev1.ResourceStorage: size}, AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: moverDriver, VolumeHandle: pv}},
			ClaimRef:               &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: moverNS, Name: name},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	_, err = k.core.CoreV1().PersistentVolumeClaims(moverNS).Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, VolumeName: pv,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	dir := k.t.TempDir()
	writeTree(k.t, dir, files)
	k.mu.Lock()
	k.dirs[name] = dir
	k.mu.Unlock()
	return dir
}

// snapshot takes a CSI snapshot of PVC pvc for run, as the snapshotter does.
func (k *kubeMover) snapshot(t testing.TB, run events.RunID, volume, pvc string) events.SnapshotID {
	t.Helper()
	s := &kube.Snapshotter{Platform: k.plat, Namespace: moverNS, ReadyTimeout: 30 * time.Second}
	snaps, err := s.Snapshot(context.Background(), run, []events.VolumeRef{{Name: volume, Source: pvc}})
	if err != nil {
		t.Fatal(err)
	}
	return snaps[0].ID
}

func (k *kubeMover) export(t testing.TB, run events.RunID, volume string, id events.SnapshotID) {
	t.Helper()
	ev := events.New("tidemark/test", moverApp, events.VolumeExportRequested{
		RunID: run, Application: moverApp, Volume: volume, SourceKind: datamover.SourceSnapshot, SnapshotID: id,
		Repository: "default", IdempotencyKey: string(run) + ":export:" + volume,
	}, time.Now())
	ev.CorrelationID = string(run)
	k.bus.Publish(t, ev)
}

func (k *kubeMover) importInto(t testing.TB, run events.RunID, volume string, manifest events.ManifestID, kind, pvc string) {
	t.Helper()
	ev := events.New("tidemark/test", moverApp, events.VolumeImportRequested{
		RunID: run, Volume: volume, ManifestID: manifest, Repository: "default", TargetKind: kind, Target: moverNS + "/" + pvc,
		IdempotencyKey: string(run) + ":import:" + volume,
	}, time.Now())
	ev.CorrelationID = string(run)
	k.bus.Publish(t, ev)
}

func waitFact[P events.Payload](t testing.TB, k *kubeMover, what string, match func(P) bool) P {
	t.Helper()
	ev := k.bus.WaitFor(t, 90*time.Second, what, func(ev events.Event) bool {
		p, ok := events.As[P](ev)
		return ok && match(p)
	})
	p, _ := events.As[P](ev)
	return p
}

// assertMoversGone waits until no mover pod, mover PVC or mover Secret
// is left in the namespace. A PVC being deleted counts as gone: it keeps
// its kubernetes.io/pvc-protection finalizer until the PVC protection
// controller removes it, and this harness runs none.
func (k *kubeMover) assertMoversGone(t testing.TB, when string) {
	t.Helper()
	sel := metav1.ListOptions{LabelSelector: kube.LabelComponent + "=" + kube.ComponentMover}
	ctx := context.Background()
	deadline := time.Now().Add(20 * time.Second)
	for {
		pods, err1 := k.core.CoreV1().Pods(moverNS).List(ctx, sel)
		pvcs, err2 := k.core.CoreV1().PersistentVolumeClaims(moverNS).List(ctx, sel)
		secrets, err3 := k.core.CoreV1().Secrets(moverNS).List(ctx, sel)
		left := 0
		if err2 == nil {
			for _, c := range pvcs.Items {
				if c.DeletionTimestamp == nil {
					left++
				}
			}
		}
		if err1 == nil && err2 == nil && err3 == nil && len(pods.Items)+left+len(secrets.Items) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: mover objects left: %d pods, %d PVCs, %d Secrets (%v %v %v)", when,
				len(pods.Items), left, len(secrets.Items), err1, err2, err3)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// countPods watches the namespace's mover pods and returns the most that
// existed at once so far; a watch sees every creation and deletion in the
// order the apiserver made them.
func (k *kubeMover) countPods() func() int {
	k.t.Helper()
	w, err := k.core.CoreV1().Pods(moverNS).Watch(context.Background(), metav1.ListOptions{LabelSelector: kube.LabelComponent + "=" + kube.ComponentMover})
	if err != nil {
		k.t.Fatal(err)
	}
	k.t.Cleanup(w.Stop)
	var (
		mu   sync.Mutex
		live = map[string]bool{}
		most int
	)
	go func() {
		for ev := range w.ResultChan() {
			pod, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			mu.Lock()
			switch ev.Type {
			case watch.Added:
				live[pod.Name] = true
			case watch.Deleted:
				delete(live, pod.Name)
			}
			most = max(most, len(live))
			mu.Unlock()
		}
	}()
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return most
	}
}

// An S3 repository; three volumes exported at once with --mover-limit 2,
// then one restored into a new PVC: each through a mover pod running
// `tidemark mover`, reported as the local data mover reports, with the
// pods, their PVCs and their Secrets gone after, and the credentials
// nowhere but in those Secrets.
func TestKubeMoverPodsMoveVolumesWithinTheLimit(t *testing.T) {
	s3 := s3server.Start(t, s3server.Options{})
	s3.CreateBucket(t, "backups")
	const password = "repository-password-7c1f9a"
	k := startKubeMover(t, map[string]string{
		repository.EnvPassword: password, repository.EnvS3Bucket: "backups", repository.EnvS3Endpoint: s3.URL(),
		repository.EnvS3Region: s3.Region, repository.EnvS3AccessKey: s3.AccessKey, repository.EnvS3SecretKey: s3.SecretKey,
	}, "--mover-limit", "2")
	most := k.countPods()
	// Long enough that three movers would overlap if the limit let them.
	k.kubelet.Linger(1500 * time.Millisecond)

	run := events.RunID("0197b0aa-kube-export")
	files := map[string]map[string]string{}
	ids := map[string]events.SnapshotID{}
	for i := range 3 {
		vol := fmt.Sprintf("data-%d", i)
		files[vol] = map[string]string{"PG_VERSION": "17\n", "base/1/1259": strings.Repeat(fmt.Sprint(i), 50000+i), fmt.Sprintf("only-in-%d", i): vol}
		k.pvc(vol, files[vol])
		ids[vol] = k.snapshot(t, run, vol, vol)
	}
	for vol, id := range ids {
		k.export(t, run, vol, id)
	}
	exported := map[string]events.VolumeExported{}
	for vol := range ids {
		exported[vol] = waitFact(t, k, "volume.exported "+vol, func(p events.VolumeExported) bool { return p.RunID == run && p.Volume == vol })
	}
	for vol, e := range exported {
		i := vol[len(vol)-1] - '0'
		if e.ManifestID == "" || e.Files != 3 || e.Bytes != int64(3+50000+int(i)+len(vol)) || e.SourceKind != "snapshot" || e.FinishedAt.Before(e.StartedAt) {
			t.Errorf("%s exported as %+v: want 3 files, the volume's bytes", vol, e)
		}
	}
	if got := most(); got != 2 {
		t.Errorf("at most %d mover pods existed at once, want the limit, 2", got)
	}
	if got := k.kubelet.MostRunning(); got > 2 {
		t.Errorf("%d mover pods ran at once, above the limit of 2", got)
	}
	k.assertMoversGone(t, "after the exports")

	// The snapshots are kopia's, in the bucket, tagged with the volume.
	r, err := repository.Open(context.Background(), repository.Config{
		S3:       &repository.S3{Endpoint: s3.URL(), Bucket: "backups", Region: s3.Region, AccessKeyID: s3.AccessKey, SecretAccessKey: s3.SecretKey},
		Password: password, CacheDir: t.TempDir(), NoCreate: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	snaps, err := r.Snapshots(context.Background(), moverApp)
	if err != nil {
		t.Fatal(err)
	}
	inRepo := map[string]string{}
	for _, s := range snaps {
		inRepo[s.ManifestID] = s.Volume
	}
	for vol, e := range exported {
		if inRepo[string(e.ManifestID)] != vol {
			t.Errorf("snapshot %s of %s: the repository has %v", e.ManifestID, vol, inRepo)
		}
	}

	// Back into a new PVC, through a mover pod too.
	restored := k.pvc("restored", nil)
	k.importInto(t, run, "data-1", exported["data-1"].ManifestID, datamover.TargetDirectory, "restored")
	imp := waitFact(t, k, "volume.imported", func(p events.VolumeImported) bool { return p.RunID == run && p.Volume == "data-1" })
	if imp.Files != 3 || imp.ManifestID != exported["data-1"].ManifestID {
		t.Errorf("imported %+v", imp)
	}
	if got := readTree(t, restored); fmt.Sprint(got) != fmt.Sprint(files["data-1"]) {
		t.Errorf("restored PVC holds %v, want %v", got, files["data-1"])
	}
	k.assertMoversGone(t, "after the import")

	// The credentials were in each pod's own Secret, mounted as files;
	// the pod's spec, the events and the data mover's log never held them.
	pods := k.kubelet.Pods()
	if len(pods) != 4 {
		t.Fatalf("the kubelet stand-in ran %d pods, want 4 (3 exports, 1 import)", len(pods))
	}
	secrets := []string{password, s3.SecretKey}
	for _, pod := range pods {
		spec, _ := json.Marshal(pod.Spec)
		for _, s := range secrets {
			if strings.Contains(string(spec), s) {
				t.Errorf("pod %s's spec holds a credential", pod.Name)
			}
		}
		c := pod.Spec.Containers[0]
		env := map[string]string{}
		for _, e := range c.Env {
			env[e.Name] = e.Value
		}
		if env[repository.EnvPasswordFile] != kube.MoverCredentialsPath+"/password" || env[repository.EnvPassword] != "" ||
			!strings.HasPrefix(env[repository.EnvS3SecretKey+"_FILE"], kube.MoverCredentialsPath+"/") {
			t.Errorf("pod %s env %v: want the credentials as files of its Secret", pod.Name, env)
		}
		var fromSecret bool
		for _, v := range pod.Spec.Volumes {
			fromSecret = fromSecret || (v.Secret != nil && v.Secret.SecretName == pod.Name)
		}
		if !fromSecret || c.Args[0] != "mover" || pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
			t.Errorf("pod %s: want `tidemark mover`, its own Secret mounted and no token", pod.Name)
		}
	}
	facts, _ := json.Marshal(k.bus.Facts())
	k.serve.mu.Lock()
	logs, _ := json.Marshal(k.serve.logs)
	k.serve.mu.Unlock()
	for _, s := range secrets {
		if strings.Contains(string(facts), s) || strings.Contains(string(logs), s) {
			t.Error("a credential is in an event or in the data mover's log")
		}
	}
}

// Each way a mover can fail ends in the failure event with the reason,
// and no mover pod, PVC or Secret is left: the mover itself fails; the
// kubelet kills it; it never starts; its run ends while it runs.
func TestKubeMoverFailuresAreReportedAndCleanedUp(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pw, []byte("fs-repository-password"), 0o400); err != nil {
		t.Fatal(err)
	}
	k := startKubeMover(t, map[string]string{
		repository.EnvPath: filepath.Join(t.TempDir(), "repository"), repository.EnvPasswordFile: pw,
	}, "--mover-limit", "2", "--mover-start-timeout", "2s")
	k.pvc("data", map[string]string{"PG_VERSION": "17\n"})
	k.pvc("restored", nil)

	t.Run("the mover fails", func(t *testing.T) {
		k.importInto(t, "run-missing", "data", "k0123456789abcdef0123456789abcdef", datamover.TargetDirectory, "restored")
		f := waitFact(t, k, "volume.import.failed", func(p events.VolumeImportFailed) bool { return p.RunID == "run-missing" })
		if !strings.Contains(f.Error, "mover pod "+moverNS+"/") || !strings.Contains(f.Error, "not found") || !f.Permanent {
			t.Errorf("failure %+v: want the pod and the mover's reason, permanent", f)
		}
		k.assertMoversGone(t, "after a mover failed")
	})

	t.Run("the kubelet kills it", func(t *testing.T) {
		k.kubelet.KillWith("OOMKilled", 137, "exporting shop/db data\nfatal error: runtime: out of memory")
		defer k.kubelet.StopKilling()
		k.export(t, "run-oom", "data", k.snapshot(t, "run-oom", "data", "data"))
		f := waitFact(t, k, "volume.export.failed", func(p events.VolumeExportFailed) bool { return p.RunID == "run-oom" })
		if !strings.Contains(f.Error, "OOMKilled, exit code 137") || !strings.Contains(f.Error, "out of memory") || f.Permanent {
			t.Errorf("failure %+v: want the kubelet's reason and the log's tail, not permanent", f)
		}
		k.assertMoversGone(t, "after a mover was killed")
	})

	t.Run("it never starts", func(t *testing.T) {
		k.kubelet.Hold("ImagePullBackOff", `Back-off pulling image "`+moverImage+`"`)
		defer k.kubelet.Release()
		k.export(t, "run-pull", "data", k.snapshot(t, "run-pull", "data", "data"))
		f := waitFact(t, k, "volume.export.failed", func(p events.VolumeExportFailed) bool { return p.RunID == "run-pull" })
		if !strings.Contains(f.Error, "did not start within 2s") || !strings.Contains(f.Error, "ImagePullBackOff") {
			t.Errorf("failure %+v: want what held the pod back", f)
		}
		k.assertMoversGone(t, "after a mover did not start")
	})

	t.Run("its run ends", func(t *testing.T) {
		k.kubelet.Linger(time.Minute)
		defer k.kubelet.Linger(0)
		const run = events.RunID("run-failed-meanwhile")
		k.export(t, run, "data", k.snapshot(t, run, "data", "data"))
		waitUntil(t, "the mover pod to run", func() bool {
			for _, p := range k.kubelet.Pods() {
				if p.Labels[kube.LabelRunID] == string(run) {
					return true
				}
			}
			return false
		})
		ev := events.New("tidemark/test", moverApp, events.BackupFailed{RunID: run, Application: moverApp, Reason: "the freeze deadline passed"}, time.Now())
		ev.CorrelationID = string(run)
		k.bus.Publish(t, ev)
		f := waitFact(t, k, "volume.export.failed", func(p events.VolumeExportFailed) bool { return p.RunID == run })
		if !strings.Contains(f.Error, "deleted before it ended") {
			t.Errorf("failure %+v: want the pod deleted by the run's end", f)
		}
		k.assertMoversGone(t, "after the run ended")
	})
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A data mover that is stopped (a rolling update) while its mover pod
// runs leaves the pod running; the work item goes back to the queue, and
// the data mover that gets it adopts the pod and reports its result: the
// volume is moved once.
func TestKubeMoverPodOutlivesItsDataMover(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pw, []byte("fs-repository-password"), 0o400); err != nil {
		t.Fatal(err)
	}
	k := startKubeMover(t, map[string]string{
		repository.EnvPath: filepath.Join(t.TempDir(), "repository"), repository.EnvPasswordFile: pw,
	}, "--shutdown-timeout", "30s")
	k.pvc("data", map[string]string{"PG_VERSION": "17\n", "base/1": "rows"})
	// Longer than the data mover's grace for in-flight work (10s) and
	// its restart.
	k.kubelet.Linger(25 * time.Second)
	const run = events.RunID("run-rolling-update")
	k.export(t, run, "data", k.snapshot(t, run, "data", "data"))
	waitUntil(t, "the mover pod to run", func() bool { return len(k.kubelet.Pods()) == 1 })

	k.restart(t)
	e := waitFact(t, k, "volume.exported", func(p events.VolumeExported) bool { return p.RunID == run })
	if e.ManifestID == "" || e.Files != 2 {
		t.Errorf("exported %+v", e)
	}
	if n := len(k.kubelet.Pods()); n != 1 {
		t.Errorf("%d mover pods ran; the second data mover must adopt the first one's", n)
	}
	for _, f := range k.bus.Facts() {
		if p, ok := events.As[events.VolumeExportFailed](f); ok && p.RunID == run {
			t.Errorf("the export failed on the way: %s", p.Error)
		}
	}
	k.assertMoversGone(t, "after the adopted pod ended")
}

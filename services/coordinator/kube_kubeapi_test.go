//go:build kubeapi

// Tests against a real kube-apiserver: `make test-kube` (go test -tags kubeapi).

package coordinator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/pkg/service"
	"github.com/tidemark-dev/tidemark/services/coordinator"
	"github.com/tidemark-dev/tidemark/services/hookrunner"
	"github.com/tidemark-dev/tidemark/services/snapshotter"
	"github.com/tidemark-dev/tidemark/tests/bustest"
	kubetest "github.com/tidemark-dev/tidemark/tests/kube"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

var kubeNS atomic.Int64

// kubeSystem is the coordinator, hookrunner and snapshotter as `tidemark
// serve --platform kube` builds them (service.Build), on a real embedded NATS server and
// the shared kube-apiserver, with an application in a fresh namespace:
// StatefulSet db (3 replicas, a claim template data, so PVCs data-db-0..2
// on a CSI driver with a VolumeSnapshotClass) bound by annotation to the
// Blueprint object scale-and-snapshot.
//
// There is no kubelet, controller-manager or CSI driver here: tests/kube's
// TEST-ONLY stand-ins play the StatefulSet controller (pods appear and go
// with the replica count) and the CSI snapshot controller (VolumeSnapshots
// become readyToUse, or report status.error). No data mover runs: exports
// need mover pods, which need a kubelet, so these tests follow a run up to
// the point where it asks for its exports.
type kubeSystem struct {
	t     *testing.T
	env   *bustest.Env
	p     *kube.Platform
	ns    string
	snaps *kubetest.SnapshotStandIn
}

const scaleAndSnapshot = `
apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: scale-and-snapshot}
spec:
  actions:
    backup:
      # The StatefulSet named in the template context when the run started;
      # the inverse is rendered after the pods are gone, from the same context.
      - name: stop
        kind: scale
        scale: {workload: "statefulset/{{ .StatefulSet.Name }}", replicas: 0}
        timeout: 30s
        inverse:
          kind: scale
          timeout: 30s
          scale: {workload: "statefulset/{{ .Object.metadata.name }}", replicas: "{{ .Steps.stop.Output.originalReplicas }}"}
      - name: snap
        kind: snapshot
    restore:
      - name: snap
        kind: snapshot
`

func newKubeSystem(t *testing.T) *kubeSystem {
	t.Helper()
	cfg := kubetest.Config(t)
	c, err := kube.NewClients(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &kubeSystem{t: t, env: bustest.Start(t), p: kube.New(c, kube.WithPollInterval(20*time.Millisecond)), ns: fmt.Sprintf("coord%d", kubeNS.Add(1))}
	ctx := context.Background()
	core := c.Core
	if _, err := core.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// No controller-manager makes the default ServiceAccount pods need.
	if _, err := core.CoreV1().ServiceAccounts(s.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.installBlueprintCRD()
	driver := s.ns + ".csi.tidemark.test"
	class := &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: s.ns, Annotations: map[string]string{kube.AnnotationDefaultSnapshotClass: "true"}}, Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
	if _, err := c.Snapshots.SnapshotV1().VolumeSnapshotClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		s.boundPVC(fmt.Sprintf("data-db-%d", i), driver)
	}
	replicas := int32(3)
	labels := map[string]string{"app": "db"}
	_, err = core.AppsV1().StatefulSets(s.ns).Create(ctx, &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Labels: labels, Annotations: map[string]string{kube.AnnotationBlueprint: "scale-and-snapshot"}},
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
	s.createBlueprint(scaleAndSnapshot)
	kubetest.StartWorkloadStandIn(t, cfg, s.ns)
	s.snaps = kubetest.StartSnapshotStandIn(t, cfg)
	s.waitFor("the 3 pods of db", func() bool { return s.pods() == 3 })
	s.start()
	return s
}

// start builds the services exactly as `tidemark serve --platform kube
// --services coordinator,hookrunner,snapshotter` does (service.Build: the
// wiring in services/*/register.go) and runs them until the test ends.
func (s *kubeSystem) start() {
	t := s.t
	svcs, err := service.Build([]string{coordinator.Name, hookrunner.Name, snapshotter.Name}, service.Deps{
		Bus: s.env.Bus, Logger: testLogger(), DataDir: t.TempDir(), AppsDir: t.TempDir(), InstanceID: "kube-test",
		Platform: service.PlatformKube, Kube: s.p,
		Coordinator: service.CoordinatorTuning{AnswerGrace: time.Second, InverseTimeout: 30 * time.Second, ExportTimeout: time.Hour},
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
		case <-time.After(30 * time.Second):
			t.Error("the services did not stop")
		}
	})
}

func (s *kubeSystem) installBlueprintCRD() {
	s.t.Helper()
	b, err := os.ReadFile("../../deploy/crds/tidemark.io_blueprints.yaml")
	if err != nil {
		s.t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		s.t.Fatal(err)
	}
	// Shared by every test of the apiserver: apply, not create.
	if _, err := s.p.Apply(context.Background(), "", kube.ApplySpec{Object: m}); err != nil {
		s.t.Fatal(err)
	}
	s.waitFor("the Blueprint CRD to be served", func() bool {
		s.p.Clients().Mapper.Reset()
		_, err := s.p.Clients().Mapper.RESTMapping(schema.GroupKind{Group: "tidemark.io", Kind: "Blueprint"})
		return err == nil
	})
}

func (s *kubeSystem) createBlueprint(src string) {
	s.t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(src), &m); err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.p.Clients().Dynamic.Resource(kube.BlueprintGVR).Namespace(s.ns).Create(context.Background(), &unstructured.Unstructured{Object: m}, metav1.CreateOptions{}); err != nil {
		s.t.Fatal(err)
	}
}

// boundPVC creates a CSI PersistentVolume and a claim bound to it (what
// a provisioner and the PV controller would do).
func (s *kubeSystem) boundPVC(name, driver string) {
	s.t.Helper()
	ctx := context.Background()
	size := resource.MustParse("1Gi")
	pv := s.ns + "-" + name
	_, err := s.p.Clients().Core.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pv},
		Spec: corev1.PersistentVolumeSpec{
			Capacity: corev1.ResourceList{corev1.ResourceStorage: size}, AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: pv}},
			ClaimRef:               &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: s.ns, Name: name},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	_, err = s.p.Clients().Core.CoreV1().PersistentVolumeClaims(s.ns).Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, VolumeName: pv,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
}

func (s *kubeSystem) waitFor(what string, cond func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			s.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *kubeSystem) statefulSet() *appsv1.StatefulSet {
	s.t.Helper()
	st, err := s.p.Clients().Core.AppsV1().StatefulSets(s.ns).Get(context.Background(), "db", metav1.GetOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	return st
}

func (s *kubeSystem) pods() int {
	s.t.Helper()
	l, err := s.p.Clients().Core.CoreV1().Pods(s.ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=db"})
	if err != nil {
		s.t.Fatal(err)
	}
	return len(l.Items)
}

func (s *kubeSystem) volumeSnapshots() []snapv1.VolumeSnapshot {
	s.t.Helper()
	l, err := s.p.Clients().Snapshots.SnapshotV1().VolumeSnapshots(s.ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	return l.Items
}

// request publishes a backup request and returns its answer: accepted or rejected.
func (s *kubeSystem) request(app string) events.Event {
	s.t.Helper()
	ev := events.New("tidemark/test", app, events.BackupRequested{Application: app, RequestedBy: "test"}, time.Now())
	s.env.Publish(s.t, ev)
	return s.env.WaitFor(s.t, 60*time.Second, "backup.accepted or rejected for "+app, func(e events.Event) bool {
		_, a := events.As[events.BackupAccepted](e)
		_, r := events.As[events.BackupRejected](e)
		return e.CausationID == ev.ID && (a || r)
	})
}

func (s *kubeSystem) backup(app string) events.RunID {
	s.t.Helper()
	ev := s.request(app)
	acc, ok := events.As[events.BackupAccepted](ev)
	if !ok {
		s.t.Fatalf("backup of %s: %+v", app, ev.Data)
	}
	s.t.Cleanup(func() {
		if s.t.Failed() {
			s.t.Logf("run %s history:\n%s", acc.RunID, history(s.run(acc.RunID)))
		}
	})
	return acc.RunID
}

func (s *kubeSystem) run(id events.RunID) coordinator.Run {
	kv, err := s.env.Bus.KeyValue(context.Background(), bus.BucketRuns)
	if err != nil {
		s.t.Fatal(err)
	}
	r, _ := coordinator.LoadRun(context.Background(), kv, id)
	return r
}

func task(r coordinator.Run, key string) *coordinator.Task {
	for _, t := range r.Tasks {
		if t.Key == key {
			return t
		}
	}
	return nil
}

// A backup of a StatefulSet named NAMESPACE/NAME: its blueprint comes from
// the annotation (a Blueprint object), the StatefulSet is scaled to 0 and
// stays so while its PVCs are snapshotted, is scaled back to 3 once the
// snapshots are ready, and the run then asks for one export per PVC.
func TestKubeBackupScalesDownSnapshotsAndScalesBackUp(t *testing.T) {
	s := newKubeSystem(t)
	// A slow CSI driver: the snapshots stay pending until released, so
	// what the application looks like during them can be seen.
	s.snaps.Hold()
	id := s.backup(s.ns + "/db")

	s.waitFor("the run's 3 VolumeSnapshots", func() bool { return len(s.volumeSnapshots()) == 3 })
	if st := s.statefulSet(); *st.Spec.Replicas != 0 || s.pods() != 0 || st.Annotations[kube.AnnotationScaledFrom] != "3" {
		t.Fatalf("while the snapshots are cut: replicas %d, %d pods, annotations %v; want the StatefulSet stopped", *st.Spec.Replicas, s.pods(), st.Annotations)
	}
	s.snaps.Release()

	var r coordinator.Run
	s.waitFor("the run to ask for its exports", func() bool {
		r = s.run(id)
		return r.Stage == coordinator.StageExport || r.Status.Terminal()
	})
	if r.Status != coordinator.StatusRunning || r.Blueprint != "scale-and-snapshot" {
		t.Fatalf("run %s/%s with blueprint %q: %s", r.Status, r.Stage, r.Blueprint, r.Cause)
	}
	if st := s.statefulSet(); *st.Spec.Replicas != 3 || st.Status.ReadyReplicas != 3 || s.pods() != 3 || st.Annotations[kube.AnnotationScaledFrom] != "" {
		t.Errorf("before the exports: replicas %d (ready %d), %d pods, annotations %v; want the StatefulSet back at 3", *st.Spec.Replicas, st.Status.ReadyReplicas, s.pods(), st.Annotations)
	}
	if stop := task(r, "step/stop"); stop == nil || stop.Outputs[kube.OutputOriginalReplicas] != "3" {
		t.Errorf("step stop: %+v, want originalReplicas 3", stop)
	}
	if inv := task(r, "inverse/stop"); inv == nil || inv.State != coordinator.TaskSucceeded {
		t.Errorf("inverse of stop: %+v", inv)
	}
	if r.FreezeStart == nil || r.FreezeEnd == nil {
		t.Errorf("freeze window %v..%v, want both ends recorded", r.FreezeStart, r.FreezeEnd)
	}

	// One CSI snapshot per PVC, each exported by its id.
	byPVC := map[string]snapv1.VolumeSnapshot{}
	for _, vs := range s.volumeSnapshots() {
		if vs.Labels[kube.LabelRunID] != string(id) || vs.Status == nil || vs.Status.ReadyToUse == nil || !*vs.Status.ReadyToUse {
			t.Errorf("VolumeSnapshot %s: labels %v, status %+v", vs.Name, vs.Labels, vs.Status)
		}
		byPVC[*vs.Spec.Source.PersistentVolumeClaimName] = vs
	}
	var volumes []string
	for _, sn := range r.Snapshots {
		volumes = append(volumes, sn.Volume)
		vs, ok := byPVC[sn.Volume]
		if sn.Method != "csi" || !ok || string(sn.SnapshotID) != s.ns+"/"+vs.Name {
			t.Errorf("snapshot %+v: want the CSI VolumeSnapshot of PVC %s", sn, sn.Volume)
		}
		exp := task(r, "export/"+sn.Volume)
		var req events.VolumeExportRequested
		if exp == nil || json.Unmarshal(exp.Command, &req) != nil || exp.State != coordinator.TaskSent || req.SnapshotID != sn.SnapshotID {
			t.Errorf("export of %s: %+v", sn.Volume, exp)
		}
	}
	slices.Sort(volumes)
	if !slices.Equal(volumes, []string{"data-db-0", "data-db-1", "data-db-2"}) {
		t.Errorf("snapshotted volumes %v, want the 3 PVCs of db", volumes)
	}

	// No data mover here: cancel, and the run's snapshots are deleted.
	s.env.Publish(t, events.New("tidemark/test", string(id), events.RunCancelRequested{RunID: id, RequestedBy: "test", Reason: "no data mover in this test"}, time.Now()))
	s.env.WaitFor(t, 60*time.Second, "backup.cancelled", func(e events.Event) bool {
		c, ok := events.As[events.BackupCancelled](e)
		return ok && c.RunID == id
	})
	s.waitFor("the run's VolumeSnapshots to be deleted", func() bool { return len(s.volumeSnapshots()) == 0 })
	if st := s.statefulSet(); *st.Spec.Replicas != 3 {
		t.Errorf("after the cancel: replicas %d", *st.Spec.Replicas)
	}
}

// The CSI driver fails to cut one PVC's snapshot after the StatefulSet
// was scaled down: the run fails with the driver's message, and the
// inverse scales the StatefulSet back to its 3 replicas.
func TestKubeSnapshotFailureScalesTheStatefulSetBackUp(t *testing.T) {
	s := newKubeSystem(t)
	pvcs := s.p.Clients().Core.CoreV1().PersistentVolumeClaims(s.ns)
	pvc, err := pvcs.Get(context.Background(), "data-db-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pvc.Annotations = map[string]string{kubetest.AnnotationSnapshotError: "rpc error: code = Internal desc = disk array unreachable"}
	if _, err := pvcs.Update(context.Background(), pvc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	id := s.backup(s.ns + "/statefulset/db")
	ev := s.env.WaitFor(t, 90*time.Second, "the end of run "+string(id), func(e events.Event) bool {
		f, failed := events.As[events.BackupFailed](e)
		_, done := events.As[events.RestorePointRecorded](e)
		return (failed && f.RunID == id) || done
	})
	f, ok := events.As[events.BackupFailed](ev)
	if !ok || !strings.Contains(f.Reason, "disk array unreachable") || f.FailedStep != "snap" {
		t.Fatalf("outcome %+v, want backup.failed at snap with the driver's error", ev.Data)
	}
	if len(f.Compensations) != 1 || f.Compensations[0].Outcome != "succeeded" {
		t.Errorf("compensations %+v, want the scale-up inverse, succeeded", f.Compensations)
	}
	if st := s.statefulSet(); *st.Spec.Replicas != 3 || st.Status.ReadyReplicas != 3 || s.pods() != 3 || st.Annotations[kube.AnnotationScaledFrom] != "" {
		t.Errorf("after the failure: replicas %d (ready %d), %d pods, annotations %v; want the StatefulSet back at 3", *st.Spec.Replicas, st.Status.ReadyReplicas, s.pods(), st.Annotations)
	}
	if left := s.volumeSnapshots(); len(left) != 0 {
		t.Errorf("%d VolumeSnapshots left after the failed run", len(left))
	}
	if r := s.run(id); r.Status != coordinator.StatusFailed || len(r.Unresolved) != 0 || r.Frozen() {
		t.Errorf("run %s, unresolved %v, frozen %v", r.Status, r.Unresolved, r.Frozen())
	}
}

// A request whose application cannot be found or has no usable blueprint
// is rejected before anything runs, saying what is missing and the fix.
func TestKubeBackupRejectionsNameTheFix(t *testing.T) {
	s := newKubeSystem(t)
	ctx := context.Background()
	core := s.p.Clients().Core
	for _, name := range []string{"plain", "lost"} {
		labels := map[string]string{"app": name}
		st := &appsv1.StatefulSet{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
			Spec: appsv1.StatefulSetSpec{ServiceName: name, Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}}}},
		}
		if name == "lost" {
			st.Annotations = map[string]string{kube.AnnotationKanisterBlueprint: "mongo-hooks"}
		}
		if _, err := core.AppsV1().StatefulSets(s.ns).Create(ctx, st, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ app, want string }{
		{"no-such-ns/db", `namespace "no-such-ns" does not exist`},
		{s.ns + "/nope", `no StatefulSet or Deployment called "nope"`},
		{s.ns + "/plain", "no blueprint named: bind one to the application (spec.blueprint in its Application file; on Kubernetes, the annotation tidemark.io/blueprint"},
		{s.ns + "/lost", `names blueprint "mongo-hooks" (annotation kanister.kasten.io/blueprint), but there is no Blueprint "mongo-hooks" in namespace ` + s.ns},
		{s.ns + ":app=nothing", `label selector "app=nothing" matches nothing`},
		{s.ns + "/a/b/c", "NAMESPACE, NAMESPACE:SELECTOR, NAMESPACE/NAME or NAMESPACE/KIND/NAME"},
	} {
		ev := s.request(tc.app)
		r, ok := events.As[events.BackupRejected](ev)
		if !ok || !strings.Contains(r.Reason, tc.want) {
			t.Errorf("%s: %+v, want a rejection saying %q", tc.app, ev.Data, tc.want)
		}
	}
	if st := s.statefulSet(); *st.Spec.Replicas != 3 {
		t.Errorf("a rejected request changed the application: replicas %d", *st.Spec.Replicas)
	}
}

// The scale-down acts and then fails: one pod never goes away (a
// finalizer holds it), so the step's wait times out after the StatefulSet
// was set to 0 replicas. hook.failed carries what the step changed
// (originalReplicas), and the inverse, which needs it, still scales the
// StatefulSet back to 3.
func TestKubeScaleThatActedThenFailedIsUndone(t *testing.T) {
	s := newKubeSystem(t)
	ctx := context.Background()
	blueprints := s.p.Clients().Dynamic.Resource(kube.BlueprintGVR).Namespace(s.ns)
	if err := blueprints.Delete(ctx, "scale-and-snapshot", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	s.createBlueprint(strings.Replace(scaleAndSnapshot, "timeout: 30s\n        inverse:", "timeout: 2s\n        inverse:", 1))
	pods := s.p.Clients().Core.CoreV1().Pods(s.ns)
	held, err := pods.Get(ctx, "db-2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const finalizer = "tidemark.test/hold"
	held.Finalizers = append(held.Finalizers, finalizer)
	if _, err := pods.Update(ctx, held, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p, err := pods.Get(ctx, "db-2", metav1.GetOptions{})
		if err != nil {
			return
		}
		p.Finalizers = nil
		_, _ = pods.Update(ctx, p, metav1.UpdateOptions{})
	})

	id := s.backup(s.ns + "/statefulset/db")
	ev := s.env.WaitFor(t, 90*time.Second, "the end of run "+string(id), func(e events.Event) bool {
		f, failed := events.As[events.BackupFailed](e)
		_, done := events.As[events.RestorePointRecorded](e)
		return (failed && f.RunID == id) || done
	})
	f, ok := events.As[events.BackupFailed](ev)
	if !ok || f.FailedStep != "stop" || !strings.Contains(f.Reason, "db-2") {
		t.Fatalf("outcome %+v, want backup.failed at stop naming the pod that stayed", ev.Data)
	}
	if len(f.Compensations) != 1 || f.Compensations[0].Outcome != "succeeded" {
		t.Errorf("compensations %+v, want the scale-up inverse, succeeded", f.Compensations)
	}
	if st := s.statefulSet(); *st.Spec.Replicas != 3 || st.Annotations[kube.AnnotationScaledFrom] != "" {
		t.Errorf("after the failure: replicas %d, annotations %v; want the StatefulSet back at 3", *st.Spec.Replicas, st.Annotations)
	}
	if stop := task(s.run(id), "step/stop"); stop == nil || stop.Outputs[kube.OutputOriginalReplicas] != "3" {
		t.Errorf("the failed step's task %+v: want the originalReplicas it reported", stop)
	}
}

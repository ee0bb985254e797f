//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/yaml"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"github.com/tidemark-dev/tidemark/pkg/platform"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/services/catalog"
)

// tickerBlueprint quiesces the ticker (below) with exec steps in its pod:
// freeze asks the writer to stop and waits until it has (between two
// rows, so both volumes end at the same row), flush syncs; the freeze's
// inverse, run right after the snapshot of both volumes, is the thaw.
const tickerBlueprint = `
apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata:
  name: ticker
  annotations:
    tidemark.io/description: A writer of numbered rows, paused between two rows while its volumes are snapshotted.
spec:
  maxFreeze: 60s
  actions:
    backup:
      - name: freeze
        kind: exec
        exec:
          target: '{{ index .StatefulSet.Pods 0 }}'
          command:
            - sh
            - -c
            - |
              rm -f /tmp/frozen
              touch /tmp/freeze
              until [ -e /tmp/frozen ]; do sleep 0.01; done
              echo "lastRow=$(tail -n 1 /data/rows)"
        outputs: [lastRow]
        timeout: 30s
        inverse:
          name: thaw
          kind: exec
          exec:
            target: '{{ index .StatefulSet.Pods 0 }}'
            command: [sh, -c, 'rm -f /tmp/freeze /tmp/frozen']
      - name: flush
        kind: exec
        exec:
          target: '{{ index .StatefulSet.Pods 0 }}'
          command: [sync]
        noInverse: only writes dirty pages back
      - name: snapshot
        kind: snapshot
    restore:
      - name: snapshot
        kind: snapshot
`

// tickerScript appends row numbers to /data/rows and /logs/rows, one row
// to both every ~10 ms, counting on from what the volumes hold, and stops
// between two rows while /tmp/freeze exists (saying so with /tmp/frozen).
// It first writes 8 MiB of random data, so the repository gets more than
// a few kilobytes to deduplicate and compress.
const tickerScript = `
[ -f /data/blob ] || dd if=/dev/urandom of=/data/blob bs=1M count=8 2>/dev/null
i=0
[ -f /data/rows ] && i=$(wc -l < /data/rows)
while true; do
  if [ -e /tmp/freeze ]; then
    touch /tmp/frozen
    sleep 0.01
    continue
  fi
  rm -f /tmp/frozen
  i=$((i+1))
  echo "$i" >> /data/rows
  echo "$i" >> /logs/rows
  sleep 0.01
done
`

// TestBackupThroughMoverPods is the first backup end to end on the real
// cluster: a StatefulSet writing rows to two volumes, bound by annotation
// to a Blueprint object in its namespace; a backup.requested published to
// the cluster's NATS as users do; the coordinator resolves the application
// in the cluster, the hookrunner freezes the writer through pods/exec, the
// snapshotter takes one VolumeGroupSnapshot of both PVCs, the thaw runs,
// and the data mover exports each volume in a mover pod that writes the
// S3 repository itself; the catalog records the restore point. Then: the
// freeze window is reported, the writer resumed, the mover pods, their
// PVCs and Secrets and every snapshot are gone, and the repository in S3,
// opened from here, restores both volumes exactly as they were at the
// freeze: the rows a gap-free prefix ending at the row the freeze step saw.
func TestBackupThroughMoverPods(t *testing.T) {
	c := tidemark(t)
	start := time.Now()
	ns := c.testNamespace(t, "e2e-backup-")
	ctx := context.Background()
	c.tickerApp(t, ns)
	setup := time.Since(start)

	movers := c.watchMovers(t, ns)
	nb := connectBus(t, c)
	app := ns + "/ticker"
	req := events.New("tidemark/e2e", app, events.BackupRequested{Application: app, RequestedBy: "e2e"}, time.Now())
	sent := time.Now()
	nb.Publish(t, req)
	ev := nb.WaitFor(t, time.Minute, "backup.accepted or backup.rejected of "+app, func(ev events.Event) bool {
		if _, ok := events.As[events.BackupAccepted](ev); ok {
			return ev.CausationID == req.ID
		}
		_, ok := events.As[events.BackupRejected](ev)
		return ok && ev.CausationID == req.ID
	})
	if r, ok := events.As[events.BackupRejected](ev); ok {
		t.Fatalf("backup.rejected: %s", r.Reason)
	}
	accepted, _ := events.As[events.BackupAccepted](ev)
	run := accepted.RunID
	if accepted.Blueprint != "ticker" {
		t.Errorf("the run's blueprint is %q, want the Blueprint object ticker its annotation names", accepted.Blueprint)
	}
	t.Logf("run %s accepted %v after the publish; steps %v", run, time.Since(sent).Round(time.Millisecond), accepted.Steps)

	ev = nb.WaitFor(t, 5*time.Minute, "backup.completed or backup.failed of "+string(run), func(ev events.Event) bool {
		if p, ok := events.As[events.BackupCompleted](ev); ok {
			return p.RunID == run
		}
		p, ok := events.As[events.BackupFailed](ev)
		return ok && p.RunID == run
	})
	if f, ok := events.As[events.BackupFailed](ev); ok {
		t.Fatalf("backup.failed: %s (step %q, compensations %+v)\n%s\n%s", f.Reason, f.FailedStep, f.Compensations,
			c.podReport(ctx, ns), c.serviceLogs(ctx, 40, "datamover", "coordinator"))
	}
	done, _ := events.As[events.BackupCompleted](ev)
	took := time.Since(sent)

	// What the run reports.
	if done.FreezeWindow <= 0 || done.FreezeWindow.Std() > time.Minute {
		t.Errorf("freeze window %v, want a positive duration within the blueprint's maxFreeze (60s)", done.FreezeWindow.Std())
	}
	if done.Consistency != "application" {
		t.Errorf("consistency %q, want application (quiesced)", done.Consistency)
	}
	lastRow, err := strconv.Atoi(done.StepOutputs["freeze"]["lastRow"])
	if err != nil || lastRow < 1 {
		t.Fatalf("step outputs %v: want the freeze step's lastRow, a row number", done.StepOutputs)
	}
	// One artifact per PVC; the application's objects may come along as
	// one more (kube.ManifestArtifact), checked below.
	vols := []string{"data-ticker-0", "logs-ticker-0"}
	var volumes []events.Artifact
	var names []string
	for _, a := range done.Artifacts {
		if a.Kind != "volume" {
			continue
		}
		volumes = append(volumes, a)
		names = append(names, a.Name)
		if a.ManifestID == "" || a.Bytes <= 0 {
			t.Errorf("artifact %+v: want a volume with a snapshot in the repository", a)
		}
	}
	if !slices.Equal(names, vols) {
		t.Fatalf("volume artifacts %v (of %+v), want the two PVCs %v", names, done.Artifacts, vols)
	}
	t.Logf("backup.completed %v after the publish: freeze window %v, %d bytes read, %d uploaded, frozen at row %d",
		took.Round(time.Millisecond), done.FreezeWindow.Std().Round(time.Millisecond), done.BytesRead, done.BytesUploaded, lastRow)
	c.logTimeline(t, nb.Facts(), run, sent)
	// The window reported must cover the freeze as the hookrunner's own
	// clock saw it: from the freeze step's start to the thaw's end.
	freeze, ok1 := hookOf(nb.Facts(), run, "freeze")
	thaw, ok2 := hookOf(nb.Facts(), run, "thaw")
	if !ok1 || !ok2 {
		t.Errorf("hook.succeeded of freeze %v and of its inverse thaw %v, want both", ok1, ok2)
	} else {
		held := thaw.FinishedAt.Sub(freeze.StartedAt)
		if done.FreezeWindow.Std() < held {
			t.Errorf("freeze window reported %v, shorter than the freeze itself (%v from the freeze step's start to the thaw's end)", done.FreezeWindow.Std(), held)
		}
		t.Logf("freeze window reported %v; the freeze step's start to the thaw's end %v", done.FreezeWindow.Std().Round(time.Millisecond), held.Round(time.Millisecond))
	}
	for _, f := range nb.Facts() {
		if x, ok := events.As[events.VolumeExported](f); ok && x.RunID == run {
			t.Logf("volume.exported %s: %d files, %d bytes (%d uploaded) in %v", x.Volume, x.Files, x.Bytes, x.BytesUploaded, x.FinishedAt.Sub(x.StartedAt).Round(time.Millisecond))
		}
		if x, ok := events.As[events.SnapshotReady](f); ok && x.RunID == run {
			if x.Group == nil || x.Group.SnapshotID == "" {
				t.Errorf("snapshot.ready group %+v, want one VolumeGroupSnapshot of both volumes", x.Group)
			}
			for _, s := range x.Snapshots {
				if s.Method != platform.MethodCSI {
					t.Errorf("snapshot of %s by %q, want a CSI snapshot", s.Volume, s.Method)
				}
			}
		}
	}

	rp := nb.WaitFor(t, time.Minute, "restorepoint.recorded of "+string(run), func(ev events.Event) bool {
		p, ok := events.As[events.RestorePointRecorded](ev)
		return ok && p.RunID == run
	})
	recorded, _ := events.As[events.RestorePointRecorded](rp)
	if recorded.RestorePointID != done.RestorePointID || recorded.Application != app || recorded.Consistency != "application" ||
		!slices.Equal(recorded.Artifacts, done.Artifacts) {
		t.Errorf("restorepoint.recorded %+v, want restore point %s of %s, application-consistent, with the run's artifacts", recorded, done.RestorePointID, app)
	}

	// Every volume moved in a mover pod of its own, which succeeded; the
	// pods, their PVCs and their Secrets are gone, and so are the snapshots.
	seen := movers.stop()
	var moved []string
	for _, m := range seen {
		moved = append(moved, m.volume)
		if m.phase != corev1.PodSucceeded {
			t.Errorf("mover pod %s of %s last seen %s, want Succeeded", m.name, m.volume, m.phase)
		}
		if m.leaks {
			t.Errorf("mover pod %s has a repository credential in its spec; it must only be a file of its Secret", m.name)
		}
	}
	slices.Sort(moved)
	if !slices.Equal(moved, vols) {
		t.Errorf("mover pods seen for %v, want one per volume %v (%+v)", moved, vols, seen)
	}
	gone := time.Now()
	c.noRunLeftovers(t, ns)
	t.Logf("mover pods %v; they, their PVCs and Secrets, and the snapshots gone %v after backup.completed was seen", seen, time.Since(gone).Round(time.Millisecond))

	// No credential in the run's events or the logs of the services that
	// hold them.
	secrets := c.secretValues()
	for _, f := range nb.Facts() {
		if b, err := json.Marshal(f); err == nil && containsAny(string(b), secrets) {
			t.Errorf("event %s (%s) holds a repository credential", f.ID, f.Type())
		}
	}
	for _, svc := range []string{"datamover", "catalog"} {
		if logs := c.serviceLogs(ctx, 0, svc); containsAny(logs, secrets) {
			t.Errorf("the %s's log holds a repository credential", svc)
		}
	}

	// The thaw ran: the writer went on past the frozen row.
	exec := &kube.Executor{Platform: c.platform(t), Namespace: ns}
	live := 0
	why, err := poll(ctx, 30*time.Second, func() (bool, string) {
		res, err := exec.Exec(ctx, platform.ExecRequest{Spec: blueprint.ExecSpec{Target: "ticker-0", Command: []string{"tail", "-n", "1", "/data/rows"}}})
		if err != nil {
			return false, err.Error()
		}
		live, _ = strconv.Atoi(strings.TrimSpace(string(res.StdoutTail)))
		return live > lastRow, fmt.Sprintf("last row %d", live)
	})
	if err != nil {
		t.Errorf("the writer after the backup: %v: %s, want past the frozen row %d", err, why, lastRow)
	}
	res, err := exec.Exec(ctx, platform.ExecRequest{Spec: blueprint.ExecSpec{Target: "ticker-0", Command: []string{"sha256sum", "/data/blob"}}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("sha256sum /data/blob in the pod: %v %+v", err, res)
	}
	blobSum, _, _ := strings.Cut(string(res.StdoutTail), " ")

	// The repository in S3 holds both volumes as they were at the freeze,
	// and the catalog's record of the restore point.
	restoreStart := time.Now()
	repo := c.openRepository(t)
	for _, a := range volumes {
		dir := filepath.Join(t.TempDir(), a.Name)
		ir, err := repo.ImportDir(ctx, string(a.ManifestID), dir, nil)
		if err != nil {
			t.Fatalf("restoring %s (snapshot %s) from S3: %v", a.Name, a.ManifestID, err)
		}
		if n := rowsPrefix(t, filepath.Join(dir, "rows")); n != lastRow {
			t.Errorf("%s: rows 1..%d restored, want 1..%d (the row the freeze step saw)", a.Name, n, lastRow)
		}
		if a.Name == "data-ticker-0" {
			if got := fileSum(t, filepath.Join(dir, "blob")); got != blobSum {
				t.Errorf("%s: blob restored with sha256 %s, the pod's is %s", a.Name, got, blobSum)
			}
		}
		t.Logf("restored %s from S3: %d files, %d bytes", a.Name, ir.Files, ir.Bytes)
	}
	for _, a := range done.Artifacts {
		if a.Name != kube.ManifestArtifact {
			continue
		}
		var bundle bytes.Buffer
		if _, err := repo.ImportStream(ctx, string(a.ManifestID), &bundle, nil); err != nil {
			t.Fatalf("restoring %s from S3: %v", a.Name, err)
		}
		objs, err := kube.ParseManifests(bundle.Bytes())
		if err != nil {
			t.Fatalf("%s restored from S3: %v", a.Name, err)
		}
		if !slices.ContainsFunc(objs, func(o *unstructured.Unstructured) bool {
			return o.GetKind() == "StatefulSet" && o.GetName() == "ticker" && o.GetNamespace() == ns
		}) {
			t.Errorf("%s restored from S3 holds %d objects but not the StatefulSet %s/ticker", a.Name, len(objs), ns)
		}
		t.Logf("restored %s from S3: %d objects", a.Name, len(objs))
	}
	why, err = poll(ctx, time.Minute, func() (bool, string) {
		recs, err := repo.Records(ctx, catalog.RecordKind)
		if err != nil {
			return false, err.Error()
		}
		for _, r := range recs {
			if r.ID == string(done.RestorePointID) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d restore point records, none of %s", len(recs), done.RestorePointID)
	})
	if err != nil {
		t.Errorf("the catalog's record in the repository: %v: %s", err, why)
	}
	t.Logf("both volumes restored from S3 and checked in %v; test %v (namespace and application %v)",
		time.Since(restoreStart).Round(time.Millisecond), time.Since(start).Round(time.Millisecond), setup.Round(time.Millisecond))
}

// tickerApp creates the application in ns: the Blueprint object ticker,
// and the StatefulSet ticker annotated with it (one pod, PVCs data and
// logs from the test CSI driver), and waits until it writes.
func (c *cluster) tickerApp(t *testing.T, ns string) {
	t.Helper()
	ctx := context.Background()
	var bp map[string]any
	if err := yaml.Unmarshal([]byte(tickerBlueprint), &bp); err != nil {
		t.Fatal(err)
	}
	if _, err := c.dyn.Resource(kube.BlueprintGVR).Namespace(ns).Create(ctx, &unstructured.Unstructured{Object: bp}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("Blueprint ticker: %v", err)
	}
	labels := map[string]string{"app": "ticker"}
	if _, err := c.core.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "ticker", Labels: labels},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: labels},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	one, grace := int32(1), int64(1)
	_, err := c.core.AppsV1().StatefulSets(ns).Create(ctx, &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "ticker", Labels: labels, Annotations: map[string]string{kube.AnnotationBlueprint: "ticker"}},
		Spec: appsv1.StatefulSetSpec{
			Replicas: &one, ServiceName: "ticker", Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					Containers: []corev1.Container{{
						Name: "ticker", Image: busyboxImage, ImagePullPolicy: corev1.PullNever,
						Command: []string{"sh", "-c", tickerScript},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"test", "-s", "/logs/rows"}}},
							PeriodSeconds: 1,
						},
						VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}, {Name: "logs", MountPath: "/logs"}},
					}},
				},
			},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{testClaim("data"), testClaim("logs")},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.waitPodReady(t, ns, "ticker-0", 2*time.Minute)
}

// platform is the Kubernetes platform of pkg/platform/kube on the test
// cluster, with the test's (admin) credentials.
func (c *cluster) platform(t *testing.T) *kube.Platform {
	t.Helper()
	cl, err := kube.NewClients(c.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return kube.New(cl)
}

// moverPod is what was seen of one mover pod.
type moverPod struct {
	name, volume string
	phase        corev1.PodPhase
	// leaks: its spec held a repository credential (it must reach the
	// pod only as a file of the pod's Secret).
	leaks bool
}

func (m moverPod) String() string { return m.name + ":" + string(m.phase) }

type moverWatch struct {
	stop func() []moverPod
}

// watchMovers records the mover pods of ns, and the last phase each was
// seen in, from now until stop: they are deleted as soon as they end.
func (c *cluster) watchMovers(t *testing.T, ns string) moverWatch {
	secrets := c.secretValues()
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := c.core.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: kube.LabelComponent + "=" + kube.ComponentMover})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		seen = map[string]*moverPod{}
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type == watch.Error {
				continue
			}
			mu.Lock()
			m := seen[p.Name]
			if m == nil {
				m = &moverPod{name: p.Name, volume: p.Labels[kube.LabelVolume]}
				seen[p.Name] = m
			}
			if p.Status.Phase != "" {
				m.phase = p.Status.Phase
			}
			if spec, err := json.Marshal(p.Spec); err == nil && containsAny(string(spec), secrets) {
				m.leaks = true
			}
			mu.Unlock()
		}
	}()
	var once sync.Once
	var out []moverPod
	stop := func() []moverPod {
		once.Do(func() {
			cancel()
			w.Stop()
			<-done
			for _, m := range seen {
				out = append(out, *m)
			}
			slices.SortFunc(out, func(a, b moverPod) int { return strings.Compare(a.name, b.name) })
		})
		return out
	}
	t.Cleanup(func() { stop() })
	return moverWatch{stop: stop}
}

// rowsPrefix checks that the file holds the rows 1..n, one per line, and
// returns n.
func rowsPrefix(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if sc.Text() != strconv.Itoa(n+1) {
			t.Fatalf("%s: line %d is %q, want %d: the rows are not a gap-free prefix", path, n+1, sc.Text(), n+1)
		}
		n++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// hookOf is the hook.succeeded of a run's step.
func hookOf(facts []events.Event, run events.RunID, step string) (events.HookSucceeded, bool) {
	for _, f := range facts {
		if p, ok := events.As[events.HookSucceeded](f); ok && p.RunID == run && p.Step == step {
			return p, true
		}
	}
	return events.HookSucceeded{}, false
}

// logTimeline logs the run's facts in order, each with when it was
// published after from: what each phase of the run took.
func (c *cluster) logTimeline(t *testing.T, facts []events.Event, run events.RunID, from time.Time) {
	t.Helper()
	var b strings.Builder
	for _, f := range facts {
		if f.CorrelationID != string(run) {
			continue
		}
		what := strings.TrimSuffix(strings.TrimPrefix(string(f.Type()), "io.tidemark."), ".v1")
		if p, ok := events.As[events.HookSucceeded](f); ok {
			what += fmt.Sprintf(" %s (ran from +%.3fs)", p.Step, p.StartedAt.Sub(from).Seconds())
		}
		if p, ok := events.As[events.VolumeExported](f); ok {
			what += " " + p.Volume
		}
		fmt.Fprintf(&b, "\n  +%7.3fs %s", f.Time.Sub(from).Seconds(), what)
	}
	t.Logf("the run's facts, after the publish:%s", b.String())
}

// secretValues are the repository's credentials, which no event, log or
// pod spec may hold.
func (c *cluster) secretValues() []string {
	return []string{c.password, c.s3.SecretKey}
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if sub != "" && strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// serviceLogs is the named Tidemark services' logs, their last tail
// lines (all with 0).
func (c *cluster) serviceLogs(ctx context.Context, tail int64, services ...string) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	var b strings.Builder
	for _, s := range services {
		pods, err := c.core.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=" + s})
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", s, err)
			continue
		}
		for _, p := range pods.Items {
			opts := &corev1.PodLogOptions{}
			if tail > 0 {
				opts.TailLines = &tail
			}
			logs, err := c.core.CoreV1().Pods(namespace).GetLogs(p.Name, opts).DoRaw(ctx)
			if err != nil {
				fmt.Fprintf(&b, "%s log: %v\n", p.Name, err)
				continue
			}
			fmt.Fprintf(&b, "--- %s\n%s\n", p.Name, logs)
		}
	}
	return b.String()
}

// testClaim is a 1Gi ReadWriteOnce claim template on the test CSI driver.
func testClaim(name string) corev1.PersistentVolumeClaim {
	sc := storageClass
	return corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: &sc,
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}
}

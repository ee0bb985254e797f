//go:build e2e

package e2e

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/tidemark-dev/tidemark/blueprints"
	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"github.com/tidemark-dev/tidemark/pkg/platform"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/tests/bustest"
)

// The fault tests kill a Tidemark pod at the worst moment of a MariaDB
// backup and check what a user would: the application is not left
// locked, the run ends (compensated, or finished by another pod), and
// nothing of the run is left behind.

// slowBlueprint creates in ns the Blueprint mariadb-slow: the bundled
// Kubernetes mariadb blueprint with a 10 s exec step between the lock and
// the snapshot, so a test can act while the lock is held.
func (c *cluster) slowBlueprint(t *testing.T, ns string) {
	t.Helper()
	data, err := blueprints.Kubernetes.ReadFile("mariadb/blueprint.kube.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var bp map[string]any
	if err := yaml.Unmarshal(data, &bp); err != nil {
		t.Fatal(err)
	}
	md := bp["metadata"].(map[string]any)
	md["name"] = "mariadb-slow"
	delete(md, "description")
	actions := bp["spec"].(map[string]any)["actions"].(map[string]any)
	backup := actions["backup"].([]any)
	pause := map[string]any{"name": "pause", "kind": "exec", "timeout": "60s", "noInverse": "it only waits, so a test can act while the lock is held",
		"exec": map[string]any{"target": "{{ index .Targets 0 }}", "command": []any{"sleep", "10"}}}
	actions["backup"] = append([]any{backup[0], pause}, backup[1:]...)
	if _, err := c.dyn.Resource(kube.BlueprintGVR).Namespace(ns).Create(context.Background(), &unstructured.Unstructured{Object: bp}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("Blueprint mariadb-slow: %v", err)
	}
}

// faultApp is MariaDB with its ticker in a new namespace, bound to
// blueprint, and a connection to it from the test.
func (c *cluster) faultApp(t *testing.T, prefix, blueprint string) (ns string, db *sql.DB) {
	t.Helper()
	ns = c.testNamespace(t, prefix)
	password := randomText(24)
	if blueprint == "mariadb-slow" {
		c.slowBlueprint(t, ns)
	}
	c.mariadbApp(t, ns, password, blueprint)
	c.mariadbTicker(t, ns, password)
	db = c.mariaDB(t, ns, password)
	waitRows(t, db, 50)
	if _, err := db.Exec("CREATE TABLE probe (at DATETIME(6) NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	return ns, db
}

// accepted publishes a backup.requested for app and returns its run.
func accepted(t *testing.T, nb *bustest.Env, app string) events.RunID {
	t.Helper()
	req := events.New("tidemark/e2e", app, events.BackupRequested{Application: app, RequestedBy: "e2e"}, time.Now())
	nb.Publish(t, req)
	ev := nb.WaitFor(t, time.Minute, "backup.accepted of "+app, func(ev events.Event) bool {
		_, ok := events.As[events.BackupAccepted](ev)
		_, rejected := events.As[events.BackupRejected](ev)
		return (ok || rejected) && ev.CausationID == req.ID
	})
	a, ok := events.As[events.BackupAccepted](ev)
	if !ok {
		t.Fatalf("backup of %s: %+v", app, ev.Data)
	}
	return a.RunID
}

// lockHeld waits for the run's lock step to hold FTWRL.
func lockHeld(t *testing.T, nb *bustest.Env, run events.RunID) events.HookSucceeded {
	t.Helper()
	ev := nb.WaitFor(t, time.Minute, "the lock of "+string(run), bustest.Step[events.HookSucceeded](run, "lock"))
	ok, _ := events.As[events.HookSucceeded](ev)
	if !ok.Holding {
		t.Fatalf("lock %+v: not holding", ok)
	}
	return ok
}

// killService deletes the pod of a Tidemark service at once (no grace:
// the process is killed, as when its node fails).
func (c *cluster) killService(t *testing.T, service string) string {
	t.Helper()
	ctx := context.Background()
	pods, err := c.core.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=" + service})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("the %s's pods: %v (%d)", service, err, len(pods.Items))
	}
	zero := int64(0)
	for _, p := range pods.Items {
		if err := c.core.CoreV1().Pods(namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatal(err)
		}
	}
	return pods.Items[0].Name
}

// unlockedWithin starts an INSERT, which FTWRL blocks, and reports how
// long after from it went through.
func unlockedWithin(t *testing.T, db *sql.DB, from time.Time, limit time.Duration) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	if _, err := db.ExecContext(ctx, "INSERT INTO probe VALUES (NOW(6))"); err != nil {
		t.Fatalf("an INSERT %v after the kill: %v; the application is still locked", time.Since(from).Round(time.Millisecond), err)
	}
	return time.Since(from)
}

// failed waits for the run's backup.failed.
func (c *cluster) failed(t *testing.T, nb *bustest.Env, run events.RunID, ns string, within time.Duration) events.BackupFailed {
	t.Helper()
	ev := nb.WaitFor(t, within, "backup.failed of "+string(run), func(ev events.Event) bool {
		if p, ok := events.As[events.BackupCompleted](ev); ok {
			return p.RunID == run
		}
		p, ok := events.As[events.BackupFailed](ev)
		return ok && p.RunID == run
	})
	f, ok := events.As[events.BackupFailed](ev)
	if !ok {
		t.Fatalf("the run completed: %+v; want it failed, its snapshot not shown consistent", ev.Data)
	}
	return f
}

// The hookrunner pod holding FTWRL dies: its session closes with it, so
// MariaDB drops the lock at once; another hookrunner answers for the lost
// one, and the run, which cannot show its snapshot consistent, fails,
// deleting its snapshots.
func TestHookrunnerKilledWhileHoldingFTWRL(t *testing.T) {
	c := tidemark(t)
	ns, db := c.faultApp(t, "e2e-fault-hr-", "mariadb-slow")
	nb := connectBus(t, c)
	run := accepted(t, nb, ns+"/mariadb")
	lockHeld(t, nb, run)
	killed := time.Now()
	pod := c.killService(t, "hookrunner")
	t.Logf("killed %s while it held FTWRL", pod)
	took := unlockedWithin(t, db, killed, 30*time.Second)
	t.Logf("the lock was gone %v after the kill", took.Round(time.Millisecond))

	// The new hookrunner pod answers for the lost one once its word runs
	// out (10 s), and the run fails then, not after the release's
	// timeouts: nothing is left owed.
	f := c.failed(t, nb, run, ns, time.Minute)
	t.Logf("backup.failed %v after the kill: %s (compensations %+v)", time.Since(killed).Round(time.Millisecond), f.Reason, f.Compensations)
	if !strings.Contains(f.Reason, "was lost") || !strings.Contains(f.Reason, pod) {
		t.Errorf("reason %q: want it to say the hookrunner %s holding the lock was lost", f.Reason, pod)
	}
	for _, x := range f.Compensations {
		if x.Outcome != "succeeded" {
			t.Errorf("compensation %+v: want none failed (a human would be paged for nothing)", x)
		}
	}
	c.noRunLeftovers(t, ns)
}

// The coordinator pod dies while the application is locked: the restarted
// one takes the run over when the lease runs out and, since it was
// inside the freeze, compensates it — UNLOCK TABLES on the held session —
// well within maxFreeze (60 s).
func TestCoordinatorKilledMidFreeze(t *testing.T) {
	c := tidemark(t)
	ns, db := c.faultApp(t, "e2e-fault-co-", "mariadb-slow")
	nb := connectBus(t, c)
	run := accepted(t, nb, ns+"/mariadb")
	lock := lockHeld(t, nb, run)
	killed := time.Now()
	pod := c.killService(t, "coordinator")
	t.Logf("killed %s while the application was locked", pod)
	took := unlockedWithin(t, db, killed, 90*time.Second)
	frozen := time.Since(lock.FinishedAt)
	t.Logf("the lock was gone %v after the kill (frozen %v in all)", took.Round(time.Millisecond), frozen.Round(time.Millisecond))
	if frozen > time.Minute {
		t.Errorf("the application was locked %v, more than the blueprint's maxFreeze (60s)", frozen)
	}
	f := c.failed(t, nb, run, ns, 3*time.Minute)
	t.Logf("backup.failed %v after the kill: %s (compensations %+v)", time.Since(killed).Round(time.Millisecond), f.Reason, f.Compensations)
	released := false
	for _, x := range f.Compensations {
		released = released || (strings.Contains(x.Step, "lock") && x.Outcome == "succeeded")
	}
	if !strings.Contains(f.Reason, "coordinator") || !released {
		t.Errorf("reason %q, compensations %+v: want the lost coordinator named and the lock's release succeeded", f.Reason, f.Compensations)
	}
	var by string
	for _, e := range nb.Facts() {
		if r, ok := events.As[events.HookReleased](e); ok && r.RunID == run {
			by = r.By
		}
	}
	if by != "request" {
		t.Errorf("the lock was released by %q, want on the new coordinator's request (not the dead man's switch)", by)
	}
	c.noRunLeftovers(t, ns)
}

// A mover pod dies mid-export: the work item is redelivered, another
// mover pod moves the volume, the backup completes, and a restore of it
// holds the same rows a backup without the fault would.
func TestMoverPodKilledMidExport(t *testing.T) {
	c := tidemark(t)
	ns, _ := c.faultApp(t, "e2e-fault-mv-", "mariadb")
	ctx := context.Background()
	// 300 MiB the export has to read, compress, encrypt and upload: long
	// enough to kill its mover pod midway.
	exec := &kube.Executor{Platform: c.platform(t), Namespace: ns}
	res, err := exec.Exec(ctx, platform.ExecRequest{Spec: blueprint.ExecSpec{Target: "mariadb-0",
		Command: []string{"sh", "-c", "head -c 300M /dev/urandom > /var/lib/mysql/ballast"}}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("writing the ballast: %v %+v", err, res)
	}
	nb := connectBus(t, c)
	app := ns + "/mariadb"
	killed := make(chan string, 1)
	go func() {
		defer close(killed)
		w, err := c.core.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: kube.LabelComponent + "=" + kube.ComponentMover})
		if err != nil {
			return
		}
		defer w.Stop()
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || p.Labels[kube.LabelVolume] != "data-mariadb-0" || p.Status.Phase != corev1.PodRunning {
				continue
			}
			zero := int64(0)
			if c.core.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}) == nil {
				killed <- p.Name
				return
			}
		}
	}()
	sent := time.Now()
	run, done := c.backup(t, nb, app)
	pod, ok := <-killed
	if !ok {
		t.Fatal("no mover pod of data-mariadb-0 was seen running to kill")
	}
	c.logTimeline(t, nb.Facts(), run, sent)
	var exports int
	for _, f := range nb.Facts() {
		if x, ok := events.As[events.VolumeExported](f); ok && x.RunID == run && x.Volume == "data-mariadb-0" {
			exports++
			if x.Bytes < 300<<20 {
				t.Errorf("data-mariadb-0 exported %d bytes, want the 300 MiB ballast and more", x.Bytes)
			}
		}
	}
	if exports != 1 {
		t.Errorf("%d volume.exported for data-mariadb-0, want one", exports)
	}
	t.Logf("killed mover pod %s; backup.completed %v after the publish, %d bytes read", pod, time.Since(sent).Round(time.Millisecond), done.BytesRead)
	c.noRunLeftovers(t, ns)

	// The volume in the repository is whole: restored and started, the
	// copy holds a gap-free prefix of the source's rows.
	target := c.testNamespace(t, "e2e-fault-mv-restored-")
	password := c.secretOf(t, ns, "mariadb", "root-password")
	c.mariadbSecret(t, target, password)
	req := events.New("tidemark/e2e", app, events.RestoreRequested{RestorePointID: done.RestorePointID, Target: events.RestoreTarget{Mode: "new", Name: target}}, time.Now())
	nb.Publish(t, req)
	ev := nb.WaitFor(t, 10*time.Minute, "the restore", func(ev events.Event) bool {
		if p, ok := events.As[events.RestoreCompleted](ev); ok {
			return p.RestorePointID == done.RestorePointID
		}
		p, ok := events.As[events.RestoreFailed](ev)
		return ok && p.RestorePointID == done.RestorePointID
	})
	if f, ok := events.As[events.RestoreFailed](ev); ok {
		t.Fatalf("restore.failed: %s", f.Reason)
	}
	c.waitPodReady(t, target, "mariadb-0", 3*time.Minute)
	got, want := ticks(t, c.mariaDB(t, target, password)), ticks(t, c.mariaDB(t, ns, password))
	if len(got) == 0 || len(got) > len(want) {
		t.Fatalf("restored %d rows, the source has %d", len(got), len(want))
	}
	for i, r := range got {
		if r.id != want[i].id || !r.at.Equal(want[i].at) {
			t.Fatalf("restored row %d is (%d, %v), the source's (%d, %v)", i+1, r.id, r.at, want[i].id, want[i].at)
		}
	}
	t.Logf("restored %d rows, a gap-free prefix of the source's %d", len(got), len(want))
}

func (c *cluster) secretOf(t *testing.T, ns, name, key string) string {
	t.Helper()
	s, err := c.core.CoreV1().Secrets(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return string(s.Data[key])
}

//go:build e2e

package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/tests/bustest"
)

const mariadbImage = "tidemark.local/mariadb:test"

// tickerSQL inserts a row every ~10 ms, each in its own transaction, with
// the server's time, in one session: under FLUSH TABLES WITH READ LOCK
// the INSERT waits, so the rows a consistent snapshot holds end at the
// last one committed before the lock.
const tickerSQL = `CREATE TABLE IF NOT EXISTS ticks (id BIGINT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6) NOT NULL);
DELIMITER //
CREATE OR REPLACE PROCEDURE tick() BEGIN LOOP INSERT INTO ticks (at) VALUES (NOW(6)); DO SLEEP(0.01); END LOOP; END//
DELIMITER ;
CALL tick();
`

// TestMariaDBBackupUnderFTWRLRestoredIntoANewNamespace is the consistency
// proof on the real cluster for MariaDB: a StatefulSet with two volumes
// (data, and the binary log on its own PVC, so the group snapshot
// matters), bound to the bundled mariadb blueprint by annotation, its
// connection declared by annotation with the password in a Secret; a
// ticker pod inserting a row every 10 ms. A backup.requested published
// to NATS runs FLUSH TABLES WITH READ LOCK from the hookrunner's pod, held
// in its session over one VolumeGroupSnapshot, then UNLOCK TABLES; mover
// pods export both volumes to S3. A restore.requested into a new
// namespace creates the StatefulSet there stopped, imports both volumes
// and starts it. The restored server starts, and its rows are a gap-free
// prefix of the source's, the last one committed inside the freeze.
func TestMariaDBBackupUnderFTWRLRestoredIntoANewNamespace(t *testing.T) {
	c := tidemark(t)
	start := time.Now()
	ctx := context.Background()
	ns := c.testNamespace(t, "e2e-mariadb-")
	password := randomText(24)
	c.mariadbApp(t, ns, password, "mariadb")
	c.mariadbTicker(t, ns, password)
	src := c.mariaDB(t, ns, password)
	waitRows(t, src, 100)
	setup := time.Since(start)

	nb := connectBus(t, c)
	app := ns + "/mariadb"
	sent := time.Now()
	run, done := c.backup(t, nb, app)
	t.Logf("backup.completed %v after the publish (setup %v): freeze window %v, %d bytes read, %d uploaded",
		time.Since(sent).Round(time.Millisecond), setup.Round(time.Millisecond), done.FreezeWindow.Std().Round(time.Millisecond), done.BytesRead, done.BytesUploaded)
	c.logTimeline(t, nb.Facts(), run, sent)
	if done.Consistency != "application" {
		t.Errorf("consistency %q, want application (FTWRL held over the snapshot)", done.Consistency)
	}
	lock, ok := hookOf(nb.Facts(), run, "lock")
	if !ok || !lock.Holding {
		t.Fatalf("hook.succeeded of lock %+v, want the lock held by the hookrunner", lock)
	}
	var released events.HookReleased
	for _, f := range nb.Facts() {
		if r, ok := events.As[events.HookReleased](f); ok && r.RunID == run && r.Step == "lock" {
			released = r
		}
	}
	if released.By != "request" || released.Error != "" {
		t.Fatalf("hook.released of lock %+v, want released on request (UNLOCK TABLES) without error", released)
	}
	for _, f := range nb.Facts() {
		if x, ok := events.As[events.SnapshotReady](f); ok && x.RunID == run && (x.Group == nil || len(x.Snapshots) != 2) {
			t.Errorf("snapshot.ready %+v, want one VolumeGroupSnapshot of both volumes", x)
		}
	}
	for _, f := range nb.Facts() {
		if strings.Contains(fmt.Sprint(f.Data), password) {
			t.Fatalf("event %s (%s) holds the database password", f.ID, f.Type())
		}
	}

	// Restore into a new namespace. The Secret the pods' environment
	// names is not in the backup (the coordinator may not read Secrets:
	// docs/deploy.md), so it is made there first, as a user would.
	target := c.testNamespace(t, "e2e-mariadb-restored-")
	c.mariadbSecret(t, target, password)
	restoreSent := time.Now()
	req := events.New("tidemark/e2e", app, events.RestoreRequested{RestorePointID: done.RestorePointID, Target: events.RestoreTarget{Mode: "new", Name: target}, RequestedBy: "e2e"}, time.Now())
	nb.Publish(t, req)
	ev := nb.WaitFor(t, 10*time.Minute, "restore.completed or restore.failed of "+string(done.RestorePointID), func(ev events.Event) bool {
		if p, ok := events.As[events.RestoreCompleted](ev); ok {
			return p.RestorePointID == done.RestorePointID
		}
		p, ok := events.As[events.RestoreFailed](ev)
		return ok && p.RestorePointID == done.RestorePointID
	})
	if f, ok := events.As[events.RestoreFailed](ev); ok {
		t.Fatalf("restore.failed: %s (step %q, compensations %+v)\n%s\n%s", f.Reason, f.FailedStep, f.Compensations,
			c.podReport(ctx, target), c.serviceLogs(ctx, 40, "datamover", "coordinator"))
	}
	restored, _ := events.As[events.RestoreCompleted](ev)
	t.Logf("restore.completed %v after the publish: %d bytes restored into %s", time.Since(restoreSent).Round(time.Millisecond), restored.BytesRestored, target)
	c.logTimeline(t, nb.Facts(), restored.RunID, restoreSent)

	c.waitPodReady(t, target, "mariadb-0", 3*time.Minute)
	dst := c.mariaDB(t, target, password)
	got := ticks(t, dst)
	if len(got) == 0 {
		t.Fatal("the restored database has no rows")
	}
	want := ticks(t, src)
	if len(want) <= len(got) {
		t.Fatalf("the source has %d rows and the restored copy %d: the ticker did not go on after the backup", len(want), len(got))
	}
	for i, r := range got {
		if r.id != int64(i+1) || !r.at.Equal(want[i].at) {
			t.Fatalf("restored row %d is (%d, %v), the source's is (%d, %v): not a gap-free prefix of the source", i+1, r.id, r.at, want[i].id, want[i].at)
		}
	}
	last := got[len(got)-1].at
	// The server's clock is the node's, as is the hookrunner's: the last
	// restored row was committed after the lock step started (the ticker
	// writes every 10 ms; a second of slack) and before FTWRL returned.
	if last.Before(lock.StartedAt.Add(-time.Second)) || last.After(lock.FinishedAt) {
		t.Errorf("the last restored row is from %v; the lock step ran %v .. %v: want it inside", last, lock.StartedAt, lock.FinishedAt)
	}
	t.Logf("restored %d of %d rows, gap-free; the last from %v before FTWRL returned (the lock step ran %v); test %v",
		len(got), len(want), lock.FinishedAt.Sub(last).Round(time.Millisecond), lock.FinishedAt.Sub(lock.StartedAt).Round(time.Millisecond), time.Since(start).Round(time.Second))
	c.noRunLeftovers(t, ns)
	c.noRunLeftovers(t, target)

	// Restore to production: the kube variant of the blueprint scales the
	// StatefulSet down, the volumes are replaced in place by mover pods,
	// it is scaled up and the server answers again. The ticker, cut off
	// meanwhile, reconnects and goes on from the restored rows.
	prodSent := time.Now()
	req = events.New("tidemark/e2e", app, events.RestoreRequested{RestorePointID: done.RestorePointID, Target: events.RestoreTarget{Mode: "production"}, RequestedBy: "e2e"}, time.Now())
	nb.Publish(t, req)
	ev = nb.WaitFor(t, 10*time.Minute, "restore.completed or restore.failed of the production restore", func(ev events.Event) bool {
		if p, ok := events.As[events.RestoreCompleted](ev); ok {
			return p.RestorePointID == done.RestorePointID && p.Target.Mode == "production"
		}
		p, ok := events.As[events.RestoreFailed](ev)
		return ok && p.RestorePointID == done.RestorePointID && ev.CausationID == req.ID
	})
	if f, ok := events.As[events.RestoreFailed](ev); ok {
		t.Fatalf("restore.failed (production): %s (step %q, compensations %+v)\n%s\n%s", f.Reason, f.FailedStep, f.Compensations,
			c.podReport(ctx, ns), c.serviceLogs(ctx, 40, "hookrunner", "datamover", "coordinator"))
	}
	prod, _ := events.As[events.RestoreCompleted](ev)
	t.Logf("restore to production completed %v after the publish", time.Since(prodSent).Round(time.Millisecond))
	c.logTimeline(t, nb.Facts(), prod.RunID, prodSent)
	stop, ok := hookOf(nb.Facts(), prod.RunID, "stop")
	if !ok || stop.Outputs[kube.OutputOriginalReplicas] != "1" {
		t.Errorf("the stop step of the production restore: %+v, want the StatefulSet scaled down from 1", stop)
	}
	c.waitPodReady(t, ns, "mariadb-0", 3*time.Minute)
	after := ticks(t, c.mariaDB(t, ns, password))
	if len(after) < len(got) {
		t.Fatalf("after the restore to production the database has %d rows, the restore point %d", len(after), len(got))
	}
	for i, r := range after {
		if i < len(got) && (r.id != got[i].id || !r.at.Equal(got[i].at)) {
			t.Fatalf("after the restore to production row %d is (%d, %v), the restore point's (%d, %v)", i+1, r.id, r.at, got[i].id, got[i].at)
		}
		if i >= len(got) && (r.id != int64(i+1) || r.at.Before(prodSent)) {
			t.Fatalf("after the restore to production row %d is (%d, %v): want only rows written after the restore began (%v) past the point's %d", i+1, r.id, r.at, prodSent, len(got))
		}
	}
	t.Logf("production holds the point's %d rows, then %d the ticker wrote since (the source had %d before the restore)", len(got), len(after)-len(got), len(want))
	c.noRunLeftovers(t, ns)
}

// backup publishes a backup.requested for app, as users do, and returns
// the run and its backup.completed; a rejection or failure fails the test.
func (c *cluster) backup(t *testing.T, nb *bustest.Env, app string) (events.RunID, events.BackupCompleted) {
	t.Helper()
	ctx := context.Background()
	run := accepted(t, nb, app)
	ns, _, _ := strings.Cut(app, "/")
	ev := nb.WaitFor(t, 5*time.Minute, "backup.completed or backup.failed of "+string(run), func(ev events.Event) bool {
		if p, ok := events.As[events.BackupCompleted](ev); ok {
			return p.RunID == run
		}
		p, ok := events.As[events.BackupFailed](ev)
		return ok && p.RunID == run
	})
	if f, ok := events.As[events.BackupFailed](ev); ok {
		t.Fatalf("backup.failed: %s (step %q, compensations %+v)\n%s\n%s", f.Reason, f.FailedStep, f.Compensations,
			c.podReport(ctx, ns), c.serviceLogs(ctx, 40, "hookrunner", "datamover", "coordinator"))
	}
	done, _ := events.As[events.BackupCompleted](ev)
	return run, done
}

// noRunLeftovers checks that no mover pod, mover PVC or Secret, and no
// snapshot is left in ns.
func (c *cluster) noRunLeftovers(t *testing.T, ns string) {
	t.Helper()
	ctx := context.Background()
	sel := metav1.ListOptions{LabelSelector: kube.LabelComponent + "=" + kube.ComponentMover}
	why, err := poll(ctx, 2*time.Minute, func() (bool, string) {
		pods, err := c.core.CoreV1().Pods(ns).List(ctx, sel)
		if err != nil {
			return false, err.Error()
		}
		pvcs, err := c.core.CoreV1().PersistentVolumeClaims(ns).List(ctx, sel)
		if err != nil {
			return false, err.Error()
		}
		secrets, err := c.core.CoreV1().Secrets(ns).List(ctx, sel)
		if err != nil {
			return false, err.Error()
		}
		vs, err := c.snap.SnapshotV1().VolumeSnapshots(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		vgs, err := c.snap.GroupsnapshotV1().VolumeGroupSnapshots(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		left := fmt.Sprintf("left: %d mover pods, %d mover PVCs, %d mover Secrets, %d VolumeSnapshots, %d VolumeGroupSnapshots",
			len(pods.Items), len(pvcs.Items), len(secrets.Items), len(vs.Items), len(vgs.Items))
		return len(pods.Items)+len(pvcs.Items)+len(secrets.Items)+len(vs.Items)+len(vgs.Items) == 0, left
	})
	if err != nil {
		t.Errorf("namespace %s after the run: %v: %s", ns, err, why)
	}
}

func (c *cluster) mariadbSecret(t *testing.T, ns, password string) {
	t.Helper()
	if _, err := c.core.CoreV1().Secrets(ns).Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "mariadb"},
		StringData: map[string]string{"root-password": password},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// mariadbApp creates MariaDB in ns: the Secret mariadb, a headless
// Service, and the StatefulSet mariadb (one pod; PVCs data for the data
// directory and binlog for the binary log) annotated with the blueprint
// and its connection, and waits until it serves.
func (c *cluster) mariadbApp(t *testing.T, ns, password, blueprint string) {
	t.Helper()
	ctx := context.Background()
	c.mariadbSecret(t, ns, password)
	labels := map[string]string{"app": "mariadb"}
	if _, err := c.core.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "mariadb", Labels: labels},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: labels,
			Ports: []corev1.ServicePort{{Name: "mysql", Port: 3306}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	one, grace := int32(1), int64(10)
	connections := `primary:
  driver: mysql
  dsn: root@tcp(mariadb-0.mariadb.{{ .Namespace }}.svc:3306)/
  passwordFrom:
    secretKeyRef: {name: mariadb, key: root-password}
`
	_, err := c.core.AppsV1().StatefulSets(ns).Create(ctx, &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "mariadb", Labels: labels, Annotations: map[string]string{
			kube.AnnotationBlueprint: blueprint, kube.AnnotationConnections: connections,
		}},
		Spec: appsv1.StatefulSetSpec{
			Replicas: &one, ServiceName: "mariadb", Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					Containers: []corev1.Container{{
						Name: "mariadb", Image: mariadbImage, ImagePullPolicy: corev1.PullNever,
						// The binary log on its own volume: the two must be
						// cut at one instant (or under the lock).
						Command: []string{"sh", "-c", "mkdir -p /var/log/mysql && chown mysql:mysql /var/log/mysql && exec /usr/local/bin/entrypoint.sh --log-bin=/var/log/mysql/mariadb-bin --server-id=1"},
						Env: []corev1.EnvVar{
							{Name: "MARIADB_DATABASE", Value: "shop"},
							{Name: "MARIADB_ROOT_PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
								LocalObjectReference: corev1.LocalObjectReference{Name: "mariadb"}, Key: "root-password"}}},
						},
						Ports: []corev1.ContainerPort{{Name: "mysql", ContainerPort: 3306}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(3306)}},
							PeriodSeconds: 1,
						},
						VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/var/lib/mysql"}, {Name: "binlog", MountPath: "/var/log/mysql"}},
					}},
				},
			},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{testClaim("data"), testClaim("binlog")},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.waitPodReady(t, ns, "mariadb-0", 3*time.Minute)
}

// mariadbTicker starts the ticker pod (tickerSQL) in ns. It is not part of
// the application (named ns/mariadb): a restore does not bring it along.
func (c *cluster) mariadbTicker(t *testing.T, ns, password string) {
	t.Helper()
	script := `until mariadb -h mariadb-0.mariadb -uroot -p"$PW" -e 'SELECT 1' shop >/dev/null 2>&1; do sleep 0.5; done
exec mariadb -h mariadb-0.mariadb -uroot -p"$PW" shop <<'SQL'
` + tickerSQL + "SQL\n"
	grace := int64(1)
	if _, err := c.core.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "ticker"},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "ticker", Image: mariadbImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sh", "-c", script},
				Env: []corev1.EnvVar{{Name: "PW", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: "mariadb"}, Key: "root-password"}}}},
			}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// mariaDB opens the database shop of the pod mariadb-0 in ns through a
// port-forward.
func (c *cluster) mariaDB(t *testing.T, ns, password string) *sql.DB {
	t.Helper()
	addr := c.portForward(t, ns, "mariadb-0", 3306)
	db, err := sql.Open("mysql", fmt.Sprintf("root:%s@tcp(%s)/shop?parseTime=true&loc=UTC&timeout=10s", password, addr))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(2)
	t.Cleanup(func() { db.Close() })
	return db
}

func waitRows(t *testing.T, db *sql.DB, n int) {
	t.Helper()
	var got int
	why, err := poll(context.Background(), 2*time.Minute, func() (bool, string) {
		if err := db.QueryRow("SELECT COUNT(*) FROM ticks").Scan(&got); err != nil {
			return false, err.Error()
		}
		return got >= n, fmt.Sprintf("%d rows", got)
	})
	if err != nil {
		t.Fatalf("the ticker: %v: %s, want %d", err, why, n)
	}
}

type tick struct {
	id int64
	at time.Time
}

func ticks(t *testing.T, db *sql.DB) []tick {
	t.Helper()
	rows, err := db.Query("SELECT id, at FROM ticks ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []tick
	for rows.Next() {
		var r tick
		if err := rows.Scan(&r.id, &r.at); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

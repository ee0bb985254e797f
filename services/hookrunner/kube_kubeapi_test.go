//go:build kubeapi

// Tests against a real kube-apiserver: `make test-kube` (go test -tags kubeapi).

package hookrunner

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/tests/bustest"
	"github.com/tidemark-dev/tidemark/tests/dbserver"
	kubetest "github.com/tidemark-dev/tidemark/tests/kube"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

var nsSeq atomic.Int64

type kubeHarness struct {
	env       *bustest.Env
	p         *kube.Platform
	ns        string
	workloads *kubetest.WorkloadStandIn
}

// startOnKube runs a hookrunner as `tidemark serve --platform kube` builds
// it, on a real NATS server and the shared apiserver, with a StatefulSet
// db of 2 replicas in a fresh namespace (the workload stand-in playing its
// controller: no kubelet runs here).
func startOnKube(t *testing.T) *kubeHarness {
	t.Helper()
	cfg := kubetest.Config(t)
	c, err := kube.NewClients(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := &kubeHarness{env: bustest.Start(t), p: kube.New(c, kube.WithPollInterval(20*time.Millisecond)), ns: fmt.Sprintf("hr%d", nsSeq.Add(1))}
	ctx := context.Background()
	core := c.Core
	if _, err := core.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: h.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	replicas := int32(2)
	labels := map[string]string{"app": "db"}
	_, err = core.AppsV1().StatefulSets(h.ns).Create(ctx, &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Labels: labels},
		Spec: appsv1.StatefulSetSpec{
			Replicas: &replicas, ServiceName: "db", Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "db", Image: "db:1"}}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h.workloads = kubetest.StartWorkloadStandIn(t, cfg, h.ns)
	hcfg := Config{InstanceID: instance}
	OnKube(&hcfg, h.p)
	s, err := New(hcfg, h.env.Bus)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	t.Cleanup(func() { stopNow(t, cancel, done) })
	return h
}

func (h *kubeHarness) statefulSet(t *testing.T) *appsv1.StatefulSet {
	t.Helper()
	s, err := h.p.Clients().Core.AppsV1().StatefulSets(h.ns).Get(context.Background(), "db", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (h *kubeHarness) pods(t *testing.T) int {
	t.Helper()
	l, err := h.p.Clients().Core.CoreV1().Pods(h.ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=db"})
	if err != nil {
		t.Fatal(err)
	}
	return len(l.Items)
}

func (h *kubeHarness) run(t *testing.T, run events.RunID, step, kind string, spec any, timeout time.Duration) events.Event {
	t.Helper()
	ev := command(run, h.ns+"/statefulset/db", step, kind, spec, 0)
	req, _ := events.As[events.HookRequested](ev)
	req.Timeout = events.Duration(timeout)
	ev.Data = req
	h.env.Publish(t, ev)
	return h.env.WaitFor(t, timeout+20*time.Second, step, func(e events.Event) bool {
		return bustest.Step[events.HookSucceeded](run, step)(e) || bustest.Step[events.HookFailed](run, step)(e)
	})
}

// Scale and apply steps reach the cluster through hook.requested, in the
// application's namespace, with their outputs in hook.succeeded for the
// coordinator to render inverses from.
func TestKubeScaleAndApplyStepsRunInTheApplicationsNamespace(t *testing.T) {
	h := startOnKube(t)
	ev := h.run(t, "run-kube", "stop", kube.KindScale, kube.ScaleSpec{Workload: "statefulset/db", Replicas: 0}, 20*time.Second)
	ok, isOK := events.As[events.HookSucceeded](ev)
	if !isOK || ok.Outputs[kube.OutputOriginalReplicas] != "2" {
		t.Fatalf("scale down: %+v, want hook.succeeded with originalReplicas 2", ev.Data)
	}
	if s := h.statefulSet(t); *s.Spec.Replicas != 0 || h.pods(t) != 0 {
		t.Fatalf("after the scale step: replicas %d, %d pods", *s.Spec.Replicas, h.pods(t))
	}

	ev = h.run(t, "run-kube", "start", kube.KindScale, kube.ScaleSpec{Workload: "statefulset/db", Replicas: 2}, 20*time.Second)
	if _, isOK := events.As[events.HookSucceeded](ev); !isOK {
		t.Fatalf("scale back up: %+v", ev.Data)
	}
	if s := h.statefulSet(t); *s.Spec.Replicas != 2 || s.Status.ReadyReplicas != 2 || s.Annotations[kube.AnnotationScaledFrom] != "" {
		t.Fatalf("after scaling back: replicas %d, ready %d, annotations %v", *s.Spec.Replicas, s.Status.ReadyReplicas, s.Annotations)
	}

	ev = h.run(t, "run-kube", "mark", kube.KindApply, kube.ApplySpec{
		Object:  map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": "backup-marker"}, "data": map[string]any{"at": "now"}},
		Outputs: map[string]string{"at": "{.data.at}", "uid": "{.metadata.uid}"},
	}, 20*time.Second)
	applied, isOK := events.As[events.HookSucceeded](ev)
	if !isOK || applied.Outputs["at"] != "now" || applied.Outputs["uid"] == "" {
		t.Fatalf("apply: %+v", ev.Data)
	}
	cm, err := h.p.Clients().Core.CoreV1().ConfigMaps(h.ns).Get(context.Background(), "backup-marker", metav1.GetOptions{})
	if err != nil || string(cm.UID) != applied.Outputs["uid"] {
		t.Fatalf("the applied ConfigMap in the application's namespace: %v, %v", cm, err)
	}
}

// What goes wrong says so: a missing workload is permanent; a wait that
// timed out after the workload was changed can be retried and says what
// it changed; a secret is never written into an object.
func TestKubeStepFailures(t *testing.T) {
	h := startOnKube(t)
	ev := h.run(t, "run-fail", "missing", kube.KindScale, kube.ScaleSpec{Workload: "statefulset/nope", Replicas: 0}, 10*time.Second)
	f, _ := events.As[events.HookFailed](ev)
	if !f.Permanent || !strings.Contains(f.Error, "StatefulSet "+h.ns+"/nope does not exist (scale.workload)") {
		t.Errorf("missing workload: %+v", ev.Data)
	}

	// Pods that never stop (the stand-in frozen): the wait times out.
	h.workloads.Hold()
	ev = h.run(t, "run-fail", "stuck", kube.KindScale, kube.ScaleSpec{Workload: "statefulset/db", Replicas: 0}, time.Second)
	f, _ = events.As[events.HookFailed](ev)
	if f.Permanent || !strings.Contains(f.Error, "timed out waiting for StatefulSet") || !strings.Contains(f.Error, "it had already acted: originalReplicas=2") {
		t.Errorf("timed-out scale: %+v, want a retryable failure saying what it changed", ev.Data)
	}
	h.workloads.Release()

	ev = h.run(t, "run-fail", "leak", kube.KindApply, kube.ApplySpec{
		Object: map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": "leak"}, "data": map[string]any{"pw": blueprint.SecretPlaceholder("password")}},
	}, 10*time.Second)
	f, _ = events.As[events.HookFailed](ev)
	if !f.Permanent || !strings.Contains(f.Error, "apply steps take no secrets") {
		t.Errorf("secret in an apply step: %+v", ev.Data)
	}
	if _, err := h.p.Clients().Core.CoreV1().ConfigMaps(h.ns).Get(context.Background(), "leak", metav1.GetOptions{}); err == nil {
		t.Error("the ConfigMap with the secret was created")
	}
}

// annotate sets annotations on the StatefulSet db.
func (h *kubeHarness) annotate(t *testing.T, ann map[string]string) {
	t.Helper()
	sts := h.statefulSet(t)
	if sts.Annotations == nil {
		sts.Annotations = map[string]string{}
	}
	for k, v := range ann {
		sts.Annotations[k] = v
	}
	if _, err := h.p.Clients().Core.AppsV1().StatefulSets(h.ns).Update(context.Background(), sts, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// On Kubernetes a sql step's connection is declared by the workload's
// annotation, its password is a key of a Secret in the application's
// namespace, and the DSN names the namespace by template, so a copy
// restored elsewhere connects to itself. The lock is held in one session
// as on the local platform; the password is in no event.
func TestKubeSQLStepConnectsThroughTheWorkloadsAnnotationAndSecret(t *testing.T) {
	h := startOnKube(t)
	srv := dbserver.MariaDB(t)
	db, err := sql.Open("mysql", srv.MySQLDSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{"CREATE DATABASE " + h.ns, "CREATE TABLE " + h.ns + ".orders (id INT PRIMARY KEY)"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	if _, err := h.p.Clients().Core.CoreV1().Secrets(h.ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "db-credentials"},
		Data:       map[string][]byte{"password": []byte(srv.Password + "\n")}, // as written by kubectl create secret --from-file
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	connections := func(key string) string {
		return fmt.Sprintf(`primary:
  driver: mysql
  dsn: "%s@tcp(%s:%d)/{{ .Namespace }}"
  passwordFrom:
    secretKeyRef: {name: db-credentials, key: %s}
`, srv.User, srv.Host, srv.Port, key)
	}
	h.annotate(t, map[string]string{kube.AnnotationConnections: connections("password")})
	lock := blueprint.SQLSpec{Connection: "primary", Statements: []string{"FLUSH TABLES WITH READ LOCK", "SELECT DATABASE() AS db"}, Hold: true, Release: []string{"UNLOCK TABLES"}}

	for i, app := range []string{h.ns + "/db", h.ns} { // by workload, and as the whole namespace
		run := events.RunID(fmt.Sprintf("run-sql-%d", i))
		h.env.Publish(t, command(run, app, "lock", blueprint.KindSQL, lock, time.Minute))
		ev := h.env.WaitFor(t, 30*time.Second, "the lock", func(e events.Event) bool {
			return bustest.Step[events.HookSucceeded](run, "lock")(e) || bustest.Step[events.HookFailed](run, "lock")(e)
		})
		ok, isOK := events.As[events.HookSucceeded](ev)
		if !isOK || !ok.Holding || ok.Outputs["db"] != h.ns {
			t.Fatalf("application %s: %+v, want the lock held in database %s (the DSN's {{ .Namespace }})", app, ev.Data, h.ns)
		}
		blocked, done := insertBlocks(t, db, fmt.Sprintf("INSERT INTO %s.orders VALUES (%d)", h.ns, i), time.Second)
		if !blocked {
			t.Fatalf("an INSERT completed while the lock was held: %v", <-done)
		}
		h.env.Publish(t, release(run, "lock"))
		h.env.WaitFor(t, 30*time.Second, "the release", bustest.Step[events.HookReleased](run, "lock"))
		if err := <-done; err != nil {
			t.Fatalf("the blocked INSERT failed after the release: %v", err)
		}
	}

	// What goes wrong is named, and the step fails before anything is locked.
	for i, c := range []struct{ annotation, want string }{
		{connections("no-such-key"), `Secret ` + h.ns + `/db-credentials has no key "no-such-key" (it has: password)`},
		{strings.Replace(connections("password"), "db-credentials", "missing", 1), "Secret " + h.ns + "/missing does not exist"},
		{"primary: [not, a, map]", "annotation " + kube.AnnotationConnections},
		{strings.Replace(connections("password"), "driver: mysql", "driver: oracle", 1), kube.AnnotationConnections + `.primary.driver "oracle"`},
		{strings.Replace(connections("password"), "{{ .Namespace }}", "{{ .Nope }}", 1), "the DSN may use {{ .Namespace }} only"},
	} {
		h.annotate(t, map[string]string{kube.AnnotationConnections: c.annotation})
		run := events.RunID(fmt.Sprintf("run-bad-%d", i))
		h.env.Publish(t, command(run, h.ns+"/db", "lock", blueprint.KindSQL, lock, time.Minute))
		ev := h.env.WaitFor(t, 30*time.Second, "the failure", func(e events.Event) bool {
			return bustest.Step[events.HookSucceeded](run, "lock")(e) || bustest.Step[events.HookFailed](run, "lock")(e)
		})
		f, isFailed := events.As[events.HookFailed](ev)
		if !isFailed || !strings.Contains(f.Error, c.want) {
			t.Errorf("case %d: %+v, want hook.failed saying %q", i, ev.Data, c.want)
		}
		if blocked, done := insertBlocks(t, db, fmt.Sprintf("INSERT INTO %s.orders VALUES (%d)", h.ns, 100+i), 5*time.Second); blocked {
			t.Fatalf("case %d: locked after a failed step: %v", i, <-done)
		}
	}
	for _, f := range h.env.Facts() {
		raw, _ := json.Marshal(f.Data)
		if strings.Contains(string(raw), srv.Password) {
			t.Fatalf("a %s event carries the database password", f.Type())
		}
	}
}

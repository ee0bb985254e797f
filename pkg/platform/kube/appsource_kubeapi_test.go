//go:build kubeapi

package kube

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidemark-dev/tidemark/pkg/application"
	kubetest "github.com/tidemark-dev/tidemark/tests/kube"
)

const namedApps = `
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
  labels: {app: db}
  annotations: {tidemark.io/blueprint: pg}
spec:
  replicas: 2
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: postgres, image: postgres:15}]}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
  annotations: {kanister.kasten.io/blueprint: postgres}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: nginx}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: plain, labels: {app: plain}}
spec:
  replicas: 1
  serviceName: plain
  selector: {matchLabels: {app: plain}}
  template:
    metadata: {labels: {app: plain}}
    spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: lost, labels: {app: lost}, annotations: {tidemark.io/blueprint: no-such-blueprint}}
spec:
  replicas: 1
  serviceName: lost
  selector: {matchLabels: {app: lost}}
  template:
    metadata: {labels: {app: lost}}
    spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: twin, labels: {app: twin-s}}
spec:
  serviceName: twin
  selector: {matchLabels: {app: twin-s}}
  template:
    metadata: {labels: {app: twin-s}}
    spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: twin, labels: {app: twin-d}}
spec:
  selector: {matchLabels: {app: twin-d}}
  template:
    metadata: {labels: {app: twin-d}}
    spec: {containers: [{name: c, image: busybox}]}
`

const pgBlueprint = `
apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: pg}
spec:
  actions:
    backup:
      - name: stop
        kind: scale
        scale: {workload: "statefulset/{{ .StatefulSet.Name }}", replicas: 0}
        inverse:
          kind: scale
          scale: {workload: "statefulset/{{ .Object.metadata.name }}", replicas: "{{ .Steps.stop.Output.originalReplicas }}"}
      - name: snap
        kind: snapshot
    restore:
      - name: snap
        kind: snapshot
`

func setupNamedApps(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t)
	installBlueprintCRD(t, h)
	h.apply(namedApps)
	for _, c := range []string{"data-db-0", "data-db-1"} {
		h.boundPVC(c, "csi.tidemark.test", nil, nil)
	}
	kubetest.StartWorkloadStandIn(t, kubetest.Config(t), h.ns)
	waitFor(t, "the pods of db", func() bool {
		_, err := h.p.c.Core.CoreV1().Pods(h.ns).Get(context.Background(), "db-1", getOpts)
		return err == nil
	})
	return h
}

func createBlueprint(t *testing.T, h *harness, ns, src string) {
	t.Helper()
	o := blueprintObject(t, []byte(src))
	if _, err := h.p.c.Dynamic.Resource(BlueprintGVR).Namespace(ns).Create(context.Background(), o, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// The forms a user names an application by, resolved to what a run needs:
// volumes as the Snapshotter takes them, the pods, the template context,
// and the blueprint its annotation names.
func TestApplicationsResolveNamedApplications(t *testing.T) {
	h := setupNamedApps(t)
	shared := h.ns + "-tm"
	h.createNamespace(shared)
	apps := &Applications{Platform: h.p, BlueprintNamespace: shared}
	ctx := ctxTimeout(t, 30*time.Second)

	// The annotation names "pg": found in the shared namespace while the
	// application's own has none...
	createBlueprint(t, h, shared, pgBlueprint)
	app, err := apps.Resolve(ctx, h.ns+"/db")
	if err != nil {
		t.Fatal(err)
	}
	if name, src, ok := application.EmbeddedBlueprint(app.Spec.Blueprint); !ok || name != "Blueprint "+shared+"/pg" || !strings.Contains(string(src), "originalReplicas") {
		t.Fatalf("blueprint = %q, %v; want Blueprint %s/pg's source", name, ok, shared)
	}
	// ... and the application's own namespace first once it has one.
	createBlueprint(t, h, h.ns, pgBlueprint)
	if app, err = apps.Resolve(ctx, h.ns+"/db"); err != nil {
		t.Fatal(err)
	}
	if name, _, _ := application.EmbeddedBlueprint(app.Spec.Blueprint); name != "Blueprint "+h.ns+"/pg" {
		t.Errorf("blueprint from %q, want the application's namespace", name)
	}

	r := app.Resolved
	wantVolumes := map[string]string{"data-db-0": h.ns + "/data-db-0", "data-db-1": h.ns + "/data-db-1"}
	if r == nil || r.Namespace != h.ns || !maps.Equal(r.Volumes, wantVolumes) || !slices.Equal(r.Targets, []string{"db-0", "db-1"}) {
		t.Fatalf("resolved %+v; want namespace %s, volumes %v, targets db-0 db-1", r, h.ns, wantVolumes)
	}
	s := r.Context.StatefulSet
	if s == nil || s.Name != "db" || s.Namespace != h.ns || !slices.Equal(s.Pods, []string{"db-0", "db-1"}) ||
		!slices.Equal(s.Containers, []string{"postgres"}) || !slices.Equal(s.PersistentVolumeClaims, []string{"data-db-0", "data-db-1"}) {
		t.Errorf(".StatefulSet = %+v", s)
	}
	md, _ := r.Context.Object["metadata"].(map[string]any)
	if r.Context.Object["kind"] != "StatefulSet" || md["name"] != "db" || md["managedFields"] != nil {
		t.Errorf(".Object: kind %v, metadata %v; want the StatefulSet without managedFields", r.Context.Object["kind"], md)
	}
	if r.Context.Volumes["data-db-0"] != "data-db-0" {
		t.Errorf(".App.Volumes = %v, want PVC names", r.Context.Volumes)
	}

	// The same StatefulSet with its kind given, as kubectl spells kinds.
	for _, name := range []string{h.ns + "/statefulset/db", h.ns + "/StatefulSets/db", h.ns + "/sts/db", h.ns + "/statefulset.apps/db"} {
		a, err := apps.Resolve(ctx, name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !maps.Equal(a.Resolved.Volumes, wantVolumes) || a.Metadata.Name != name {
			t.Errorf("%s: volumes %v, name %q", name, a.Resolved.Volumes, a.Metadata.Name)
		}
	}

	// By label selector; Kanister's annotation; a bundled blueprint.
	web, err := apps.Resolve(ctx, h.ns+":app=web")
	if err != nil {
		t.Fatal(err)
	}
	if web.Spec.Blueprint != "postgres" || web.Resolved.Context.Deployment == nil || web.Resolved.Context.Deployment.Name != "web" || len(web.Resolved.Volumes) != 0 {
		t.Errorf("web: blueprint %q, context %+v, volumes %v", web.Spec.Blueprint, web.Resolved.Context, web.Resolved.Volumes)
	}

	// Nothing annotated: no blueprint, and no error (a request may name one).
	plain, err := apps.Application(h.ns + "/plain")
	if err != nil || plain.Spec.Blueprint != "" {
		t.Errorf("plain: blueprint %q, err %v", plain.Spec.Blueprint, err)
	}
}

// Every way of getting the name wrong fails before anything runs, saying
// what was not found and how to fix it.
func TestApplicationsNameWhatIsMissing(t *testing.T) {
	h := setupNamedApps(t)
	apps := &Applications{Platform: h.p}
	ctx := ctxTimeout(t, 30*time.Second)
	for _, tc := range []struct {
		name string
		is   error
		want []string
	}{
		{"no-such-namespace-x/db", ErrNotFound, []string{`namespace "no-such-namespace-x" does not exist`, "kubectl get namespaces"}},
		{h.ns + "/nope", ErrNotFound, []string{`no StatefulSet or Deployment called "nope"`, h.ns + "/KIND/nope", h.ns + ":app="}},
		{h.ns + "/deployment/nope", ErrNotFound, []string{`has no Deployment called "nope"`, "kubectl get deployments.apps -n " + h.ns}},
		{h.ns + "/gizmo/x", ErrInvalidAppName, []string{`no kind called "gizmo"`, "kubectl api-resources"}},
		{h.ns + "/namespace/x", ErrInvalidAppName, []string{"Namespace is cluster-scoped"}},
		{h.ns + "/twin", ErrInvalidAppName, []string{h.ns + "/statefulset/twin or " + h.ns + "/deployment/twin"}},
		{h.ns + ":app=nothing", ErrNotFound, []string{`label selector "app=nothing" matches nothing in namespace ` + h.ns}},
		{h.ns + "/lost", ErrNotFound, []string{`StatefulSet ` + h.ns + `/lost names blueprint "no-such-blueprint" (annotation tidemark.io/blueprint)`,
			`no Blueprint "no-such-blueprint" in namespace ` + h.ns, "bundled: ", "postgres", "kubectl apply -n " + h.ns}},
		{"Bad/x", ErrInvalidAppName, []string{"not a namespace name"}},
	} {
		_, err := apps.Resolve(ctx, tc.name)
		if !errors.Is(err, tc.is) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.is)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", tc.name, err, w)
			}
		}
	}

	// A Blueprint object that does not lint is refused with its diagnostics,
	// not replaced by a bundled blueprint of the same name.
	createBlueprint(t, h, h.ns, `
apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: pg}
spec:
  actions:
    backup:
      - name: stop
        kind: scale
        scale: {workload: "statefulset/db", replicas: 0}
      - name: snap
        kind: snapshot
`)
	_, err := apps.Resolve(ctx, h.ns+"/db")
	if !errors.Is(err, ErrInvalidBlueprint) || !strings.Contains(err.Error(), "Blueprint "+h.ns+"/pg") || !strings.Contains(err.Error(), "inverse") {
		t.Errorf("a Blueprint that does not lint: err = %v", err)
	}
}

// An operator's custom resource, by its kind or by its name alone when it
// carries the annotation.
func TestApplicationsResolveACustomResource(t *testing.T) {
	h := newHarness(t)
	installCRD(t, h, databaseCRD)
	h.apply(`
apiVersion: example.tidemark.io/v1
kind: Database
metadata:
  name: orders
  annotations: {tidemark.io/blueprint: postgres}
spec: {replicas: 1}
`)
	apps := &Applications{Platform: h.p}
	ctx := ctxTimeout(t, 30*time.Second)
	for _, name := range []string{h.ns + "/orders", h.ns + "/database/orders", h.ns + "/databases.example.tidemark.io/orders"} {
		app, err := apps.Resolve(ctx, name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if app.Spec.Blueprint != "postgres" || app.Resolved.Context.Object["kind"] != "Database" {
			t.Errorf("%s: blueprint %q, .Object kind %v", name, app.Spec.Blueprint, app.Resolved.Context.Object["kind"])
		}
	}
}

// The bound object's params reach templates (.Params); a connection
// annotation that is wrong rejects the application before any step runs,
// naming the object, the annotation and the field.
func TestApplicationsReadTheBoundObjectsSettings(t *testing.T) {
	h := setupNamedApps(t)
	apps := &Applications{Platform: h.p}
	ctx := ctxTimeout(t, 30*time.Second)
	createBlueprint(t, h, h.ns, pgBlueprint)
	sts, err := h.p.c.Core.AppsV1().StatefulSets(h.ns).Get(ctx, "db", getOpts)
	if err != nil {
		t.Fatal(err)
	}
	sts.Annotations[AnnotationParams] = "database: shop\nstop: pg_ctl stop\n"
	sts.Annotations[AnnotationConnections] = `{"primary": {"driver": "postgres", "dsn": "postgres://backup@db-0.db.{{ .Namespace }}.svc:5432/shop", "passwordFrom": {"secretKeyRef": {"name": "pg", "key": "password"}}}}`
	if sts, err = h.p.c.Core.AppsV1().StatefulSets(h.ns).Update(ctx, sts, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	app, err := apps.Resolve(ctx, h.ns+"/db")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"database": "shop", "stop": "pg_ctl stop"}; !maps.Equal(app.Spec.Params, want) {
		t.Errorf("params %v, want %v", app.Spec.Params, want)
	}
	if app.Spec.Connections != nil {
		t.Errorf("connections %v: the coordinator has no use for them; only the hookrunner reads them", app.Spec.Connections)
	}

	sts.Annotations[AnnotationConnections] = `{"primary": {"driver": "postgres", "dsn": "postgres://backup:hunter2@db-0/shop"}}`
	if _, err = h.p.c.Core.AppsV1().StatefulSets(h.ns).Update(ctx, sts, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = apps.Resolve(ctx, h.ns+"/db")
	if !errors.Is(err, ErrInvalidSettings) || !strings.Contains(err.Error(), "StatefulSet "+h.ns+"/db: annotation tidemark.io/connections.primary.dsn holds a password") || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("err = %v, want ErrInvalidSettings naming the object and field, without the password", err)
	}
}

// A connection declared by two objects of one application (named as the
// whole namespace) is refused: which one a step meant would not be clear.
func TestAppSettingsRefuseANameDeclaredTwice(t *testing.T) {
	h := setupNamedApps(t)
	ctx := ctxTimeout(t, 30*time.Second)
	conn := `{"primary": {"driver": "postgres", "dsn": "postgres://backup@db-0/shop"}}`
	sts, err := h.p.c.Core.AppsV1().StatefulSets(h.ns).Get(ctx, "db", getOpts)
	if err != nil {
		t.Fatal(err)
	}
	sts.Annotations[AnnotationConnections] = conn
	if _, err := h.p.c.Core.AppsV1().StatefulSets(h.ns).Update(ctx, sts, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	settings := &AppSettings{Platform: h.p}
	app, err := settings.Application(h.ns)
	if err != nil || app.Spec.Connections["primary"].DSN != "postgres://backup@db-0/shop" {
		t.Fatalf("one declaration: %v, %+v", err, app)
	}
	dep, err := h.p.c.Core.AppsV1().Deployments(h.ns).Get(ctx, "web", getOpts)
	if err != nil {
		t.Fatal(err)
	}
	if dep.Annotations == nil {
		dep.Annotations = map[string]string{}
	}
	dep.Annotations[AnnotationConnections] = conn
	if _, err := h.p.c.Core.AppsV1().Deployments(h.ns).Update(ctx, dep, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = settings.Application(h.ns)
	if !errors.Is(err, ErrInvalidSettings) || !strings.Contains(err.Error(), `declares "primary", which another object of the application declares too`) {
		t.Fatalf("err = %v, want ErrInvalidSettings naming the connection declared twice", err)
	}
}

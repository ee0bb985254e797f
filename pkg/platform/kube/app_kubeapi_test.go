//go:build kubeapi

package kube

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	kubetest "github.com/tidemark-dev/tidemark/tests/kube"
)

const dbApp = `
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
  labels: {app: db}
  annotations: {tidemark.io/blueprint: postgres-physical}
spec:
  replicas: 11
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - {name: postgres, image: postgres:15}
      - {name: exporter, image: exporter:1}
  volumeClaimTemplates:
  - metadata: {name: data, labels: {app: db}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Service
metadata: {name: db, labels: {app: db}}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 5432}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: db-config, labels: {app: db}}
data: {postgresql.conf: "wal_level = replica"}
---
apiVersion: v1
kind: Secret
metadata: {name: db-credentials, labels: {app: db}}
stringData: {password: s3cret}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: db, labels: {app: db}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: db, labels: {app: db}}
rules: [{apiGroups: [""], resources: [configmaps], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: db, labels: {app: db}}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: db}
subjects: [{kind: ServiceAccount, name: db}]
---
apiVersion: v1
kind: Event
metadata: {name: db.1, labels: {app: db}}
involvedObject: {kind: StatefulSet, name: db, namespace: ${NS}}
reason: Test
message: events are never part of an application
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: other, labels: {app: other}}
spec:
  selector: {matchLabels: {app: other}}
  template:
    metadata: {labels: {app: other}}
    spec: {containers: [{name: web, image: nginx}]}
`

// setupDB creates the db application (a StatefulSet of 11 with its
// claims, Service, ConfigMap, Secret, RBAC) next to an unrelated
// Deployment, and waits for the stand-in to make the pods.
func setupDB(t *testing.T) *harness {
	h := newHarness(t)
	h.apply(dbApp)
	for i := range 11 {
		h.boundPVC(fmt.Sprintf("data-db-%d", i), "csi.tidemark.test", map[string]string{"app": "db"}, nil)
	}
	h.workloads = kubetest.StartWorkloadStandIn(t, kubetest.Config(t), h.ns)
	deadline := time.Now().Add(20 * time.Second)
	for {
		pods, err := h.p.c.Core.CoreV1().Pods(h.ns).List(context.Background(), listAll)
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) == 11 {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("the workload stand-in made %d of 11 pods", len(pods.Items))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func kinds(app *Application) []string {
	var out []string
	for _, o := range app.Objects {
		out = append(out, o.GetKind()+"/"+o.GetName())
	}
	return out
}

func TestDiscoverStatefulSetApplication(t *testing.T) {
	h := setupDB(t)
	app, err := h.p.Discover(context.Background(), AppSelector{Namespace: h.ns, Selector: "app=db"})
	if err != nil {
		t.Fatal(err)
	}
	got := kinds(app)
	for _, want := range []string{"StatefulSet/db", "Service/db", "ConfigMap/db-config", "Secret/db-credentials",
		"ServiceAccount/db", "Role/db", "RoleBinding/db", "PersistentVolumeClaim/data-db-0", "PersistentVolumeClaim/data-db-10"} {
		if !slices.Contains(got, want) {
			t.Errorf("discovery missed %s; found %v", want, got)
		}
	}
	for _, o := range got {
		if strings.HasPrefix(o, "Pod/") || strings.HasPrefix(o, "Event/") || strings.Contains(o, "other") {
			t.Errorf("discovery captured %s, which the cluster regenerates or is not the application's; found %v", o, got)
		}
	}
	if len(app.PVCs) != 11 {
		t.Errorf("PVCs = %v, want the 11 claims of db", app.PVCs)
	}
	if app.Binding == nil || app.Binding.Blueprint != "postgres-physical" || app.Binding.Annotation != AnnotationBlueprint || app.Binding.Object.GetKind() != "StatefulSet" {
		t.Fatalf("binding = %+v, want postgres-physical from the StatefulSet's tidemark.io/blueprint", app.Binding)
	}

	// The template context as a blueprint sees it: Kanister-style ranges
	// over the pods in ordinal order (db-2 before db-10).
	tc := app.TemplateContext("shop-db")
	bp := parseBlueprint(t, `
apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: postgres-physical}
spec:
  actions:
    backup:
      - name: checkpoint
        kind: exec
        noInverse: only forces a checkpoint
        exec:
          target: "{{ index .StatefulSet.Pods 0 }}"
          container: "{{ index .StatefulSet.Containers 0 }}"
          command: ["psql", "-c", "CHECKPOINT", "{{ range .StatefulSet.Pods }}{{ . }},{{ end }}", "{{ .Object.spec.serviceName }}", "{{ join .StatefulSet.PersistentVolumeClaims \" \" }}", "{{ .Namespace }}"]
      - name: snap
        kind: snapshot
    restore:
      - name: snap
        kind: snapshot
`)
	r, err := bp.Action("backup")[0].Render(tc)
	if err != nil {
		t.Fatal(err)
	}
	spec := decode[blueprint.ExecSpec](t, r.Spec)
	var pods, claims []string
	for i := range 11 {
		pods = append(pods, fmt.Sprintf("db-%d", i))
		claims = append(claims, fmt.Sprintf("data-db-%d", i))
	}
	want := []string{"psql", "-c", "CHECKPOINT", strings.Join(pods, ",") + ",", "db", strings.Join(claims, " "), h.ns}
	if spec.Target != "db-0" || spec.Container != "postgres" || !slices.Equal(spec.Command, want) {
		t.Errorf("rendered exec = %+v\nwant target db-0, container postgres, command %q", spec, want)
	}
	if !slices.Equal(tc.Targets, pods) {
		t.Errorf("Targets = %v, want %v", tc.Targets, pods)
	}
}

func TestBindingByKanisterAnnotationAndConflicts(t *testing.T) {
	h := newHarness(t)
	h.apply(`
apiVersion: apps/v1
kind: Deployment
metadata:
  name: mongo
  labels: {app: mongo}
  annotations: {kanister.kasten.io/blueprint: mongo-hooks}
spec:
  selector: {matchLabels: {app: mongo}}
  template:
    metadata: {labels: {app: mongo}}
    spec: {containers: [{name: mongod, image: mongo:7}]}
`)
	app, err := h.p.Discover(context.Background(), AppSelector{Namespace: h.ns, Selector: "app=mongo"})
	if err != nil {
		t.Fatal(err)
	}
	if app.Binding == nil || app.Binding.Blueprint != "mongo-hooks" || app.Binding.Annotation != AnnotationKanisterBlueprint {
		t.Fatalf("binding = %+v, want mongo-hooks from kanister.kasten.io/blueprint", app.Binding)
	}
	tc := app.TemplateContext("mongo")
	if tc.Deployment == nil || tc.Deployment.Name != "mongo" || !slices.Equal(tc.Deployment.Containers, []string{"mongod"}) || tc.StatefulSet != nil {
		t.Errorf("context: Deployment %+v, StatefulSet %+v", tc.Deployment, tc.StatefulSet)
	}

	// A second object naming another blueprint: refused, naming both.
	h.apply(`
apiVersion: v1
kind: ConfigMap
metadata:
  name: mongo-extra
  labels: {app: mongo}
  annotations: {tidemark.io/blueprint: something-else}
`)
	_, err = h.p.Discover(context.Background(), AppSelector{Namespace: h.ns, Selector: "app=mongo"})
	if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), `"mongo-hooks"`) || !strings.Contains(err.Error(), `"something-else"`) {
		t.Fatalf("conflicting bindings: err = %v, want ErrInvalidSpec naming both blueprints", err)
	}
}

const databaseCRD = `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: databases.example.tidemark.io}
spec:
  group: example.tidemark.io
  scope: Namespaced
  names: {plural: databases, singular: database, kind: Database}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
`

func TestDiscoverCustomResourceApplication(t *testing.T) {
	h := newHarness(t)
	installCRD(t, h, databaseCRD)
	h.apply(`
apiVersion: example.tidemark.io/v1
kind: Database
metadata:
  name: orders
  annotations: {tidemark.io/blueprint: orders-operator}
spec: {replicas: 1}
`)
	cr, err := h.get(dbGVR, h.ns, "orders")
	if err != nil {
		t.Fatal(err)
	}
	// What the operator made, owned by the Database.
	h.apply(fmt.Sprintf(`
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: orders
  labels: {app: orders}
  ownerReferences: [{apiVersion: example.tidemark.io/v1, kind: Database, name: orders, uid: %s, controller: true}]
spec:
  replicas: 1
  selector: {matchLabels: {app: orders}}
  template:
    metadata: {labels: {app: orders}}
    spec: {containers: [{name: db, image: db:1}]}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
`, cr.GetUID()))
	h.boundPVC("data-orders-0", "csi.tidemark.test", nil, nil)
	h.apply(`
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
`)
	kubetest.StartWorkloadStandIn(t, kubetest.Config(t), h.ns)
	waitFor(t, "pod orders-0", func() bool {
		_, err := h.p.c.Core.CoreV1().Pods(h.ns).Get(context.Background(), "orders-0", getOpts)
		return err == nil
	})

	app, err := h.p.Discover(context.Background(), AppSelector{Namespace: h.ns, Resource: &ObjectRef{APIVersion: "example.tidemark.io/v1", Kind: "Database", Name: "orders"}})
	if err != nil {
		t.Fatal(err)
	}
	got := kinds(app)
	if !slices.Equal(got, []string{"PersistentVolumeClaim/data-orders-0", "Database/orders"}) {
		t.Errorf("objects = %v, want the Database and its claim (the StatefulSet and pod are the operator's to recreate; the ConfigMap is not the application's)", got)
	}
	if app.Binding == nil || app.Binding.Blueprint != "orders-operator" || app.Binding.Object.GetKind() != "Database" {
		t.Fatalf("binding = %+v", app.Binding)
	}
	tc := app.TemplateContext("orders")
	if tc.StatefulSet == nil || !slices.Equal(tc.StatefulSet.Pods, []string{"orders-0"}) || tc.Object["kind"] != "Database" {
		t.Errorf("context: StatefulSet %+v, Object kind %v", tc.StatefulSet, tc.Object["kind"])
	}
	_, err = h.p.Discover(context.Background(), AppSelector{Namespace: h.ns, Resource: &ObjectRef{Kind: "Database", Name: "missing"}})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"missing"`) {
		t.Errorf("missing resource: err = %v", err)
	}
}

//go:build kubeapi

package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/tidemark-dev/tidemark/blueprints"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

const blueprintCRDFile = "../../../deploy/crds/tidemark.io_blueprints.yaml"

func installBlueprintCRD(t *testing.T, h *harness) {
	t.Helper()
	b, err := os.ReadFile(blueprintCRDFile)
	if err != nil {
		t.Fatal(err)
	}
	installCRD(t, h, string(b))
}

// blueprintObject turns a blueprint file into the Blueprint object a user
// would kubectl apply: metadata.description becomes an annotation.
func blueprintObject(t *testing.T, data []byte) *unstructured.Unstructured {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	o := &unstructured.Unstructured{Object: m}
	if d, ok, _ := unstructured.NestedString(m, "metadata", "description"); ok {
		unstructured.RemoveNestedField(m, "metadata", "description")
		o.SetAnnotations(map[string]string{AnnotationDescription: d})
	}
	return o
}

// createStrict creates o rejecting unknown fields, as kubectl does:
// without it the server would prune a field the schema lacks in silence.
func createStrict(h *harness, o *unstructured.Unstructured) error {
	_, err := h.p.c.Dynamic.Resource(BlueprintGVR).Namespace(h.ns).Create(context.Background(), o, metav1.CreateOptions{FieldValidation: "Strict"})
	return err
}

// bundledBlueprints returns every bundled blueprint, the Kubernetes-only ones included.
func bundledBlueprints(t *testing.T) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, fsys := range []fs.FS{blueprints.FS, blueprints.Kubernetes} {
		files, _ := fs.Glob(fsys, "*/*.yaml")
		for _, f := range files {
			b, err := fs.ReadFile(fsys, f)
			if err != nil {
				t.Fatal(err)
			}
			name := path.Dir(f)
			if _, dup := out[name]; dup {
				// The Kubernetes variant of a blueprint of every platform
				// (mariadb): the same name, so given another to sit beside it.
				b = bytes.Replace(b, []byte("\n  name: "+name+"\n"), []byte("\n  name: "+name+"-kube\n"), 1)
				name += "-kube"
			}
			out[name] = b
		}
	}
	if len(out) < 7 {
		t.Fatalf("found %d bundled blueprints", len(out))
	}
	return out
}

// Every bundled blueprint goes through the apiserver's schema unchanged
// (nothing rejected, nothing pruned) and loads back into the same blueprint
// as its file: the generated schema and the Go types agree on real input.
func TestBlueprintCRDRoundTripsEveryBundledBlueprint(t *testing.T) {
	h := newHarness(t)
	installBlueprintCRD(t, h)
	files := bundledBlueprints(t)
	for name, data := range files {
		if err := createStrict(h, blueprintObject(t, data)); err != nil {
			t.Fatalf("%s: the apiserver refused a bundled blueprint: %v", name, err)
		}
	}
	loaded, err := h.p.LoadBlueprints(context.Background(), h.ns)
	if err != nil {
		t.Fatal(err)
	}
	if len(loaded) != len(files) {
		t.Fatalf("loaded %d Blueprints, created %d", len(loaded), len(files))
	}
	for _, b := range loaded {
		want, err := blueprint.Parse(b.Metadata.Name+".yaml", files[b.Metadata.Name])
		if err != nil {
			t.Fatal(err)
		}
		got, _ := json.Marshal(b)
		exp, _ := json.Marshal(want)
		if string(got) != string(exp) {
			t.Errorf("%s: loaded from the API\n%s\nwant (from the file)\n%s", b.Metadata.Name, got, exp)
		}
	}
	one, err := h.p.LoadBlueprint(context.Background(), h.ns, "postgres")
	if err != nil || one.Metadata.Description == "" || one.Action(blueprint.ActionBackup).Step("backupmode") == nil {
		t.Errorf("LoadBlueprint(postgres) = %+v, %v", one, err)
	}
	if _, err := h.p.LoadBlueprint(context.Background(), h.ns, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing Blueprint: err = %v", err)
	}
}

func TestBlueprintCRDRejectsWhatTheSchemaForbids(t *testing.T) {
	h := newHarness(t)
	installBlueprintCRD(t, h)
	base := `
apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: NAME}
spec:
  actions:
    backup:
      - {name: snap, kind: snapshot}
      - name: wait
        kind: apply
        timeout: TIMEOUT
        apply:
          object: {apiVersion: v1, kind: ConfigMap, metadata: {name: x}}
          wait: {cel: "true"}
    restore:
      - {name: snap, kind: KIND}
`
	bp := func(name, timeout, kind string) *unstructured.Unstructured {
		r := strings.NewReplacer("NAME", name, "TIMEOUT", timeout, "KIND", kind)
		return blueprintObject(t, []byte(r.Replace(base)))
	}
	if err := createStrict(h, bp("good", "30s", "snapshot")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		o    *unstructured.Unstructured
		want string
	}{
		{bp("unknown-kind", "30s", "snapshto"), `spec.actions.restore[0].kind: Unsupported value: "snapshto"`},
		{bp("number-timeout", "30", "snapshot"), `spec.actions.backup[1].timeout`},
		{bp("bad-duration", "soon", "snapshot"), `spec.actions.backup[1].timeout`},
	} {
		err := createStrict(h, c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want the apiserver to reject it at %s", c.o.GetName(), err, c.want)
		}
	}
	noActions := blueprintObject(t, []byte("apiVersion: tidemark.io/v1alpha1\nkind: Blueprint\nmetadata: {name: empty}\nspec: {maxFreeze: 30s}\n"))
	if err := createStrict(h, noActions); err == nil || !strings.Contains(err.Error(), "spec.actions: Required value") {
		t.Errorf("no actions: err = %v", err)
	}
	typo := bp("typo", "30s", "snapshot")
	_ = unstructured.SetNestedField(typo.Object, "30s", "spec", "maxFreez")
	if err := createStrict(h, typo); err == nil || !strings.Contains(err.Error(), `unknown field "spec.maxFreez"`) {
		t.Errorf("misspelt field: err = %v", err)
	}

	// The schema cannot see everything lint does (a quiesce step before
	// the snapshot without an inverse): such a Blueprint is stored, but
	// the loader refuses it with lint's diagnostics and returns the others.
	bad := blueprintObject(t, []byte(`
apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: no-inverse}
spec:
  actions:
    backup:
      - {name: stop, kind: scale, scale: {workload: statefulset/db, replicas: 0}}
      - {name: snap, kind: snapshot}
    restore:
      - {name: snap, kind: snapshot}
`))
	if err := createStrict(h, bad); err != nil {
		t.Fatal(err)
	}
	loaded, err := h.p.LoadBlueprints(context.Background(), h.ns)
	if len(loaded) != 1 || loaded[0].Metadata.Name != "good" {
		t.Errorf("loaded %d blueprints, want only good", len(loaded))
	}
	if !errors.Is(err, ErrInvalidBlueprint) || !strings.Contains(err.Error(), "Blueprint "+h.ns+"/no-inverse") || !strings.Contains(err.Error(), "no inverse") {
		t.Errorf("err = %v, want ErrInvalidBlueprint naming no-inverse and lint's finding", err)
	}
}

package deploy

import (
	"path/filepath"
	"runtime"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// deployDir is the repository's deploy/ directory, found from this file
// so the test does not depend on its working directory.
func deployDir(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test's source file")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "deploy")
}

// render builds the kustomization at deploy/<rel> as `kubectl apply -k`
// would (kubectl embeds this same krusty library, with default options:
// files only from within each kustomization, no plugins), in its order.
func render(t testing.TB, rel string) []*unstructured.Unstructured {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(deployDir(t), rel))
	if err != nil {
		t.Fatalf("kustomize build deploy/%s: %v", rel, err)
	}
	var out []*unstructured.Unstructured
	for _, r := range rm.Resources() {
		m, err := r.Map()
		if err != nil {
			t.Fatalf("deploy/%s: %s: %v", rel, r.CurId(), err)
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
	return out
}

// overlays are the kustomizations users apply.
var overlays = []string{"overlays/dev", "overlays/ha"}

// services are the Tidemark services deployed, one Deployment each. The
// scheduler is in Tidemark's design (service.Planned) but not built into
// `tidemark serve` yet, so it has no Deployment.
var services = []string{"coordinator", "hookrunner", "snapshotter", "datamover", "catalog"}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

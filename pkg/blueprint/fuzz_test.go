package blueprint

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzParse feeds arbitrary bytes to Parse, and whatever parses to Lint and
// Render: none of them may panic, and Parse must return either a blueprint
// or Diagnostics.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.yaml")
	files := append(seeds, bundledFiles(f)...)
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(goodBlueprint))
	f.Add([]byte("a: &a [*a]"))
	f.Add([]byte("{{"))
	ctx := TemplateContext{
		App: App{Name: "a"}, Targets: []string{"t"}, StatefulSet: &Workload{Pods: []string{"p"}},
		Steps: map[string]StepResult{}, Secrets: map[string]string{}, Params: map[string]string{},
		Time: time.Unix(0, 0),
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Parse("fuzz.yaml", data)
		if err != nil {
			if _, ok := err.(Diagnostics); !ok {
				t.Fatalf("Parse returned %T, want Diagnostics", err)
			}
			return
		}
		_ = Lint(b)
		for _, a := range b.Spec.Actions {
			for i := range a {
				_, _ = a[i].Render(ctx)
				_, _ = a[i].RenderInverse(ctx)
			}
		}
	})
}

package blueprint

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// checkGolden compares got with testdata/<name>.golden, or rewrites it.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("%s changed; got:\n%s\nwant:\n%s\n(run go test -run %s -update if the change is intended)", path, got, want, t.Name())
	}
}

// diagnoseFile is what `tidemark blueprint lint` reports for one file.
func diagnoseFile(t *testing.T, path string) Diagnostics {
	t.Helper()
	b, err := ParseFile(path)
	if err != nil {
		var diags Diagnostics
		if !errors.As(err, &diags) {
			t.Fatalf("%s: %v is not Diagnostics", path, err)
		}
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: errors.Is(err, ErrInvalid) is false", path)
		}
		return diags
	}
	return Lint(b)
}

// Every bad blueprint in testdata produces the documented messages, each
// at file:line:col and with a hint.
func TestBlueprintDiagnosticsGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		if strings.HasPrefix(name, "render_") {
			continue
		}
		t.Run(name, func(t *testing.T) {
			diags := diagnoseFile(t, f)
			if len(diags) == 0 {
				t.Fatal("no diagnostics for a bad blueprint")
			}
			for _, d := range diags {
				if d.Line == 0 || d.Column == 0 {
					t.Errorf("%q has no position", d)
				}
				if d.Hint == "" {
					t.Errorf("%q says nothing about how to fix it", d)
				}
			}
			checkGolden(t, name, diags.Error()+"\n")
		})
	}
}

// A template that lints clean can still fail at render time when the
// context lacks what it names (missingkey=error): the error names the step
// and the field.
func TestBlueprintRenderMissingKeyGolden(t *testing.T) {
	b, err := ParseFile("testdata/render_missingkey.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if diags := Lint(b); diags != nil {
		t.Fatalf("lint: %v", diags)
	}
	step := &b.Action(ActionBackup)[0]
	var got []string
	for _, ctx := range []TemplateContext{
		{Secrets: map[string]string{}, Object: map[string]any{"spec": map[string]any{"serviceName": "db"}}},
		{Secrets: map[string]string{"password": "s3cret"}, Object: map[string]any{"spec": map[string]any{}}},
	} {
		_, err := step.Render(ctx)
		var re *RenderError
		if !errors.As(err, &re) || !errors.Is(err, ErrTemplate) {
			t.Fatalf("Render = %v, want a *RenderError wrapping ErrTemplate", err)
		}
		if re.Step != "dump" || !strings.HasPrefix(re.Field, "dump.env.") {
			t.Errorf("RenderError names step %q field %q", re.Step, re.Field)
		}
		got = append(got, err.Error())
	}
	checkGolden(t, "render_missingkey", strings.Join(got, "\n")+"\n")
}

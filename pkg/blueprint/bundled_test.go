package blueprint

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/blueprints"
)

const bundledDir = "../../blueprints"

// bundledFiles returns every blueprints/<app>/blueprint.yaml.
func bundledFiles(t testing.TB) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(bundledDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == "blueprint.yaml" {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 6 {
		t.Fatalf("found %d bundled blueprints under %s, want at least 6", len(files), bundledDir)
	}
	return files
}

// runContext is a plausible context for a run of b: a three-pod
// StatefulSet, every declared secret and parameter set.
func runContext(t testing.TB, b *Blueprint) TemplateContext {
	t.Helper()
	params, err := b.ParamValues(nil)
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{}
	for _, s := range b.Spec.Secrets {
		secrets[s] = `pa$$ "word" 'x' \ ; rm -rf /`
	}
	pods := []string{"shop-db-0", "shop-db-1", "shop-db-2"}
	return TemplateContext{
		App:       App{Name: "shop-db", Namespace: "shop", Volumes: map[string]string{"data": "data-shop-db-0"}},
		Namespace: "shop",
		Targets:   pods,
		StatefulSet: &Workload{Name: "shop-db", Namespace: "shop", Pods: pods,
			Containers: []string{"db"}, PersistentVolumeClaims: []string{"data-shop-db-0", "data-shop-db-1", "data-shop-db-2"}},
		Object:  map[string]any{"spec": map[string]any{"serviceName": "shop-db-headless"}},
		Steps:   map[string]StepResult{},
		Secrets: secrets,
		Params:  params,
		Time:    time.Date(2026, 3, 1, 2, 0, 0, 0, time.UTC),
	}
}

// renderAction renders every step of an action in order, as the
// coordinator would, feeding each step's promised outputs to later ones.
func renderAction(t *testing.T, a Action, ctx TemplateContext) []RenderedStep {
	t.Helper()
	var out []RenderedStep
	for i := range a {
		s := &a[i]
		r, err := s.Render(ctx)
		if err != nil {
			t.Fatalf("render %s: %v", s.Name, err)
		}
		out = append(out, r)
		res := StepResult{Output: map[string]string{}}
		for _, o := range s.PromisedOutputs() {
			res.Output[o] = "value-of-" + o
		}
		ctx.Steps[s.Name] = res
		if r.InverseDeferred {
			if _, err := s.RenderInverse(ctx); err != nil {
				t.Fatalf("render inverse of %s: %v", s.Name, err)
			}
		}
	}
	return out
}

// Every bundled blueprint lints clean, has a README, and renders every step
// of every action against a plausible context.
func TestBundledBlueprintsLintCleanAndRender(t *testing.T) {
	for _, f := range bundledFiles(t) {
		dir := filepath.Base(filepath.Dir(f))
		t.Run(dir, func(t *testing.T) {
			b, err := ParseFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if diags := Lint(b); diags != nil {
				t.Fatalf("lint:\n%v", diags)
			}
			if b.Metadata.Name != dir {
				t.Errorf("metadata.name %q differs from its directory %q", b.Metadata.Name, dir)
			}
			readme, err := os.ReadFile(filepath.Join(filepath.Dir(f), "README.md"))
			if err != nil {
				t.Error(err)
			}
			for _, want := range []string{"onsisten", "ested"} {
				if !strings.Contains(string(readme), want) {
					t.Errorf("README.md does not say what consistency it gives and what was tested (no %q)", want)
				}
			}
			backupCtx := runContext(t, b)
			backup := renderAction(t, b.Action(ActionBackup), backupCtx)
			for _, restore := range []*RestoreInfo{{Mode: "new", Target: "/srv/restore"}, {Mode: "production"}, nil} {
				name := ActionRestore
				if restore == nil {
					name = ActionDelete
				}
				ctx := runContext(t, b)
				ctx.Backup = &BackupRecord{Steps: backupCtx.Steps, Time: backupCtx.Time}
				ctx.Restore = restore
				renderAction(t, b.Action(name), ctx)
			}
			for _, r := range backup {
				if r.Kind != KindSnapshot && !r.Skip && !json.Valid(r.Spec) {
					t.Errorf("step %s rendered invalid JSON %s", r.Name, r.Spec)
				}
			}
		})
	}
}

// The PostgreSQL blueprint renders the statements the issue asks for, and
// its label is the same whenever the step is rendered again in one run.
func TestBundledPostgresBlueprintRendersBackupMode(t *testing.T) {
	b, err := ParseFile(filepath.Join(bundledDir, "postgres", "blueprint.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	step := b.Action(ActionBackup).Step("backupmode")
	r, err := step.Render(runContext(t, b))
	if err != nil {
		t.Fatal(err)
	}
	var spec SQLSpec
	if err := json.Unmarshal(r.Spec, &spec); err != nil {
		t.Fatal(err)
	}
	want := SQLSpec{
		Connection: "primary",
		Statements: []string{"SELECT pg_backup_start(label => 'shop-db-1772330400', fast => true)"},
		Hold:       true,
		Release:    []string{"SELECT labelfile, spcmapfile, pg_walfile_name(lsn) AS stopwalfile FROM pg_backup_stop(wait_for_archive => false)"},
	}
	if got, _ := json.Marshal(spec); string(got) != mustJSON(t, want) {
		t.Errorf("spec = %s, want %s", got, mustJSON(t, want))
	}
	if !r.Hold || r.Inverse != nil || !step.HasInverse() {
		t.Errorf("hold %v inverse %v HasInverse %v: a held session is its own inverse", r.Hold, r.Inverse, step.HasInverse())
	}
}

// MongoDB's lock step reaches every pod of the StatefulSet by DNS name, and
// its inverse (rendered with the step) unlocks the same pods.
func TestBundledMongoDBBlueprintLocksEveryPod(t *testing.T) {
	b, err := ParseFile(filepath.Join(bundledDir, "mongodb", "blueprint.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := b.Action(ActionBackup).Step("fsynclock").Render(runContext(t, b))
	if err != nil {
		t.Fatal(err)
	}
	const hosts = "shop-db-0.shop-db-headless.shop.svc:27017 shop-db-1.shop-db-headless.shop.svc:27017 shop-db-2.shop-db-headless.shop.svc:27017"
	for _, rs := range []*RenderedStep{&r, r.Inverse} {
		if rs == nil {
			t.Fatal("the inverse was not rendered with the step")
		}
		var spec ExecSpec
		if err := json.Unmarshal(rs.Spec, &spec); err != nil {
			t.Fatal(err)
		}
		if spec.Env["MONGO_HOSTS"] != hosts || spec.Target != "shop-db-0" {
			t.Errorf("%s: target %q hosts %q", rs.Name, spec.Target, spec.Env["MONGO_HOSTS"])
		}
	}
	if r.Inverse.Name != "fsyncunlock" || r.Inverse.Retry == nil || r.Inverse.Retry.Attempts != 5 {
		t.Errorf("inverse = %+v", r.Inverse)
	}
}

// The binary carries exactly the blueprints in the directory.
func TestBundledBlueprintsAreEmbedded(t *testing.T) {
	files := bundledFiles(t)
	for _, f := range files {
		name := filepath.Base(filepath.Dir(f)) + "/blueprint.yaml"
		embedded, err := blueprints.FS.ReadFile(name)
		if err != nil {
			t.Errorf("%s is not embedded: %v", name, err)
			continue
		}
		onDisk, err := os.ReadFile(f)
		if err != nil || string(onDisk) != string(embedded) {
			t.Errorf("%s: the embedded copy differs from %s (%v)", name, f, err)
		}
	}
	all, _ := fs.Glob(blueprints.FS, "*/blueprint.yaml")
	if len(all) != len(files) {
		t.Errorf("%d embedded blueprints, %d on disk", len(all), len(files))
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/services/datamover"
)

// moverRun is one `tidemark mover` process: its exit code, output and
// the result it wrote.
type moverRun struct {
	code           int
	stdout, stderr string
	result         datamover.MoveResult
	resultRaw      string
}

// runMover runs `tidemark mover` as a process, as a mover pod does, with
// env as its whole environment (plus what the test binary needs).
func runMover(t *testing.T, env []string, direction string, item any, path string) moverRun {
	t.Helper()
	raw, err := json.Marshal(item)
	if err != nil {
		t.Fatal(err)
	}
	resultFile := filepath.Join(t.TempDir(), "termination-log")
	cmd := exec.Command(os.Args[0], "mover", "--direction", direction, "--path", path, "--result-file", resultFile,
		"--cache-dir", t.TempDir(), "--item", string(raw))
	cmd.Env = append([]string{"TIDEMARK_TEST_RUN_MAIN=1", "HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH")}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	r := moverRun{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	if b, err := os.ReadFile(resultFile); err == nil && len(b) > 0 {
		r.resultRaw = string(b)
		if err := json.Unmarshal(b, &r.result); err != nil {
			t.Fatalf("result file %q: %v", b, err)
		}
	}
	return r
}

// moverRepo makes a filesystem repository, as the data mover service
// would have, and returns the environment that opens it.
func moverRepo(t *testing.T, password string) (string, []string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repository")
	r, err := repository.Open(context.Background(), repository.Config{Path: dir, Password: password, CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	pwFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	return dir, []string{repository.EnvPath + "=" + dir, repository.EnvPasswordFile + "=" + pwFile}
}

func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
	}
}

// readTree returns every regular file under dir by its slash path, except
// under the names skipped.
func readTree(t *testing.T, dir string, skip ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		for _, s := range skip {
			if rel == s {
				return filepath.SkipDir
			}
		}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[filepath.ToSlash(rel)] = string(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestMoverCommandMovesOneVolumeEachWay(t *testing.T) {
	repoDir, env := moverRepo(t, "mover-test-password")
	vol := t.TempDir()
	files := map[string]string{"PG_VERSION": "17\n", "base/1/1259": strings.Repeat("x", 70000), "global/pg_control": "control"}
	writeTree(t, vol, files)

	run := events.RunID("0197a3c4-mover-run")
	exp := runMover(t, env, "export", events.VolumeExportRequested{
		RunID: run, Application: "shop/db", Volume: "data", SourceKind: datamover.SourceSnapshot,
		SnapshotID: "shop/tm-snap", Repository: "default", IdempotencyKey: "k1",
	}, vol)
	if exp.code != 0 {
		t.Fatalf("export exited %d: %s", exp.code, exp.stderr)
	}
	if exp.result.ManifestID == "" || exp.result.Files != 3 || exp.result.Bytes != int64(3+70000+7) || exp.result.Error != "" {
		t.Fatalf("export result %+v, want a snapshot of 3 files", exp.result)
	}
	var last map[string]datamover.MoveResult
	lines := strings.Split(strings.TrimSpace(exp.stdout), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last["result"].ManifestID != exp.result.ManifestID {
		t.Errorf("last output line %q: want the result", lines[len(lines)-1])
	}
	r, err := repository.Open(context.Background(), repository.Config{Path: repoDir, Password: "mover-test-password", CacheDir: t.TempDir(), NoCreate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	if ok, err := r.HasSnapshot(context.Background(), exp.result.ManifestID); !ok || err != nil {
		t.Fatalf("the repository has no snapshot %s: %v", exp.result.ManifestID, err)
	}

	// Into an empty volume (a new PVC).
	restored := t.TempDir()
	imp := runMover(t, env, "import", events.VolumeImportRequested{
		RunID: run, Volume: "data", ManifestID: events.ManifestID(exp.result.ManifestID), Repository: "default",
		TargetKind: datamover.TargetDirectory, Target: "shop/data-restored", IdempotencyKey: "k2",
	}, restored)
	if imp.code != 0 {
		t.Fatalf("import exited %d: %s", imp.code, imp.stderr)
	}
	if got := readTree(t, restored); fmt.Sprint(got) != fmt.Sprint(files) {
		t.Errorf("restored %v, want %v", got, files)
	}

	// In place: what the volume held is kept inside it, the rest replaced;
	// lost+found, the filesystem's own, stays.
	inPlace := t.TempDir()
	writeTree(t, inPlace, map[string]string{"PG_VERSION": "16\n", "stray": "after the backup", "lost+found/#12": "fsck"})
	imp = runMover(t, env, "import", events.VolumeImportRequested{
		RunID: run, Volume: "data", ManifestID: events.ManifestID(exp.result.ManifestID), Repository: "default",
		TargetKind: datamover.TargetReplace, Target: "shop/data", IdempotencyKey: "k3",
	}, inPlace)
	if imp.code != 0 {
		t.Fatalf("replacing import exited %d: %s", imp.code, imp.stderr)
	}
	kept := imp.result.Previous
	if !strings.HasPrefix(kept, ".tidemark-previous-") {
		t.Fatalf("previous = %q, want the kept copy inside the volume", kept)
	}
	if got := readTree(t, inPlace, kept, "lost+found"); fmt.Sprint(got) != fmt.Sprint(files) {
		t.Errorf("volume after the replacing import: %v, want %v", got, files)
	}
	if got := readTree(t, filepath.Join(inPlace, kept)); got["PG_VERSION"] != "16\n" || got["stray"] != "after the backup" {
		t.Errorf("kept copy %v: want what the volume held", got)
	}
	if _, err := os.Stat(filepath.Join(inPlace, "lost+found", "#12")); err != nil {
		t.Errorf("lost+found was moved: %v", err)
	}
}

func TestMoverCommandFailsWithOneLineReason(t *testing.T) {
	const password = "the-right-password-5f2c"
	repoDir, env := moverRepo(t, password)
	vol := t.TempDir()
	writeTree(t, vol, map[string]string{"a": "1"})
	item := events.VolumeExportRequested{RunID: "r1", Application: "shop/db", Volume: "data", SourceKind: "snapshot",
		SnapshotID: "shop/s", Repository: "default", IdempotencyKey: "k"}

	check := func(name string, r moverRun, wantCode int, want string, permanent bool) {
		t.Helper()
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		last := lines[len(lines)-1]
		if r.code != wantCode || !strings.HasPrefix(last, "tidemark: ") || !strings.Contains(last, want) {
			t.Errorf("%s: exit %d, last stderr line %q; want exit %d and a line with %q", name, r.code, last, wantCode, want)
		}
		if wantCode == 1 && (!strings.Contains(r.result.Error, want) || r.result.Permanent != permanent || strings.Contains(r.result.Error, "\n")) {
			t.Errorf("%s: result %+v, want one line with %q, permanent %v", name, r.result, want, permanent)
		}
		for _, s := range []string{r.stdout, r.stderr, r.resultRaw} {
			if strings.Contains(s, password) || strings.Contains(s, "wrong-password-9d1e") {
				t.Errorf("%s: a password is in the output: %q", name, s)
			}
		}
	}

	wrong := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(wrong, []byte("wrong-password-9d1e"), 0o400); err != nil {
		t.Fatal(err)
	}
	check("wrong password", runMover(t, []string{repository.EnvPath + "=" + repoDir, repository.EnvPasswordFile + "=" + wrong}, "export", item, vol),
		1, "password is wrong", true)

	missing := filepath.Join(t.TempDir(), "no-repository")
	check("no repository there", runMover(t, []string{repository.EnvPath + "=" + missing, env[1]}, "export", item, vol), 1, "no repository", true)
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a mover created %s: %v (it must never create a repository)", missing, err)
	}
	check("no repository named", runMover(t, []string{env[1]}, "export", item, vol), 1, repository.EnvPath, true)

	check("a snapshot the repository does not have", runMover(t, env, "import", events.VolumeImportRequested{
		RunID: "r1", Volume: "data", ManifestID: "k0123456789abcdef0123456789abcdef", Repository: "default",
		TargetKind: "directory", Target: "shop/data", IdempotencyKey: "k"}, t.TempDir()), 1, "not found", true)
	check("a dump export", runMover(t, env, "export", events.VolumeExportRequested{RunID: "r1", Application: "shop/db", Volume: "dump",
		SourceKind: "dump", DumpStep: "dump", Repository: "default", IdempotencyKey: "k"}, vol), 1, "a mover moves volumes", true)
	check("a volume not mounted", runMover(t, env, "export", item, filepath.Join(vol, "nothing")), 1, "not mounted", true)

	bad := exec.Command(os.Args[0], "mover", "--direction", "sideways", "--item", "{}")
	bad.Env = []string{"TIDEMARK_TEST_RUN_MAIN=1"}
	out, err := bad.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "--direction") {
		t.Errorf("a bad --direction: %v %s, want exit 2 naming the flag", err, out)
	}
}

func TestServeRejectsBadMoverFlagsByName(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--mover-limit", "0"}, "--mover-limit 0"},
		{[]string{"--mover-limit", "1000"}, "--mover-limit 1000"},
		{[]string{"--mover-memory-limit", "lots"}, `--mover-memory-limit "lots"`},
		{[]string{"--mover-cpu-request", "-1"}, `--mover-cpu-request "-1"`},
		{[]string{"--mover-memory-request", "4Gi"}, "--mover-memory-request 4Gi is above --mover-memory-limit 2Gi"},
		{[]string{"--mover-node-selector", "disktype"}, `--mover-node-selector "disktype"`},
		{[]string{"--mover-tolerations", "dedicated=backup:Sometimes"}, `--mover-tolerations "dedicated=backup:Sometimes": effect "Sometimes"`},
		{[]string{"--mover-image-pull-policy", "Maybe"}, "--mover-image-pull-policy"},
		{[]string{"--mover-service-account", "Not_A_Name"}, "--mover-service-account"},
		{[]string{"--mover-start-timeout", "10ms"}, "--mover-start-timeout"},
	} {
		_, err := runTidemark(t, context.Background(), append([]string{"serve", "--data-dir", t.TempDir()}, c.args...)...)
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.As(err, &ue) {
			t.Errorf("serve %v: %v, want a usage error with %q", c.args, err, c.want)
		}
	}

	var f moverFlags
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	f.register(fs)
	if err := fs.Parse([]string{"--mover-node-selector", "kubernetes.io/os=linux,disk=ssd", "--mover-tolerations", "dedicated=backup:NoSchedule,gpu",
		"--mover-cpu-limit", "2", "--mover-image", "registry.example/tidemark:v1"}); err != nil {
		t.Fatal(err)
	}
	o, limit, err := f.options()
	if err != nil {
		t.Fatal(err)
	}
	if limit != 4 || o.NodeSelector["disk"] != "ssd" || len(o.Tolerations) != 2 || o.Tolerations[0].Effect != "NoSchedule" ||
		o.Tolerations[0].Value != "backup" || o.Tolerations[1].Operator != "Exists" || o.Tolerations[1].Effect != "" ||
		o.Resources.Limits.Cpu().String() != "2" || o.Resources.Requests.Memory().String() != "256Mi" || o.ImagePullPolicy != "IfNotPresent" {
		t.Errorf("options %+v, limit %d", o, limit)
	}
}

package datamover

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/tests/bustest"
)

// playedPod is a TEST DOUBLE of PodMover for what needs a kubelet and
// cannot run here: a mover pod's log (read through pods/log) and its end
// (from the pod's status). It plays a given log and end through the same
// code PodMover reads them with (RelayProgress, result), so the bus shows
// what a data mover on Kubernetes publishes for them. The pods themselves
// are tested against a real apiserver (cmd/tidemark, make test-kube).
type playedPod struct {
	log string
	end kube.MoverEnd
}

var movingPod = &kube.Mover{Pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "tm-mv-e-run-data-0123456789"}}}

func (p playedPod) Export(_ context.Context, _ events.VolumeExportRequested, progress func(repository.Progress)) (repository.ExportResult, error) {
	RelayProgress(strings.NewReader(p.log), progress)
	res, err := result(movingPod, p.end)
	if err != nil {
		return repository.ExportResult{}, err
	}
	return repository.ExportResult{ManifestID: res.ManifestID, Files: res.Files, Bytes: res.Bytes, StartedAt: res.StartedAt, FinishedAt: res.FinishedAt}, nil
}

func (p playedPod) Import(context.Context, events.VolumeImportRequested, func(repository.Progress)) (repository.ImportResult, string, error) {
	return repository.ImportResult{}, "", ErrUnsupported
}

func TestWhatAMoverPodReportsIsPublished(t *testing.T) {
	var log strings.Builder
	for i := range 3 {
		if err := WriteProgress(&log, repository.Progress{BytesDone: int64(i+1) * 100, BytesTotal: 300, FilesDone: int64(i + 1), FilesTotal: 3}); err != nil {
			t.Fatal(err)
		}
		log.WriteString("time=… level=INFO msg=\"not a progress line\"\n")
	}
	started := time.Date(2025, 11, 3, 4, 5, 6, 0, time.UTC)
	cases := []struct {
		name string
		pod  playedPod
		// a success, or a failure that mentions want
		success   bool
		want      []string
		permanent bool
	}{
		{"success", playedPod{log.String(), kube.MoverEnd{Succeeded: true, Reason: "Completed",
			Message: fmt.Sprintf(`{"manifestId":"k1","files":3,"bytes":300,"startedAt":%q,"finishedAt":%q}`, started.Format(time.RFC3339), started.Add(time.Second).Format(time.RFC3339))}},
			true, nil, false},
		{"the mover failed", playedPod{"", kube.MoverEnd{Reason: "Error", ExitCode: 1, Message: `{"error":"opening the repository: repository password is wrong","permanent":true}`}},
			false, []string{"mover pod shop/tm-mv-e-run-data-0123456789: opening the repository: repository password is wrong"}, true},
		{"the kubelet killed it", playedPod{"", kube.MoverEnd{Reason: "OOMKilled", ExitCode: 137, Message: "line 1\nline 2\nline 3\nline 4\nline 5\nline 6\nfatal error: out of memory"}},
			false, []string{"OOMKilled, exit code 137", "line 3 | line 4 | line 5 | line 6 | fatal error: out of memory"}, false},
		{"it succeeded without a result", playedPod{"", kube.MoverEnd{Succeeded: true, Reason: "Completed", Message: "done"}},
			false, []string{"succeeded without reporting a result"}, false},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := bustest.Start(t)
			startMover(t, env, Config{Repository: &openOnUse{}, Volumes: c.pod})
			run := events.RunID(fmt.Sprintf("run-played-%d", i))
			cmd := exportCmd(run, string(run)+":export:data", "shop/snap")
			env.Publish(t, cmd)
			if c.success {
				ev := env.WaitFor(t, 30*time.Second, "volume.exported", fact(func(p events.VolumeExported) bool { return p.RunID == run }))
				if p, _ := events.As[events.VolumeExported](ev); p.ManifestID != "k1" || p.Files != 3 || p.Bytes != 300 || !p.StartedAt.Equal(started) {
					t.Errorf("exported %+v", p)
				}
				var got []int64
				for _, f := range env.Facts() {
					if p, ok := events.As[events.VolumeExportProgress](f); ok && p.RunID == run && f.CausationID == cmd.ID {
						got = append(got, p.BytesDone)
					}
				}
				if fmt.Sprint(got) != "[100 200 300]" {
					t.Errorf("progress relayed: %v, want every progress line of the log, in order", got)
				}
				return
			}
			ev := env.WaitFor(t, 30*time.Second, "volume.export.failed", fact(func(p events.VolumeExportFailed) bool { return p.RunID == run }))
			p, _ := events.As[events.VolumeExportFailed](ev)
			for _, w := range c.want {
				if !strings.Contains(p.Error, w) {
					t.Errorf("failure %q: want %q in it", p.Error, w)
				}
			}
			if p.Permanent != c.permanent {
				t.Errorf("permanent = %v, want %v", p.Permanent, c.permanent)
			}
		})
	}
}

// A mover pod gets the settings as values and the secrets only as files
// of its Secret, whichever way this process was given them.
func TestMoverRepositoryPutsSecretsInFilesOnly(t *testing.T) {
	env, creds := MoverRepository(repository.Config{
		Password: "pw-1", Tuning: repository.Tuning{Compression: "zstd-fastest"},
		S3: &repository.S3{Endpoint: "http://minio.storage:9000", Bucket: "b", Prefix: "p/", Region: "eu", AccessKeyID: "AK", SecretAccessKey: "SK-secret", RootCA: []byte("PEM")},
	})
	for k, v := range env {
		for _, secret := range []string{"pw-1", "AK", "SK-secret", "PEM"} {
			if v == secret {
				t.Errorf("%s=%s: a secret as a value", k, v)
			}
		}
	}
	for k, want := range map[string]string{
		repository.EnvS3Bucket: "b", repository.EnvS3Endpoint: "http://minio.storage:9000", repository.EnvS3Prefix: "p/", repository.EnvS3Region: "eu",
		repository.EnvCompression: "zstd-fastest", repository.EnvPasswordFile: kube.MoverCredentialsPath + "/password",
		repository.EnvS3SecretKey + "_FILE": kube.MoverCredentialsPath + "/s3-secret-key", repository.EnvS3CAFile: kube.MoverCredentialsPath + "/s3-ca.pem",
	} {
		if env[k] != want {
			t.Errorf("%s=%q, want %q", k, env[k], want)
		}
	}
	if string(creds["password"]) != "pw-1" || string(creds["s3-access-key"]) != "AK" || string(creds["s3-secret-key"]) != "SK-secret" || string(creds["s3-ca.pem"]) != "PEM" {
		t.Errorf("credentials %v", creds)
	}
	// What the pod's environment names, `tidemark mover` reads back.
	dir := t.TempDir()
	for name, data := range creds {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o400); err != nil {
			t.Fatal(err)
		}
	}
	s3, err := repository.S3FromEnvironment(func(k string) string { return strings.Replace(env[k], kube.MoverCredentialsPath, dir, 1) })
	if err != nil {
		t.Fatal(err)
	}
	if s3.AccessKeyID != "AK" || s3.SecretAccessKey != "SK-secret" || string(s3.RootCA) != "PEM" || s3.Bucket != "b" {
		t.Errorf("read back %+v", s3)
	}
}

// A replacing import into a volume's root that died while keeping the
// previous contents goes on keeping them when redelivered, rather than
// taking what is left for an earlier restored copy; once done, another
// redelivery replaces only its own copy.
func TestReplaceContentsResumesAfterACrash(t *testing.T) {
	ctx := context.Background()
	repo, err := repository.Open(ctx, repository.Config{Path: filepath.Join(t.TempDir(), "repository"), Password: "pw", CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close(ctx)
	src := t.TempDir()
	write := func(dir string, files map[string]string) {
		for n, c := range files {
			if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, n)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(src, map[string]string{"PG_VERSION": "17", "base/1": "backup"})
	exp, err := MoveOne(ctx, repo, Item{Export: &events.VolumeExportRequested{RunID: "run-a", Application: "shop/db", Volume: "data", SourceKind: SourceSnapshot}}, src, nil)
	if err != nil {
		t.Fatal(err)
	}

	root := t.TempDir()
	write(root, map[string]string{"a": "old a", "b": "old b", "c/d": "old d"})
	run := events.RunID("0197ffee-restore")
	kept := filepath.Join(root, ".tidemark-previous-"+runTag(run))
	// The crash: "a" was kept, "b" and "c" not yet, no marker.
	if err := os.Mkdir(kept, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(root, "a"), filepath.Join(kept, "a")); err != nil {
		t.Fatal(err)
	}
	req := &events.VolumeImportRequested{RunID: run, Volume: "data", ManifestID: events.ManifestID(exp.ManifestID), TargetKind: TargetReplace, Target: "shop/data"}
	for attempt := range 2 {
		res, err := MoveOne(ctx, repo, Item{Import: req}, root, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Previous != filepath.Base(kept) {
			t.Errorf("attempt %d: previous = %q", attempt, res.Previous)
		}
		for n, want := range map[string]string{"PG_VERSION": "17", "base/1": "backup", filepath.Base(kept) + "/a": "old a", filepath.Base(kept) + "/b": "old b", filepath.Base(kept) + "/c/d": "old d"} {
			if b, err := os.ReadFile(filepath.Join(root, n)); err != nil || string(b) != want {
				t.Errorf("attempt %d: %s = %q %v, want %q", attempt, n, b, err, want)
			}
		}
		entries, _ := os.ReadDir(root)
		if len(entries) != 3 {
			t.Errorf("attempt %d: the volume holds %d entries, want PG_VERSION, base and the kept copy", attempt, len(entries))
		}
	}
}

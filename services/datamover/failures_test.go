package datamover

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/tests/bustest"
	"github.com/tidemark-dev/tidemark/tests/s3server"
)

// The test binary doubles as a data mover process (TIDEMARK_TEST_MOVER=1),
// so a test can SIGKILL a mover in the middle of an export.
func TestMain(m *testing.M) {
	if os.Getenv("TIDEMARK_TEST_MOVER") == "1" {
		os.Exit(moverMain())
	}
	os.Exit(m.Run())
}

// moverMain runs one data mover against the NATS server and repository
// the environment names, until SIGTERM.
func moverMain() int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	fail := func(err error) int { log.Error("test mover", "err", err); return 1 }
	ackWait, err := time.ParseDuration(os.Getenv("TIDEMARK_TEST_ACK_WAIT"))
	if err != nil {
		return fail(err)
	}
	checkpoint, err := time.ParseDuration(os.Getenv("TIDEMARK_TEST_CHECKPOINT"))
	if err != nil {
		return fail(err)
	}
	nc, err := nats.Connect(os.Getenv("TIDEMARK_TEST_NATS_URL"))
	if err != nil {
		return fail(err)
	}
	defer nc.Close()
	b, err := bus.New(nc, bus.WithSource("tidemark/test-mover"), bus.WithLogger(log))
	if err != nil {
		return fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	repo, err := repository.Open(ctx, repository.Config{
		Path: os.Getenv("TIDEMARK_TEST_REPOSITORY"), Password: os.Getenv(repository.EnvPassword),
		CacheDir: os.Getenv("TIDEMARK_TEST_CACHE_DIR"), ProgressInterval: 100 * time.Millisecond, CheckpointInterval: checkpoint,
	})
	if err != nil {
		return fail(err)
	}
	defer repo.Close(context.Background())
	dir := os.Getenv("TIDEMARK_TEST_VOLUME")
	s, err := New(Config{Repository: repo, Resolver: fixedResolver(dir), Concurrency: 1, AckWait: ackWait, Logger: log}, b)
	if err != nil {
		return fail(err)
	}
	log.Info("test mover ready")
	if err := s.Run(ctx); err != nil {
		return fail(err)
	}
	return 0
}

// fixedResolver resolves every snapshot to dir.
func fixedResolver(dir string) Resolver {
	return func(context.Context, events.SnapshotID) (string, error) { return dir, nil }
}

// startMover runs an in-process mover until the test ends.
func startMover(t *testing.T, env *bustest.Env, cfg Config) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	s, err := New(cfg, env.Bus)
	if err != nil {
		t.Fatal(err)
	}
	runService(t, s.Run)
}

// runService runs run until the test ends.
func runService(t *testing.T, run func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the data mover did not stop")
		}
	})
}

// randomVolume writes files of random (incompressible) data under a new
// directory: n files of size bytes each.
func randomVolume(t *testing.T, n, size int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "volume")
	rng := rand.New(rand.NewPCG(uint64(n), uint64(size)))
	buf := make([]byte, size)
	for i := range n {
		for j := 0; j+8 <= len(buf); j += 8 {
			v := rng.Uint64()
			for k := range 8 {
				buf[j+k] = byte(v >> (8 * k))
			}
		}
		p := filepath.Join(dir, fmt.Sprintf("d%d", i%8), fmt.Sprintf("f%03d.bin", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, buf, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("d0/f000.bin", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// treeOf describes every entry under dir: type and mode, size, content
// hash, symlink target, and mtime for files.
func treeOf(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		desc := fi.Mode().String()
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		case fi.Mode().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %d %s %d", fi.Size(), hex.EncodeToString(h.Sum(nil)), fi.ModTime().UnixNano())
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func assertSameTree(t *testing.T, want, got map[string]string) {
	t.Helper()
	for rel, w := range want {
		if g := got[rel]; g != w {
			t.Errorf("%s: restored %q, want %q", rel, g, w)
		}
	}
	for rel := range got {
		if _, ok := want[rel]; !ok {
			t.Errorf("%s: restored but not in the source", rel)
		}
	}
}

// importAndCompare restores manifest through the bus and compares the
// result with want.
func importAndCompare(t *testing.T, env *bustest.Env, manifest events.ManifestID, want map[string]string) {
	t.Helper()
	target := filepath.Join(t.TempDir(), "restored")
	run := events.RunID("restore-" + string(manifest)[:8])
	imp := events.New("tidemark/test", "shop/postgres", events.VolumeImportRequested{
		RunID: run, Volume: "data", ManifestID: manifest, Repository: "default",
		TargetKind: TargetDirectory, Target: target, IdempotencyKey: string(run) + ":data",
	}, time.Now())
	imp.CorrelationID = string(run)
	env.Publish(t, imp)
	env.WaitFor(t, 60*time.Second, "volume.imported", fact(func(p events.VolumeImported) bool { return p.RunID == run }))
	assertSameTree(t, want, treeOf(t, target))
}

// snapshotsOf lists the snapshots of shop/postgres.
func snapshotsOf(t *testing.T, r *repository.Repository) (complete, incomplete []repository.Snapshot) {
	t.Helper()
	all, err := r.Snapshots(t.Context(), "shop/postgres")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		if s.Incomplete == "" {
			complete = append(complete, s)
		} else {
			incomplete = append(incomplete, s)
		}
	}
	return complete, incomplete
}

// A mover killed with SIGKILL in the middle of an export loses nothing:
// the work item goes to another mover once the dead one stops
// heartbeating it, that mover resumes from the dead one's last checkpoint
// instead of uploading everything again, exactly one volume.exported is
// published, and the restore is identical to the volume.
func TestMoverKilledMidExport(t *testing.T) {
	env := bustest.Start(t)
	repoPath := filepath.Join(t.TempDir(), "repository")
	const password = "kill-test-password"
	const ackWait = 2 * time.Second
	vol := randomVolume(t, 96, 1<<20)
	want := treeOf(t, vol)
	const total = 96 << 20

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TIDEMARK_TEST_MOVER=1",
		"TIDEMARK_TEST_NATS_URL="+env.Server.ClientURL(), "TIDEMARK_TEST_REPOSITORY="+repoPath,
		repository.EnvPassword+"="+password, "TIDEMARK_TEST_CACHE_DIR="+t.TempDir(),
		"TIDEMARK_TEST_VOLUME="+vol, "TIDEMARK_TEST_ACK_WAIT="+ackWait.String(), "TIDEMARK_TEST_CHECKPOINT=300ms")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var logMu sync.Mutex
	var logs []string
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			logMu.Lock()
			logs = append(logs, sc.Text())
			logMu.Unlock()
			if strings.Contains(sc.Text(), "test mover ready") {
				once.Do(func() { close(ready) })
			}
		}
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if t.Failed() {
			logMu.Lock()
			t.Logf("killed mover's log:\n%s", strings.Join(logs, "\n"))
			logMu.Unlock()
		}
	})
	select {
	case <-ready:
	case <-exited:
		t.Fatal("the mover process exited at start")
	case <-time.After(60 * time.Second):
		t.Fatal("the mover process did not start")
	}

	cmdEv := exportCmd("run-kill", "run-kill:export:data", "tm-kill")
	env.Publish(t, cmdEv)
	// Kill it once it is well into the volume (and has checkpointed).
	env.WaitFor(t, 120*time.Second, "export progress past 40%", fact(func(p events.VolumeExportProgress) bool {
		return p.RunID == "run-kill" && p.BytesDone >= total*4/10
	}))
	time.Sleep(400 * time.Millisecond) // one more checkpoint
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	if n := len(env.Facts()); n == 0 {
		t.Fatal("no facts")
	}
	for _, ev := range env.Facts() {
		if _, ok := events.As[events.VolumeExported](ev); ok {
			t.Fatal("the killed mover finished the export before it was killed; make the volume larger")
		}
	}
	killedAt := time.Now()

	// Another mover: same repository, its own cache.
	repo, err := repository.Open(t.Context(), repository.Config{Path: repoPath, Password: password, CacheDir: t.TempDir(), ProgressInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = repo.Close(context.Background()) })
	_, checkpoints := snapshotsOf(t, repo)
	if len(checkpoints) == 0 {
		t.Error("the killed mover left no checkpoint to resume from")
	}
	startMover(t, env, Config{Repository: repo, Resolver: fixedResolver(vol), Concurrency: 1, AckWait: ackWait})

	ev := env.WaitFor(t, 120*time.Second, "volume.exported", fact(func(p events.VolumeExported) bool { return p.RunID == "run-kill" }))
	exp, _ := events.As[events.VolumeExported](ev)
	t.Logf("finished by the second mover %v after the kill: %d bytes, %d uploaded again", time.Since(killedAt).Round(time.Millisecond), exp.Bytes, exp.BytesUploaded)
	if exp.Bytes != total {
		t.Errorf("exported %d bytes, want %d", exp.Bytes, total)
	}
	if exp.BytesUploaded >= total*9/10 {
		t.Errorf("the second mover uploaded %d of %d bytes again: it did not resume from the checkpoint", exp.BytesUploaded, total)
	}
	importAndCompare(t, env, exp.ManifestID, want)

	complete, incomplete := snapshotsOf(t, repo)
	if len(complete) != 1 || complete[0].ManifestID != string(exp.ManifestID) || len(incomplete) != 0 {
		t.Errorf("snapshots after the export: complete %+v, incomplete %+v; want just %s", complete, incomplete, exp.ManifestID)
	}
	n := 0
	for _, f := range env.Facts() {
		if p, ok := events.As[events.VolumeExported](f); ok && p.RunID == "run-kill" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d volume.exported facts, want 1", n)
	}
}

// exportFailure publishes an export of vol and returns its failure.
func exportFailure(t *testing.T, env *bustest.Env, run events.RunID) events.VolumeExportFailed {
	t.Helper()
	env.Publish(t, exportCmd(run, string(run)+":export:data", "tm-"+events.SnapshotID(run)))
	ev := env.WaitFor(t, 120*time.Second, "volume.export.failed", fact(func(p events.VolumeExportFailed) bool { return p.RunID == run }))
	f, _ := events.As[events.VolumeExportFailed](ev)
	for _, other := range env.Facts() {
		if p, ok := events.As[events.VolumeExported](other); ok && p.RunID == run {
			t.Errorf("run %s has a volume.exported as well as the failure", run)
		}
	}
	return f
}

func assertMentions(t *testing.T, what, msg string, must []string, mustNot []string) {
	t.Helper()
	for _, s := range must {
		if !strings.Contains(msg, s) {
			t.Errorf("%s: %q does not mention %q", what, msg, s)
		}
	}
	for _, s := range mustNot {
		if s != "" && strings.Contains(msg, s) {
			t.Errorf("%s: %q shows a secret", what, msg)
		}
	}
}

// A mover given the wrong repository password answers each export with a
// permanent failure that says so, names where to set the password and
// shows neither password; nothing is written to the repository.
func TestExportWithWrongPassword(t *testing.T) {
	env := bustest.Start(t)
	path := filepath.Join(t.TempDir(), "repository")
	const right, wrong = "the-right-password", "hunter2-wrong"
	r, err := repository.Open(t.Context(), repository.Config{Path: path, Password: right, CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(context.Background()) })

	var logs syncBuffer
	m := &managed{
		repo: repository.Config{Path: path, Password: wrong, CacheDir: t.TempDir()},
		cfg:  Config{Resolver: fixedResolver(volume(t)), Concurrency: 1, Logger: slog.New(slog.NewTextHandler(&logs, nil))},
		bus:  env.Bus,
	}
	runService(t, m.Run)
	for _, run := range []events.RunID{"run-wrong-pw", "run-wrong-pw-2"} { // every command, not just the first
		f := exportFailure(t, env, run)
		if !f.Permanent {
			t.Errorf("%s: a wrong password is not a permanent failure", run)
		}
		assertMentions(t, "failure event", f.Error, []string{"password is wrong", path, repository.EnvPassword}, []string{right, wrong})
	}
	assertMentions(t, "mover log", logs.String(), []string{"password is wrong"}, []string{right, wrong})
	if complete, incomplete := snapshotsOf(t, r); len(complete)+len(incomplete) != 0 {
		t.Errorf("snapshots after a failed export: %+v %+v", complete, incomplete)
	}
}

// A repository on a full disk (a small tmpfs): the export fails with an
// event that says the storage is full and what to do, not permanent (it
// may work once space is freed), and no snapshot is recorded.
func TestExportToAFullDisk(t *testing.T) {
	mnt := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=40m", "tidemark-test", mnt).CombinedOutput()
	if err != nil {
		t.Skipf("cannot mount a small tmpfs to fill (%v: %s); this test needs root or CAP_SYS_ADMIN", err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			// Files left open on it: kopia's filesystem storage leaks one
			// per write that fails with ENOSPC (see pkg/repository's
			// spaceGuard), so this says whether the guard failed.
			fds, _ := os.ReadDir("/proc/self/fd")
			for _, fd := range fds {
				if l, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.HasPrefix(l, mnt) {
					t.Logf("still open: %s", l)
				}
			}
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	env := bustest.Start(t)
	path := filepath.Join(mnt, "repository")
	m := &managed{
		repo: repository.Config{Path: path, Password: "pw-full-disk", CacheDir: t.TempDir()},
		cfg:  Config{Resolver: fixedResolver(randomVolume(t, 48, 1<<20)), Concurrency: 1},
		bus:  env.Bus,
	}
	runService(t, m.Run)
	start := time.Now()
	f := exportFailure(t, env, "run-full")
	t.Logf("failed after %v: %s", time.Since(start).Round(time.Millisecond), f.Error)
	if f.Permanent {
		t.Error("a full disk is reported as permanent; it is not once space is freed")
	}
	assertMentions(t, "failure event", f.Error, []string{"storage is full", "no space left", path, "free space"}, []string{"pw-full-disk"})
	r, err := m.repoHandle(t)
	if err != nil {
		t.Fatal(err)
	}
	if complete, _ := snapshotsOf(t, r); len(complete) != 0 {
		t.Errorf("a snapshot was recorded for an export that failed: %+v", complete)
	}
}

// An S3 repository whose server is down: the export fails with an event
// that names the endpoint and the setting to check, not permanent, without
// the secret; once the server is back, the same mover exports again
// without a restart.
func TestExportToUnreachableS3(t *testing.T) {
	srv := s3server.Start(t, s3server.Options{})
	srv.CreateBucket(t, "backups")
	env := bustest.Start(t)
	s3 := &repository.S3{Endpoint: srv.URL(), Bucket: "backups", AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey}
	const password = "pw-unreachable"
	vol := volume(t)
	m := &managed{
		repo:      repository.Config{S3: s3, Password: password, CacheDir: t.TempDir()},
		cfg:       Config{Resolver: fixedResolver(vol), Concurrency: 1},
		bus:       env.Bus,
		retryOpen: time.Millisecond,
	}
	srv.Stop()
	runService(t, m.Run)

	start := time.Now()
	f := exportFailure(t, env, "run-s3-down")
	t.Logf("failed after %v: %s", time.Since(start).Round(time.Millisecond), f.Error)
	if f.Permanent {
		t.Error("an unreachable S3 server is reported as permanent")
	}
	assertMentions(t, "failure event", f.Error, []string{"unreachable", srv.Endpoint, repository.EnvS3Endpoint}, []string{srv.SecretKey, password})

	srv.Restart(t)
	env.Publish(t, exportCmd("run-s3-up", "run-s3-up:export:data", "tm-up"))
	ev := env.WaitFor(t, 120*time.Second, "volume.exported", fact(func(p events.VolumeExported) bool { return p.RunID == "run-s3-up" }))
	exp, _ := events.As[events.VolumeExported](ev)
	importAndCompare(t, env, exp.ManifestID, treeOf(t, vol))
	r, err := m.repoHandle(t)
	if err != nil {
		t.Fatal(err)
	}
	if complete, incomplete := snapshotsOf(t, r); len(complete) != 1 || len(incomplete) != 0 {
		t.Errorf("snapshots: complete %+v, incomplete %+v; want only run-s3-up's", complete, incomplete)
	}
}

// repoHandle is the repository the managed mover opened.
func (m *managed) repoHandle(t *testing.T) (*repository.Repository, error) {
	t.Helper()
	// A second handle on the same repository, opened with the mover's
	// settings but its own cache: the mover's own is busy.
	cfg := m.repo
	cfg.CacheDir = t.TempDir()
	cfg.NoCreate = true
	r, err := repository.Open(t.Context(), cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	return r, nil
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

package coordinator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/application"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/platform"
	"github.com/tidemark-dev/tidemark/pkg/platform/local"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/pkg/service"
	"github.com/tidemark-dev/tidemark/services/catalog"
	"github.com/tidemark-dev/tidemark/services/coordinator"
	"github.com/tidemark-dev/tidemark/services/datamover"
	"github.com/tidemark-dev/tidemark/services/hookrunner"
	"github.com/tidemark-dev/tidemark/services/snapshotter"
	"github.com/tidemark-dev/tidemark/tests/bustest"
)

// system is every Tidemark service running in this process on one real
// embedded NATS server, with a real kopia repository and the local
// platform's snapshots. Each service can be stopped and started again.
type system struct {
	t       testing.TB
	env     *bustest.Env
	dataDir string
	appsDir string
	snaps   *local.Snapshotter
	repo    *repository.Repository
	log     *slog.Logger

	mu       sync.Mutex
	services map[string]*running
	// coordinatorConfig is applied to every coordinator started.
	coordinatorConfig func(*coordinator.Config)
	// liveVolumes names volumes the snapshotter reads live instead of
	// snapshotting (liveReadStandIn).
	liveVolumes map[string]bool
}

type running struct {
	cancel context.CancelFunc
	done   chan error
}

func testLogger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("TIDEMARK_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func newSystem(t testing.TB) *system {
	t.Helper()
	s := &system{t: t, env: bustest.Start(t), dataDir: t.TempDir(), appsDir: t.TempDir(), services: map[string]*running{}, log: testLogger()}
	var err error
	s.snaps, err = local.NewSnapshotter(filepath.Join(s.dataDir, "snapshots"), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.repo, err = repository.Open(t.Context(), repository.Config{
		Path: filepath.Join(s.dataDir, "repository"), Password: "test-password", CacheDir: filepath.Join(s.dataDir, "cache"),
		ProgressInterval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.stopAll()
		_ = s.repo.Close(context.Background())
	})
	return s
}

// fastCoordinator shortens the coordinator's clocks so failures show within
// a test's patience.
func fastCoordinator(c *coordinator.Config) {
	c.AnswerGrace = time.Second
	c.RetryBackoff = 100 * time.Millisecond
	c.InverseTimeout = 5 * time.Second
	c.BackgroundRetry = 500 * time.Millisecond
	c.BackgroundRetryMax = 2 * time.Second
	c.LeaseTTL = 2 * time.Second
	c.Recheck = 500 * time.Millisecond
	c.CleanupTimeout = 10 * time.Second
}

func (s *system) startAll() {
	for _, n := range []string{"coordinator", "hookrunner", "snapshotter", "datamover", "catalog"} {
		s.start(n)
	}
}

// start runs one service. Names may carry an instance suffix:
// "coordinator#2" is a second coordinator instance.
func (s *system) start(name string) {
	t := s.t
	t.Helper()
	kind, instance, _ := strings.Cut(name, "#")
	if instance == "" {
		instance = "1"
	}
	var svc interface{ Run(context.Context) error }
	var err error
	log := s.log.With("service", name)
	switch kind {
	case "coordinator":
		cfg := coordinator.Config{InstanceID: "coord-" + instance, Apps: application.Dir(s.appsDir), BlueprintDir: s.appsDir, Logger: log}
		fastCoordinator(&cfg)
		if s.coordinatorConfig != nil {
			s.coordinatorConfig(&cfg)
		}
		svc, err = coordinator.New(cfg, s.env.Bus)
	case "hookrunner":
		svc, err = hookrunner.New(hookrunner.Config{InstanceID: "hr-" + instance, Apps: application.Dir(s.appsDir), Exec: &local.Executor{}, Logger: log, HoldHeartbeat: 200 * time.Millisecond}, s.env.Bus)
	case "snapshotter":
		var snaps platform.Snapshotter = s.snaps
		if len(s.liveVolumes) > 0 {
			snaps = liveReadStandIn{Snapshotter: s.snaps, live: s.liveVolumes}
		}
		svc, err = snapshotter.New(snapshotter.Config{Snapshotter: snaps, Logger: log}, s.env.Bus)
	case "datamover":
		svc, err = datamover.New(datamover.Config{Repository: s.repo, Resolver: liveResolver(datamover.LocalResolver(s.snaps)), Concurrency: 2, Logger: log}, s.env.Bus)
	case "datamover-from-environment":
		// The data mover as `tidemark serve` builds it: repository
		// location and password from TIDEMARK_REPOSITORY_*.
		var svcs map[string]service.Service
		svcs, err = service.Build([]string{"datamover"}, service.Deps{Bus: s.env.Bus, Logger: log, DataDir: s.t.TempDir(), InstanceID: "dm-" + instance})
		if err == nil {
			svc = svcs["datamover"]
		}
	case "catalog":
		svc, err = catalog.New(catalog.Config{Repository: s.repo, MaintenanceInterval: -1, InstanceID: "cat-" + instance, Logger: log}, s.env.Bus)
	default:
		t.Fatalf("unknown service %q", name)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- svc.Run(ctx) }()
	s.mu.Lock()
	s.services[name] = r
	s.mu.Unlock()
}

// stop stops one service and waits for it.
func (s *system) stop(name string) {
	s.mu.Lock()
	r := s.services[name]
	delete(s.services, name)
	s.mu.Unlock()
	if r == nil {
		return
	}
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			s.t.Errorf("%s: %v", name, err)
		}
	case <-time.After(30 * time.Second):
		s.t.Errorf("%s did not stop", name)
	}
}

func (s *system) stopAll() {
	s.mu.Lock()
	var names []string
	for n := range s.services {
		names = append(names, n)
	}
	s.mu.Unlock()
	for _, n := range names {
		s.stop(n)
	}
}

// writeFile writes a file under the apps directory and returns its path.
func (s *system) writeFile(name, content string) string {
	s.t.Helper()
	p := filepath.Join(s.appsDir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		s.t.Fatal(err)
	}
	return p
}

// volume makes a directory with a few files.
func (s *system) volume(name string) string {
	s.t.Helper()
	dir := filepath.Join(s.dataDir, "volumes", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.t.Fatal(err)
	}
	for i := range 5 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("file-%d", i)), []byte(strings.Repeat(name, 1000*(i+1))), 0o644); err != nil {
			s.t.Fatal(err)
		}
	}
	return dir
}

// app writes an Application file.
func (s *system) app(name, blueprintFile string, volumes map[string]string, extra string) {
	s.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: tidemark.io/v1alpha1\nkind: Application\nmetadata: {name: %s}\nspec:\n  blueprint: %s\n", name, blueprintFile)
	if len(volumes) > 0 {
		b.WriteString("  volumes:\n")
		for k, v := range volumes {
			fmt.Fprintf(&b, "    %s: %s\n", k, v)
		}
	}
	b.WriteString(extra)
	s.writeFile(strings.ReplaceAll(name, "/", "_")+".app.yaml", b.String())
}

// backup publishes a backup request and returns the run id from its
// acceptance.
func (s *system) backup(app string, opts ...func(*events.BackupRequested)) events.RunID {
	s.t.Helper()
	req := events.BackupRequested{Application: app, RequestedBy: "test"}
	for _, o := range opts {
		o(&req)
	}
	ev := events.New("tidemark/test", app, req, time.Now())
	s.env.Publish(s.t, ev)
	acc := s.env.WaitFor(s.t, 30*time.Second, "backup.accepted or rejected for "+app, func(e events.Event) bool {
		if e.CausationID != ev.ID {
			return false
		}
		_, a := events.As[events.BackupAccepted](e)
		_, r := events.As[events.BackupRejected](e)
		return a || r
	})
	if r, ok := events.As[events.BackupRejected](acc); ok {
		s.t.Fatalf("backup of %s rejected: %s", app, r.Reason)
	}
	p, _ := events.As[events.BackupAccepted](acc)
	return p.RunID
}

// outcome waits for the run's terminal fact.
func (s *system) outcome(run events.RunID, timeout time.Duration) events.Event {
	s.t.Helper()
	s.t.Cleanup(func() {
		if s.t.Failed() {
			s.t.Logf("run %s history:\n%s", run, history(s.runStateOrEmpty(run)))
		}
	})
	return s.env.WaitFor(s.t, timeout, "the end of run "+string(run), func(e events.Event) bool {
		switch p := e.Data.(type) {
		case events.RestorePointRecorded:
			return p.RunID == run
		case events.BackupFailed:
			return p.RunID == run
		case events.BackupCancelled:
			return p.RunID == run
		}
		return false
	})
}

// runState reads the run's durable record.
func (s *system) runState(run events.RunID) coordinator.Run {
	s.t.Helper()
	kv, err := s.env.Bus.KeyValue(context.Background(), bus.BucketRuns)
	if err != nil {
		s.t.Fatal(err)
	}
	raw, err := kv.Get(context.Background(), "run."+string(run))
	if err != nil {
		s.t.Fatal(err)
	}
	var r coordinator.Run
	if err := json.Unmarshal(raw, &r); err != nil {
		s.t.Fatal(err)
	}
	return r
}

// waitStatus waits until the run's record reaches a terminal status.
func (s *system) waitStatus(run events.RunID, timeout time.Duration) coordinator.Run {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r := s.runState(run)
		if r.Status.Terminal() && len(r.Unresolved) == 0 && !r.Frozen() {
			return r
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("run %s still %s/%s (unresolved %v, frozen %v) after %s; history (%d):\n%s", run, r.Status, r.Stage, r.Unresolved, r.Frozen(), timeout, len(r.History), history(r))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitSnapshotsDeleted waits until the snapshotter has confirmed deleting
// the run's snapshots.
func (s *system) waitSnapshotsDeleted(run events.RunID, timeout time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for !s.runState(run).SnapshotsDeleted {
		if time.Now().After(deadline) {
			s.t.Fatalf("run %s: its snapshots were not deleted within %s; history:\n%s", run, timeout, history(s.runState(run)))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func history(r coordinator.Run) string {
	var b strings.Builder
	for _, h := range r.History {
		fmt.Fprintf(&b, "  %s %s\n", h.At.Format("15:04:05.000"), h.Message)
	}
	return b.String()
}

// snapshotsOf lists the snapshots of a run still on disk.
func (s *system) snapshotsOf(run events.RunID) []string {
	s.t.Helper()
	all, err := s.snaps.List(context.Background())
	if err != nil {
		s.t.Fatal(err)
	}
	var out []string
	for _, sn := range all {
		if strings.Contains(string(sn.ID), string(run)) || sn.RunID == run {
			out = append(out, string(sn.ID))
		}
	}
	return out
}

func getenvInt(name string) int {
	var n int
	_, _ = fmt.Sscan(os.Getenv(name), &n)
	return n
}

func (s *system) runStateOrEmpty(run events.RunID) coordinator.Run {
	kv, err := s.env.Bus.KeyValue(context.Background(), bus.BucketRuns)
	if err != nil {
		return coordinator.Run{}
	}
	r, _ := coordinator.LoadRun(context.Background(), kv, run)
	return r
}

// liveReadStandIn is a TEST-ONLY snapshotter that plays the Kubernetes
// platform's fallback for a CSI driver without a snapshot class (which
// cannot run here): the volumes it names are not snapshotted but reported
// with method live, to be read in place; the others are snapshotted by the
// local platform.
type liveReadStandIn struct {
	platform.Snapshotter
	live map[string]bool
}

func (l liveReadStandIn) Snapshot(ctx context.Context, run events.RunID, volumes []events.VolumeRef) ([]platform.Snapshot, error) {
	var rest []events.VolumeRef
	var out []platform.Snapshot
	for _, v := range volumes {
		if l.live[v.Name] {
			out = append(out, platform.Snapshot{ID: events.SnapshotID("live:" + v.Source), RunID: run, Volume: v.Name, Path: v.Source, Method: platform.MethodLive, Consistency: platform.ConsistencyLive, CreatedAt: time.Now()})
			continue
		}
		rest = append(rest, v)
	}
	if len(rest) == 0 {
		return out, nil
	}
	snaps, err := l.Snapshotter.Snapshot(ctx, run, rest)
	return append(out, snaps...), err
}

func (l liveReadStandIn) Delete(ctx context.Context, id events.SnapshotID) error {
	if strings.HasPrefix(string(id), "live:") {
		return nil
	}
	return l.Snapshotter.Delete(ctx, id)
}

// liveResolver lets the data mover read liveReadStandIn's volumes in place.
func liveResolver(next datamover.Resolver) datamover.Resolver {
	return func(ctx context.Context, id events.SnapshotID) (string, error) {
		if p, ok := strings.CutPrefix(string(id), "live:"); ok {
			return p, nil
		}
		return next(ctx, id)
	}
}

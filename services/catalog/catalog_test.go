package catalog

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/tests/bustest"
)

type harness struct {
	env      *bustest.Env
	store    *Store
	svc      *Service
	repo     *repository.Repository
	repoPath string
	stop     func()
}

// openRepo opens a client of the repository at path with its own cache,
// as another process would.
func openRepo(t *testing.T, path string) *repository.Repository {
	t.Helper()
	r, err := repository.Open(context.Background(), repository.Config{Path: path, Password: "test-password", CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	return r
}

// startService runs a catalog on env with cfg; cfg.Repository defaults to
// a real repository at repoPath.
func startService(t *testing.T, env *bustest.Env, repoPath string, cfg Config) (*Service, func()) {
	t.Helper()
	if cfg.Repository == nil {
		cfg.Repository = openRepo(t, repoPath)
	}
	s, err := New(cfg, env.Bus)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	select {
	case <-s.ready:
	case err := <-done:
		t.Fatalf("catalog stopped at start: %v", err)
	}
	return s, stop
}

// newHarness runs a catalog that shares the test's repository client
// (opening a kopia client costs seconds under the race detector).
func newHarness(t *testing.T, cfg Config) *harness { return startHarness(t, cfg, false) }

// newSeparateHarness runs a catalog with its own repository client, as in
// production: the data movers' client writes the snapshots it deletes.
func newSeparateHarness(t *testing.T, cfg Config) *harness { return startHarness(t, cfg, true) }

func startHarness(t *testing.T, cfg Config, separate bool) *harness {
	t.Helper()
	env := bustest.Start(t)
	h := &harness{env: env, repoPath: filepath.Join(t.TempDir(), "repository")}
	h.repo = openRepo(t, h.repoPath) // the data movers' client
	if cfg.Repository == nil && !separate {
		cfg.Repository = h.repo
	}
	if w, ok := cfg.Repository.(interface{ wrap(*repository.Repository) }); ok {
		w.wrap(h.repo) // a fault-injecting wrapper of the real client
	}
	h.svc, h.stop = startService(t, env, h.repoPath, cfg)
	kv, err := env.Bus.KeyValue(context.Background(), bus.BucketCatalog)
	if err != nil {
		t.Fatal(err)
	}
	h.store = NewStore(kv)
	return h
}

func startCatalog(t *testing.T) (*bustest.Env, *Store) {
	h := newHarness(t, Config{})
	return h.env, h.store
}

func fact(run events.RunID, p events.Payload) events.Event {
	ev := events.New("tidemark/test", "shop/postgres", p, time.Now())
	ev.CorrelationID = string(run)
	return ev
}

var t0 = time.Date(2026, 11, 22, 21, 0, 0, 0, time.UTC)

func completed(run events.RunID, point events.RestorePointID) events.BackupCompleted {
	return events.BackupCompleted{RunID: run, Application: "shop/postgres", RestorePointID: point, StartedAt: t0, FinishedAt: t0.Add(time.Minute), FreezeWindow: events.Duration(2 * time.Second)}
}

func TestACompletedRunBecomesARestorePointWithWhatARestoreNeeds(t *testing.T) {
	h := newHarness(t, Config{})
	env, store := h.env, h.store
	run := events.RunID("run-1")
	for _, p := range []events.Payload{
		events.HookSucceeded{RunID: run, Step: "backup-start", StartedAt: t0, FinishedAt: t0, Holding: true, Holder: "h1", Outputs: map[string]string{"start_lsn": "0/2000028"}},
		events.HookReleased{RunID: run, Step: "backup-start", HeldFor: events.Duration(time.Second), By: "request", Outputs: map[string]string{"labelfile": "START WAL LOCATION: 0/2000028"}},
		events.VolumeExported{RunID: run, Volume: "wal", SourceKind: "snapshot", ManifestID: "k2", Files: 3, Bytes: 48 << 20, StartedAt: t0, FinishedAt: t0},
		events.VolumeExported{RunID: run, Volume: "data", SourceKind: "snapshot", ManifestID: "k1", Files: 900, Bytes: 1 << 30, StartedAt: t0, FinishedAt: t0},
		completed(run, "rp-1"),
	} {
		env.Publish(t, fact(run, p))
	}
	ev := env.WaitFor(t, 20*time.Second, "restorepoint.recorded", func(ev events.Event) bool {
		_, ok := events.As[events.RestorePointRecorded](ev)
		return ok
	})
	rec, _ := events.As[events.RestorePointRecorded](ev)
	if rec.RestorePointID != "rp-1" || rec.Consistency != ConsistencyApplication || len(rec.Artifacts) != 2 || rec.Artifacts[0].Name != "data" {
		t.Fatalf("recorded %+v", rec)
	}
	if ev.CorrelationID != "run-1" {
		t.Errorf("correlation id %q", ev.CorrelationID)
	}
	p, err := store.Get(context.Background(), "rp-1")
	if err != nil {
		t.Fatal(err)
	}
	if p.StepOutputs["backup-start"]["labelfile"] != "START WAL LOCATION: 0/2000028" || p.StepOutputs["backup-start"]["start_lsn"] != "0/2000028" {
		t.Fatalf("step outputs %v", p.StepOutputs)
	}
	list, err := store.List(context.Background(), "shop/postgres")
	if err != nil || len(list) != 1 {
		t.Fatalf("list %v, %v", list, err)
	}
	if other, _ := store.List(context.Background(), "shop/mariadb"); len(other) != 0 {
		t.Fatalf("another application's list holds %v", other)
	}
	// The point's record is in the repository too, whole.
	recs, err := h.repo.Records(context.Background(), RecordKind)
	if err != nil || len(recs) != 1 || recs[0].ID != "rp-1" || recs[0].Labels[repository.TagApp] != "shop/postgres" {
		t.Fatalf("records in the repository: %+v, %v", recs, err)
	}
	if want, _ := json.Marshal(p); string(recs[0].Data) != string(want) {
		t.Errorf("the record holds %s, want %s", recs[0].Data, want)
	}
}

func TestFailedRunsNeverBecomeRestorePoints(t *testing.T) {
	env, store := startCatalog(t)
	env.Publish(t, fact("run-f", events.VolumeExported{RunID: "run-f", Volume: "data", ManifestID: "k1", StartedAt: t0, FinishedAt: t0}))
	env.Publish(t, fact("run-f", events.BackupFailed{RunID: "run-f", Application: "shop/postgres", Reason: "snapshot failed"}))
	// Logical-only run, completed after the failure, proves the catalog
	// moved past the failed run and that dump-only points say logical.
	env.Publish(t, fact("run-l", events.VolumeExported{RunID: "run-l", Volume: "pg_dump", SourceKind: "dump", ManifestID: "k9", StartedAt: t0, FinishedAt: t0}))
	env.Publish(t, fact("run-l", completed("run-l", "rp-l")))
	ev := env.WaitFor(t, 20*time.Second, "the logical point", func(ev events.Event) bool {
		_, ok := events.As[events.RestorePointRecorded](ev)
		return ok
	})
	if rec, _ := events.As[events.RestorePointRecorded](ev); rec.Consistency != ConsistencyLogical || rec.RunID != "run-l" {
		t.Fatalf("recorded %+v", rec)
	}
	list, _ := store.List(context.Background(), "")
	if len(list) != 1 {
		t.Fatalf("%d points, want only the logical one", len(list))
	}
	run, err := store.pending(context.Background(), "run-f")
	if err != nil || len(run.Artifacts) != 0 {
		t.Fatalf("the failed run's facts were kept: %+v %v", run, err)
	}
}

func TestACompletionWithoutArtifactsIsRefused(t *testing.T) {
	env, _ := startCatalog(t)
	env.Publish(t, fact("run-e", completed("run-e", "rp-e")))
	// It goes to dead letter with the reason; nothing is recorded.
	deadline := time.Now().Add(20 * time.Second)
	for len(env.DeadLetters(t)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the completion without artifacts was not dead-lettered")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := env.DeadLetters(t)[0].Reason; !strings.Contains(r, "no exported artifacts") {
		t.Fatalf("reason %q", r)
	}
	for _, f := range env.Facts() {
		if _, ok := events.As[events.RestorePointRecorded](f); ok {
			t.Fatal("a restore point with nothing to restore was recorded")
		}
	}
}

// syncBuffer is a log sink safe for the catalog's goroutines.
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

// A catalog given another repository than the data movers' records the
// point but says what is wrong, loudly.
func TestACatalogOnTheWrongRepositorySaysSo(t *testing.T) {
	var logs syncBuffer
	h := newHarness(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	h.backup(t, "shop/postgres", "run-1", "rp-1", t0) // in the catalog's repository
	h.waitRecorded(t, "rp-1")
	if strings.Contains(logs.String(), "does not hold") {
		t.Fatalf("a point whose snapshots are there was reported:\n%s", logs.String())
	}
	run := events.RunID("run-2")
	for _, p := range []events.Payload{
		events.VolumeExported{RunID: run, Volume: "data", SourceKind: "snapshot", ManifestID: "0123456789abcdef0123456789abcdef", StartedAt: t0, FinishedAt: t0},
		completed(run, "rp-2"),
	} {
		h.env.Publish(t, fact(run, p))
	}
	h.waitRecorded(t, "rp-2")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "level=ERROR") {
		if time.Now().After(deadline) {
			t.Fatalf("no error logged:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	out := logs.String()
	if !strings.Contains(out, "does not hold this restore point's snapshots") || !strings.Contains(out, "TIDEMARK_REPOSITORY_PATH") || !strings.Contains(out, "data=0123456789abcdef0123456789abcdef") {
		t.Errorf("the error does not say what is wrong and how to fix it:\n%s", out)
	}
}

// A completion that carries its artifacts is recorded even when the facts
// the catalog would have gathered never reached it (a lost write, a
// restart of a single NATS server).
func TestCompletionCarryingItsArtifactsNeedsNoGatheredFacts(t *testing.T) {
	h := newHarness(t, Config{})
	done := events.BackupCompleted{
		RunID: "run-self", Application: "shop/pg", RestorePointID: "rp-self",
		StartedAt: time.Unix(100, 0).UTC(), FinishedAt: time.Unix(200, 0).UTC(),
		Artifacts:   []events.Artifact{{Name: "data", Kind: "volume", ManifestID: "k1", Bytes: 42, Files: 3}},
		StepOutputs: map[string]map[string]string{"lock": {"gtid_current_pos": "0-1-7"}},
		Consistency: "application",
	}
	h.env.Publish(t, events.New("tidemark/test", "shop/pg", done, time.Now()))
	rec := h.env.WaitFor(t, 30*time.Second, "restorepoint.recorded", func(e events.Event) bool {
		p, ok := events.As[events.RestorePointRecorded](e)
		return ok && p.RestorePointID == "rp-self"
	})
	p := rec.Data.(events.RestorePointRecorded)
	if p.Consistency != "application" || len(p.Artifacts) != 1 || p.Artifacts[0].Files != 3 {
		t.Fatalf("recorded %+v", p)
	}
	got, err := h.store.Get(context.Background(), "rp-self")
	if err != nil || got.StepOutputs["lock"]["gtid_current_pos"] != "0-1-7" {
		t.Fatalf("point %+v, %v: want the step outputs from the completion", got, err)
	}
}

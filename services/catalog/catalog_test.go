package catalog

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/tests/bustest"
)

func startCatalog(t *testing.T) (*bustest.Env, *Store) {
	t.Helper()
	env := bustest.Start(t)
	s, err := New(Config{}, env.Bus)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	kv, err := env.Bus.KeyValue(context.Background(), bus.BucketCatalog)
	if err != nil {
		t.Fatal(err)
	}
	return env, NewStore(kv)
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
	env, store := startCatalog(t)
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

package bus

import (
	"context"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
)

func TestResultsAreKeptByIdempotencyKey(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	kv, err := env.bus.KeyValue(ctx, BucketHooks)
	if err != nil {
		t.Fatal(err)
	}
	r := NewResults(kv, "result")
	if _, done, err := r.Load(ctx, "run-1/lock"); err != nil || done {
		t.Fatalf("a fresh key: done=%v err=%v", done, err)
	}
	want := events.HookSucceeded{RunID: "run-1", Step: "lock", StartedAt: time.Unix(1, 0).UTC(), FinishedAt: time.Unix(2, 0).UTC(), Outputs: map[string]string{"lsn": "0/1"}}
	if err := r.Store(ctx, "run-1/lock", want); err != nil {
		t.Fatal(err)
	}
	got, done, err := r.Load(ctx, "run-1/lock")
	if err != nil || !done {
		t.Fatalf("done=%v err=%v", done, err)
	}
	if p, ok := got.(events.HookSucceeded); !ok || p.Outputs["lsn"] != "0/1" || !p.FinishedAt.Equal(want.FinishedAt) {
		t.Fatalf("got %#v", got)
	}
	// Another prefix is another namespace.
	if _, done, _ := NewResults(kv, "release").Load(ctx, "run-1/lock"); done {
		t.Fatal("a result leaked across prefixes")
	}
}

package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

func TestVersionedKVRefusesStaleWrites(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	kv, err := env.bus.VersionedKeyValue(ctx, BucketRuns)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Create(ctx, "run-1", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "run-1", []byte("again")); !errors.Is(err, ErrConflict) {
		t.Fatalf("second create: want ErrConflict, got %v", err)
	}
	rev2, err := kv.Update(ctx, "run-1", []byte("v2"), rev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, "run-1", []byte("stale"), rev); !errors.Is(err, ErrConflict) {
		t.Fatalf("update at an old revision: want ErrConflict, got %v", err)
	}
	e, err := kv.Entry(ctx, "run-1")
	if err != nil || string(e.Value) != "v2" || e.Revision != rev2 {
		t.Fatalf("entry = %q rev %d (%v), want v2 rev %d", e.Value, e.Revision, err, rev2)
	}
	if err := kv.DeleteAt(ctx, "run-1", rev); !errors.Is(err, ErrConflict) {
		t.Fatalf("delete at an old revision: want ErrConflict, got %v", err)
	}
	if err := kv.DeleteAt(ctx, "run-1", rev2); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Entry(ctx, "run-1"); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("after delete: want ErrKeyNotFound, got %v", err)
	}
	// A deleted key can be created again: a lease given back can be taken.
	if _, err := kv.Create(ctx, "run-1", []byte("v3")); err != nil {
		t.Fatalf("create after delete: %v", err)
	}
}

func TestVersionedKVOneWinnerAmongRacingWriters(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	kv, err := env.bus.VersionedKeyValue(ctx, BucketLeases)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Create(ctx, "lease", []byte("nobody"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wins := make(chan string, 8)
	for i := range 8 {
		wg.Go(func() {
			if _, err := kv.Update(ctx, "lease", fmt.Appendf(nil, "owner-%d", i), rev); err == nil {
				wins <- fmt.Sprint(i)
			} else if !errors.Is(err, ErrConflict) {
				t.Errorf("writer %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	close(wins)
	if n := len(wins); n != 1 {
		t.Fatalf("%d writers won the same revision, want exactly 1", n)
	}
	for i := range 3 {
		if _, err := kv.Create(ctx, fmt.Sprint("other-", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	all, err := kv.Entries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 4 {
		t.Fatalf("Entries returned %d keys, want 4: %v", len(all), all)
	}
}

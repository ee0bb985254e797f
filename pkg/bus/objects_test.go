package bus

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"testing"
	"time"
)

// A stream read slowly, for longer than jetstream's default API timeout
// (5 s), with a context that has no deadline, arrives whole: a dump that
// takes minutes to store or to load must not be cut off.
func TestObjectReadOutlivesTheDefaultTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("reads for 6 s")
	}
	env := newTestEnv(t)
	objs, err := env.bus.ObjectStore(context.Background(), BucketDumps)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 4<<20)
	_, _ = rand.Read(data)
	if _, err := objs.Put(context.Background(), "dumps/run/slow", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	r, err := objs.Get(context.Background(), "dumps/run/slow")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	first := make([]byte, 1<<20)
	if _, err := io.ReadFull(r, first); err != nil {
		t.Fatal(err)
	}
	time.Sleep(6 * time.Second)
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading on after 6 s: %v", err)
	}
	if got := append(first, rest...); !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, want the %d stored", len(got), len(data))
	}
}

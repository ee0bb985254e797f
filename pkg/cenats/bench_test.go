package cenats

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tidemark-dev/tidemark/events"
)

// benchEvent is the event pkg/bus's throughput benchmark carries.
func benchEvent() events.Event {
	ev := events.New("tidemark/test", "run-bench", events.HookRequested{
		RunID:          "run-bench",
		Application:    "shop/postgres",
		Step:           "quiesce",
		Kind:           "sql",
		Spec:           json.RawMessage(`{"statement":"SELECT 1"}`),
		Timeout:        events.Duration(30 * time.Second),
		IdempotencyKey: "run-bench/quiesce",
	}, time.Now())
	ev.CorrelationID = "run-bench"
	return ev
}

func BenchmarkEncodeEvent(b *testing.B) {
	ev := benchEvent()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := EncodeEvent(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	ctx := context.Background()
	msg, err := EncodeEvent(ctx, benchEvent())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		m := &nats.Msg{Subject: msg.Subject, Header: msg.Header, Data: msg.Data}
		if _, err := Decode(ctx, m); err != nil {
			b.Fatal(err)
		}
	}
}

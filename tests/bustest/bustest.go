// Package bustest starts a real embedded NATS server with Tidemark's
// topology for tests in other packages, and records the events published
// on it. Nothing here is a fake: it is the same server `tidemark serve`
// embeds, on a temporary directory.
package bustest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/cenats"
	"github.com/tidemark-dev/tidemark/pkg/natsserver"
)

// Env is a running server, a bus on it and a recorder of every fact.
type Env struct {
	Server *natsserver.Server
	Conn   *nats.Conn
	Bus    *bus.Bus

	mu     sync.Mutex
	facts  []events.Event
	notify chan struct{}
}

// Start starts a server (listening on a loopback port, so subprocesses can
// join) and begins recording facts.
func Start(t testing.TB) *Env {
	t.Helper()
	srv, err := natsserver.Start(natsserver.Config{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	b, err := bus.New(nc, bus.WithSource("tidemark/test"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.EnsureTopology(context.Background()); err != nil {
		t.Fatal(err)
	}
	e := &Env{Server: srv, Conn: nc, Bus: b, notify: make(chan struct{}, 1)}
	e.record(t, jetstream.DeliverAllPolicy)
	return e
}

// Join records the facts published from now on through nc, a connection to
// a NATS server that already has Tidemark's topology (a deployed Tidemark),
// and publishes as source. Server is nil.
func Join(t testing.TB, nc *nats.Conn, source string) *Env {
	t.Helper()
	b, err := bus.New(nc, bus.WithSource(source))
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{Conn: nc, Bus: b, notify: make(chan struct{}, 1)}
	e.record(t, jetstream.DeliverNewPolicy)
	return e
}

func (e *Env) record(t testing.TB, from jetstream.DeliverPolicy) {
	t.Helper()
	js, err := jetstream.New(e.Conn)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.OrderedConsumer(context.Background(), bus.StreamEvents, jetstream.OrderedConsumerConfig{DeliverPolicy: from})
	if err != nil {
		t.Fatalf("consuming %s: %v", bus.StreamEvents, err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		ev, err := cenats.Decode(context.Background(), &nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
		if err != nil {
			t.Errorf("undecodable fact on %s: %v", m.Subject(), err)
			return
		}
		e.mu.Lock()
		e.facts = append(e.facts, ev)
		e.mu.Unlock()
		select {
		case e.notify <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
}

// Publish publishes ev or fails the test.
func (e *Env) Publish(t testing.TB, ev events.Event) {
	t.Helper()
	if _, err := e.Bus.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
}

// Facts returns every fact recorded so far.
func (e *Env) Facts() []events.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]events.Event(nil), e.facts...)
}

// WaitFor returns the first recorded fact that matches, waiting up to
// timeout for it.
func (e *Env) WaitFor(t testing.TB, timeout time.Duration, what string, match func(events.Event) bool) events.Event {
	t.Helper()
	deadline := time.After(timeout)
	for {
		for _, ev := range e.Facts() {
			if match(ev) {
				return ev
			}
		}
		select {
		case <-e.notify:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no %s within %s; facts: %v", what, timeout, e.describe())
			return events.Event{}
		}
	}
}

func (e *Env) describe() []string {
	var out []string
	for _, ev := range e.Facts() {
		out = append(out, string(ev.Type())+" "+ev.Subject)
	}
	return out
}

// Step matches a fact of payload type P about one run's step.
func Step[P events.Payload](run events.RunID, step string) func(events.Event) bool {
	return func(ev events.Event) bool {
		p, ok := events.As[P](ev)
		if !ok {
			return false
		}
		switch x := any(p).(type) {
		case events.HookSucceeded:
			return x.RunID == run && x.Step == step
		case events.HookFailed:
			return x.RunID == run && x.Step == step
		case events.HookReleased:
			return x.RunID == run && x.Step == step
		}
		return false
	}
}

// DeadLetters returns every dead letter stored so far.
func (e *Env) DeadLetters(t testing.TB) []events.DeadLettered {
	t.Helper()
	ctx := context.Background()
	js, err := jetstream.New(e.Conn)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, bus.StreamDeadLetter)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []events.DeadLettered
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		ev, err := cenats.Decode(ctx, &nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data})
		if err != nil {
			t.Fatalf("dead letter %d: %v", seq, err)
		}
		if dl, ok := events.As[events.DeadLettered](ev); ok {
			out = append(out, dl)
		}
	}
	return out
}

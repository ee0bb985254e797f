//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/cenats"
)

// natsBus is a connection to the cluster's NATS through a port-forward
// to nats-0 (its Service is headless: no ClusterIP to reach from the
// host), a bus to publish commands on, and a recorder of the facts
// published from the moment it connected.
type natsBus struct {
	bus *bus.Bus

	mu     sync.Mutex
	facts  []events.Event
	notify chan struct{}
}

func connectBus(t *testing.T, c *cluster) *natsBus {
	t.Helper()
	addr := c.portForward(t, namespace, natsPod, 4222)
	nc, err := nats.Connect("nats://"+addr, nats.Name("tidemark-e2e"),
		// The port-forward is the only way in: never try the addresses
		// the server advertises (pod IPs).
		nats.DontRandomize(), nats.IgnoreDiscoveredServers())
	if err != nil {
		t.Fatalf("NATS through the port-forward %s: %v", addr, err)
	}
	t.Cleanup(nc.Close)
	b, err := bus.New(nc, bus.WithSource("tidemark/e2e"))
	if err != nil {
		t.Fatal(err)
	}
	nb := &natsBus{bus: b, notify: make(chan struct{}, 1)}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cons, err := js.OrderedConsumer(ctx, bus.StreamEvents, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		t.Fatalf("consuming %s: %v", bus.StreamEvents, err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		ev, err := cenats.Decode(ctx, &nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
		if err != nil {
			t.Errorf("undecodable fact on %s: %v", m.Subject(), err)
			return
		}
		nb.mu.Lock()
		nb.facts = append(nb.facts, ev)
		nb.mu.Unlock()
		select {
		case nb.notify <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return nb
}

func (nb *natsBus) publish(t *testing.T, ev events.Event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := nb.bus.Publish(ctx, ev); err != nil {
		t.Fatalf("publishing %s: %v", ev.Type(), err)
	}
}

// waitFor returns the first fact that matches, waiting up to timeout.
func (nb *natsBus) waitFor(t *testing.T, timeout time.Duration, what string, match func(events.Event) bool) events.Event {
	t.Helper()
	deadline := time.After(timeout)
	seen := 0
	for {
		nb.mu.Lock()
		facts := nb.facts[seen:]
		nb.mu.Unlock()
		for _, ev := range facts {
			if match(ev) {
				return ev
			}
		}
		seen += len(facts)
		select {
		case <-nb.notify:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no %s within %s; facts seen: %s", what, timeout, nb.describe())
			return events.Event{}
		}
	}
}

func (nb *natsBus) describe() string {
	nb.mu.Lock()
	defer nb.mu.Unlock()
	var out []string
	for _, ev := range nb.facts {
		out = append(out, fmt.Sprintf("%s %s %+v", ev.Type(), ev.Subject, ev.Data))
	}
	return strings.Join(out, "\n")
}

// runID is unique per test run, so a rerun never meets an earlier run's
// idempotent results.
func runID(name string) events.RunID {
	return events.RunID(fmt.Sprintf("e2e-%s-%d", name, time.Now().UnixNano()))
}

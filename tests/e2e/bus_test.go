//go:build e2e

package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/tests/bustest"
)

// connectBus connects to the cluster's NATS through a port-forward to
// nats-0 (its Service is headless: no ClusterIP to reach from the host),
// and records the facts published from then on.
func connectBus(t *testing.T, c *cluster) *bustest.Env {
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
	return bustest.Join(t, nc, "tidemark/e2e")
}

// runID is unique per test run, so a rerun never meets an earlier run's
// idempotent results.
func runID(name string) events.RunID {
	return events.RunID(fmt.Sprintf("e2e-%s-%d", name, time.Now().UnixNano()))
}

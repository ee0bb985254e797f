package hookrunner

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/tests/bustest"
)

// BenchmarkLockHoldOverhead measures, on a real MariaDB and the embedded
// bus, the time from publishing a hold command to the hook.succeeded fact
// (emitted once FLUSH TABLES WITH READ LOCK has returned, so the lock is
// held), and from publishing the release to the hook.released fact (emitted
// after UNLOCK TABLES returned).
func BenchmarkLockHoldOverhead(b *testing.B) {
	h := start(b)
	mariaDB(b, h)
	var lock, unlock []time.Duration
	b.ResetTimer()
	for i := range b.N {
		run := events.RunID(fmt.Sprintf("run-bench-%d", i))
		start := time.Now()
		h.env.Publish(b, command(run, "shop/mariadb", "lock", "sql", ftwrl, time.Minute))
		h.env.WaitFor(b, 30*time.Second, "lock", bustest.Step[events.HookSucceeded](run, "lock"))
		lock = append(lock, time.Since(start))
		start = time.Now()
		h.env.Publish(b, release(run, "lock"))
		h.env.WaitFor(b, 30*time.Second, "release", bustest.Step[events.HookReleased](run, "lock"))
		unlock = append(unlock, time.Since(start))
	}
	b.StopTimer()
	for name, d := range map[string][]time.Duration{"lock": lock, "release": unlock} {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		b.ReportMetric(float64(d[len(d)/2].Microseconds()), name+"-p50-µs")
		b.ReportMetric(float64(d[(len(d)*99)/100].Microseconds()), name+"-p99-µs")
	}
}

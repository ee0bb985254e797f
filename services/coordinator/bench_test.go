package coordinator_test

import (
	"database/sql"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/tests/dbserver"
)

// BenchmarkFreezeWindowOverhead backs up a real MariaDB through every
// service (in this process, on a real NATS server) and measures what the
// saga adds to the freeze: the time FLUSH TABLES WITH READ LOCK was held,
// as the hookrunner measured it, minus the time the snapshotter spent
// taking the snapshots. That difference is the bus and coordinator path:
// lock answered → snapshot requested → snapshot answered → release sent →
// UNLOCK TABLES. Reported as p50/p99 over TIDEMARK_BENCH_BACKUPS backups
// (default 50) per iteration; run with -benchtime 1x.
func BenchmarkFreezeWindowOverhead(b *testing.B) {
	n := 50
	if v := getenvInt("TIDEMARK_BENCH_BACKUPS"); v > 0 {
		n = v
	}
	srv := dbserver.MariaDB(b)
	db, err := sql.Open("mysql", srv.MySQLDSN(""))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{"CREATE DATABASE shop", "CREATE TABLE shop.ticks (id BIGINT AUTO_INCREMENT PRIMARY KEY)"} {
		if _, err := db.Exec(q); err != nil {
			b.Fatal(err)
		}
	}
	b.Setenv("TIDEMARK_BENCH_MARIADB_PASSWORD", srv.Password)
	sys := newSystem(b)
	sys.startAll()
	sys.app("shop/mariadb", "mariadb", map[string]string{"data": srv.DataDir}, fmt.Sprintf(`  connections:
    primary:
      driver: mysql
      dsn: "%s@tcp(%s:%d)/"
      passwordFrom: {env: TIDEMARK_BENCH_MARIADB_PASSWORD}
`, srv.User, srv.Host, srv.Port))
	b.ResetTimer()
	for range b.N {
		var overhead, held, snap []time.Duration
		for range n {
			run := sys.backup("shop/mariadb")
			end := sys.outcome(run, 5*time.Minute)
			if _, ok := events.As[events.RestorePointRecorded](end); !ok {
				b.Fatalf("backup ended with %s %+v", end.Type(), end.Data)
			}
			var h, s time.Duration
			for _, e := range sys.env.Facts() {
				switch p := e.Data.(type) {
				case events.HookReleased:
					if p.RunID == run {
						h = p.HeldFor.Std()
					}
				case events.SnapshotReady:
					if p.RunID == run {
						for _, v := range p.Snapshots {
							s = max(s, v.Duration.Std())
						}
					}
				}
			}
			held, snap, overhead = append(held, h), append(snap, s), append(overhead, h-s)
			// The next backup must not be rejected as concurrent.
			sys.waitStatus(run, time.Minute)
		}
		b.ReportMetric(ms(percentile(overhead, 50)), "overhead-p50-ms")
		b.ReportMetric(ms(percentile(overhead, 99)), "overhead-p99-ms")
		b.ReportMetric(ms(percentile(held, 50)), "held-p50-ms")
		b.ReportMetric(ms(percentile(snap, 50)), "snapshot-p50-ms")
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile returns the p-th percentile (nearest rank).
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (p*len(s)+99)/100 - 1
	return s[max(0, min(i, len(s)-1))]
}

package coordinator_test

import (
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"syscall"
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

// processCPU is the CPU time (user and system) this process has used: the
// services and the embedded NATS server, not pg_restore or PostgreSQL.
func processCPU(b *testing.B) time.Duration { return rusage(b, syscall.RUSAGE_SELF) }

// childrenCPU is the CPU time of this process's finished children: each
// pg_restore, the baseline's and the hookrunner's, once it has exited.
func childrenCPU(b *testing.B) time.Duration { return rusage(b, syscall.RUSAGE_CHILDREN) }

func rusage(b *testing.B, who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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

// BenchmarkLogicalRestore compares a logical restore through Tidemark with
// pg_restore from a local file. A PostgreSQL database of about
// TIDEMARK_BENCH_DUMP_MB (default 1024) MiB of hard-to-compress rows is
// backed up with the bundled postgres-logical blueprint (pg_dump -Fc)
// through every service; then, in TIDEMARK_BENCH_ROUNDS (default 3)
// interleaved rounds, the baseline runs the blueprint's own pg_restore
// command on a local copy of the same dump into a fresh database, and
// Tidemark restores the point into another fresh database: repository →
// data mover → a pipe over core NATS → the hookrunner's pg_restore stdin.
// Reported: the medians, tidemark/pg_restore as a throughput ratio (≥ 1
// means Tidemark is as fast) and the CPU this process (every service and
// the NATS server) used per restore. TIDEMARK_BENCH_CPUPROFILE=FILE writes
// a CPU profile of the Tidemark restores only. Run with -benchtime 1x.
func BenchmarkLogicalRestore(b *testing.B) {
	mb := 1024
	if v := getenvInt("TIDEMARK_BENCH_DUMP_MB"); v > 0 {
		mb = v
	}
	rounds := 3
	if v := getenvInt("TIDEMARK_BENCH_ROUNDS"); v > 0 {
		rounds = v
	}
	srv := dbserver.PostgreSQL(b)
	db, err := sql.Open("pgx", srv.PostgresDSN(""))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	start := time.Now()
	// 1 KiB rows of random hex: pg_dump's compression gains about 2×, so the
	// rows are twice the target dump size.
	rows := mb * 2 * 1024
	for _, q := range []string{
		"CREATE TABLE payload (id BIGINT PRIMARY KEY, body TEXT NOT NULL)",
		fmt.Sprintf("INSERT INTO payload SELECT g, (SELECT string_agg(md5(random()::text || s || g), '') FROM generate_series(1, 32) s) FROM generate_series(1, %d) g", rows),
		"CREATE INDEX payload_body ON payload (left(body, 16))",
	} {
		if _, err := db.Exec(q); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("generated %d rows in %s", rows, time.Since(start).Round(time.Second))

	b.Setenv("TIDEMARK_BENCH_PG_PASSWORD", srv.Password)
	sys := newSystem(b)
	sys.startAll()
	sys.app("shop/pg-logical", "postgres-logical", nil, fmt.Sprintf(`  params: {host: "%s", port: "%d", user: "%s", database: postgres}
  secrets:
    password: {env: TIDEMARK_BENCH_PG_PASSWORD}
`, srv.Host, srv.Port, srv.User))
	run := sys.backup("shop/pg-logical")
	rec, ok := events.As[events.RestorePointRecorded](sys.outcome(run, time.Hour))
	if !ok {
		b.Fatal("backup failed")
	}
	dumpBytes := rec.Artifacts[0].Bytes
	b.Logf("dump: %d MiB", dumpBytes>>20)

	file := filepath.Join(b.TempDir(), "database.pgdump")
	dump := exec.Command("pg_dump", "-Fc", "--no-password", "--file", file)
	dump.Env = append(os.Environ(), "PGHOST="+srv.Host, fmt.Sprintf("PGPORT=%d", srv.Port), "PGUSER="+srv.User, "PGDATABASE=postgres", "PGPASSWORD="+srv.Password)
	if out, err := dump.CombinedOutput(); err != nil {
		b.Fatalf("pg_dump: %v: %s", err, out)
	}

	fresh := func(name string) {
		if _, err := db.Exec("DROP DATABASE IF EXISTS " + name); err != nil {
			b.Fatal(err)
		}
		if _, err := db.Exec("CREATE DATABASE " + name); err != nil {
			b.Fatal(err)
		}
	}
	// Profiling only the Tidemark restores (not the data generation or the
	// backup) shows where the CPU Tidemark adds per byte goes; pg_restore
	// and the server run in other processes and are not in it.
	var prof *os.File
	if path := os.Getenv("TIDEMARK_BENCH_CPUPROFILE"); path != "" {
		if prof, err = os.Create(path); err != nil {
			b.Fatal(err)
		}
		defer prof.Close()
	}
	b.ResetTimer()
	for range b.N {
		var base, tm, cpu []time.Duration
		for i := range rounds {
			fresh("baseline")
			// The blueprint's restore command, reading a local file.
			restore := exec.Command("pg_restore", "--no-password", "--clean", "--if-exists", "--single-transaction", "--exit-on-error", "--dbname=baseline", file)
			restore.Env = append(os.Environ(), "PGHOST="+srv.Host, fmt.Sprintf("PGPORT=%d", srv.Port), "PGUSER="+srv.User, "PGPASSWORD="+srv.Password)
			k0 := childrenCPU(b)
			t0 := time.Now()
			if out, err := restore.CombinedOutput(); err != nil {
				b.Fatalf("pg_restore: %v: %s", err, out)
			}
			base = append(base, time.Since(t0))
			baseRestoreCPU := childrenCPU(b) - k0

			name := fmt.Sprintf("tidemark_%d", i)
			fresh(name)
			if prof != nil && i == 0 {
				if err := pprof.StartCPUProfile(prof); err != nil {
					b.Fatal(err)
				}
			}
			c0, k0 := processCPU(b), childrenCPU(b)
			t0 = time.Now()
			done := sys.restoreRequest(events.RestoreRequested{RestorePointID: rec.RestorePointID, Target: events.RestoreTarget{Mode: "new"}, Params: map[string]string{"database": name}})
			if f, failed := events.As[events.RestoreFailed](done); failed {
				b.Fatalf("restore failed: %s", f.Reason)
			}
			tm = append(tm, time.Since(t0))
			cpu = append(cpu, processCPU(b)-c0)
			if prof != nil && i == rounds-1 {
				pprof.StopCPUProfile()
			}
			b.Logf("round %d: pg_restore from a file %s (pg_restore's CPU %s), Tidemark %s (Tidemark's own CPU %s, its pg_restore's %s)", i+1,
				base[i].Round(time.Millisecond), baseRestoreCPU.Round(time.Millisecond),
				tm[i].Round(time.Millisecond), cpu[i].Round(time.Millisecond), (childrenCPU(b) - k0).Round(time.Millisecond))
		}
		slices.Sort(base)
		slices.Sort(tm)
		slices.Sort(cpu)
		mb, mt := base[len(base)/2], tm[len(tm)/2]
		b.ReportMetric(mb.Seconds(), "pg_restore-s")
		b.ReportMetric(mt.Seconds(), "tidemark-s")
		b.ReportMetric(cpu[len(cpu)/2].Seconds(), "tidemark-cpu-s")
		b.ReportMetric(mb.Seconds()/mt.Seconds(), "throughput-ratio")
		b.ReportMetric(float64(dumpBytes)/(1<<20)/mt.Seconds(), "tidemark-MiB/s")
	}
}

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/application"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/services/coordinator"
	"github.com/tidemark-dev/tidemark/tests/bustest"
)

// instantServices stands in for the hookrunner, snapshotter, data mover and
// catalog in BenchmarkConcurrentRuns: every command succeeds at once. It is
// not a fake of any service's behaviour; it removes their work so that the
// benchmark measures the coordinator and the bus alone.
func instantServices(ctx context.Context, b *bus.Bus) {
	consume := func(name, stream string, subjects []string, h bus.Handler) {
		go func() {
			_ = b.Consume(ctx, bus.ConsumerSpec{Name: name, Stream: stream, FilterSubjects: subjects, Concurrency: 32}, h)
		}()
	}
	subject := func(p events.Payload) string {
		d, _ := events.Lookup(p.EventType())
		return d.Subject()
	}
	now := func() time.Time { return time.Now().UTC() }
	consume("instant-hooks", bus.StreamHookCommands, []string{subject(events.HookRequested{})}, func(_ context.Context, ev events.Event) ([]events.Event, error) {
		r := ev.Data.(events.HookRequested)
		return []events.Event{{Subject: ev.Subject, Data: events.HookSucceeded{RunID: r.RunID, Step: r.Step, StartedAt: now(), FinishedAt: now()}}}, nil
	})
	consume("instant-snapshots", bus.StreamSnapshotCommands, []string{subject(events.SnapshotRequested{}), subject(events.SnapshotDeleteRequested{})}, func(_ context.Context, ev events.Event) ([]events.Event, error) {
		switch r := ev.Data.(type) {
		case events.SnapshotRequested:
			var snaps []events.VolumeSnapshot
			for _, v := range r.Volumes {
				snaps = append(snaps, events.VolumeSnapshot{Volume: v.Name, SnapshotID: events.SnapshotID("snap-" + string(r.RunID) + "-" + v.Name), Method: "reflink"})
			}
			return []events.Event{{Subject: ev.Subject, Data: events.SnapshotReady{RunID: r.RunID, Step: r.Step, Snapshots: snaps}}}, nil
		case events.SnapshotDeleteRequested:
			return []events.Event{{Subject: ev.Subject, Data: events.SnapshotDeleted{RunID: r.RunID, SnapshotIDs: r.SnapshotIDs}}}, nil
		}
		return nil, nil
	})
	consume("instant-movers", bus.StreamVolumeCommands, []string{subject(events.VolumeExportRequested{})}, func(_ context.Context, ev events.Event) ([]events.Event, error) {
		r := ev.Data.(events.VolumeExportRequested)
		return []events.Event{{Subject: ev.Subject, Data: events.VolumeExported{RunID: r.RunID, Volume: r.Volume, SourceKind: r.SourceKind, ManifestID: "k" + events.ManifestID(strings.ReplaceAll(string(r.RunID), "-", "")), StartedAt: now(), FinishedAt: now()}}}, nil
	})
	consume("instant-catalog", bus.StreamEvents, []string{subject(events.BackupCompleted{})}, func(_ context.Context, ev events.Event) ([]events.Event, error) {
		r := ev.Data.(events.BackupCompleted)
		return []events.Event{{Subject: ev.Subject, Data: events.RestorePointRecorded{RestorePointID: r.RestorePointID, RunID: r.RunID, Application: r.Application, CreatedAt: now(), Consistency: "application",
			Artifacts: []events.Artifact{{Name: "data", Kind: "volume", ManifestID: "k1"}}}}}, nil
	})
}

// BenchmarkConcurrentRuns starts TIDEMARK_BENCH_RUNS (default 1000) backups
// of as many applications at once against one coordinator process, with
// every step succeeding at once (instantServices), and reports the
// end-to-end latency of a run (request published → restore point recorded)
// and the coordinator's peak RSS. Run with -benchtime 1x.
func BenchmarkConcurrentRuns(b *testing.B) {
	n := 1000
	if v, _ := strconv.Atoi(os.Getenv("TIDEMARK_BENCH_RUNS")); v > 0 {
		n = v
	}
	env := bustest.Start(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	instantServices(ctx, env.Bus)
	appsDir := b.TempDir()
	bp := filepath.Join(appsDir, "noop.blueprint.yaml")
	if err := os.WriteFile(bp, []byte(`apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: noop}
spec:
  actions:
    backup:
      - name: quiesce
        kind: exec
        exec: {command: ["true"]}
        inverse:
          name: resume
          kind: exec
          exec: {command: ["true"]}
      - name: snapshot
        kind: snapshot
    restore:
      - name: snapshot
        kind: snapshot
`), 0o644); err != nil {
		b.Fatal(err)
	}
	for i := range n {
		app := fmt.Sprintf("apiVersion: tidemark.io/v1alpha1\nkind: Application\nmetadata: {name: bench/app-%04d}\nspec:\n  blueprint: %s\n  volumes: {data: /var/empty}\n", i, bp)
		if err := os.WriteFile(filepath.Join(appsDir, fmt.Sprintf("app-%04d.yaml", i)), []byte(app), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	var p *tidemarkProcess
	if os.Getenv("TIDEMARK_BENCH_INPROCESS") != "" {
		// For profiling the coordinator with -cpuprofile: it runs in this
		// process, and its RSS is not reported.
		svc, err := coordinator.New(coordinator.Config{InstanceID: "bench", Apps: application.Dir(appsDir), BlueprintDir: appsDir}, env.Bus)
		if err != nil {
			b.Fatal(err)
		}
		go func() { _ = svc.Run(ctx) }()
	} else {
		p = startTidemark(b, "serve", "--services", "coordinator", "--nats-url", env.Server.ClientURL(), "--apps-dir", appsDir,
			"--data-dir", b.TempDir(), "--listen", "127.0.0.1:0", "--log-format", "json", "--instance-id", "bench")
		p.logField(b, "tidemark serving", "http")
	}
	b.ResetTimer()
	for iter := range b.N {
		start := time.Now()
		var cpuBefore time.Duration
		if p != nil {
			cpuBefore = processCPU(b, p.cmd.Process.Pid)
		}
		selfBefore := processCPU(b, os.Getpid())
		sent := make([]time.Time, n)
		ids := make([]string, n)
		var wg sync.WaitGroup
		for w := range 16 {
			wg.Go(func() {
				for i := w; i < n; i += 16 {
					app := fmt.Sprintf("bench/app-%04d", i)
					ev := events.New("/bench", app, events.BackupRequested{Application: app}, time.Now())
					ids[i], sent[i] = ev.ID, time.Now()
					if _, err := env.Bus.Publish(ctx, ev); err != nil {
						b.Error(err)
					}
				}
			})
		}
		wg.Wait()
		// run -> request index, from the acceptances; then latencies from
		// the restore points.
		byRequest := map[string]int{}
		for i, id := range ids {
			byRequest[id] = i
		}
		runOf := map[events.RunID]int{}
		latencies := map[events.RunID]time.Duration{}
		deadline := time.Now().Add(5 * time.Minute)
		for len(latencies) < n && time.Now().Before(deadline) {
			for _, ev := range env.Facts() {
				switch d := ev.Data.(type) {
				case events.BackupAccepted:
					if i, ok := byRequest[ev.CausationID]; ok {
						runOf[d.RunID] = i
					}
				case events.BackupRejected:
					b.Fatalf("rejected: %s", d.Reason)
				case events.BackupFailed:
					b.Fatalf("run failed: %s", d.Reason)
				case events.RestorePointRecorded:
					if i, ok := runOf[d.RunID]; ok {
						if _, seen := latencies[d.RunID]; !seen {
							latencies[d.RunID] = ev.Time.Sub(sent[i])
						}
					}
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		if len(latencies) < n {
			b.Fatalf("only %d of %d runs completed", len(latencies), n)
		}
		all := make([]time.Duration, 0, n)
		for _, l := range latencies {
			all = append(all, l)
		}
		b.ReportMetric(msf(pct(all, 50)), "latency-p50-ms")
		b.ReportMetric(msf(pct(all, 99)), "latency-p99-ms")
		b.ReportMetric(time.Since(start).Seconds(), "wall-s")
		if p != nil {
			b.ReportMetric(float64(peakRSS(b, p.cmd.Process.Pid))/(1<<20), "coordinator-peak-rss-MiB")
			// CPU per run is steadier than latency on a shared machine.
			b.ReportMetric(msf(processCPU(b, p.cmd.Process.Pid)-cpuBefore)/float64(n), "coordinator-cpu-ms/run")
		}
		{
			// The NATS server, the stand-in services and the requests.
			b.ReportMetric(msf(processCPU(b, os.Getpid())-selfBefore)/float64(n), "rest-cpu-ms/run")
		}
		_ = iter
	}
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (p*len(s)+99)/100 - 1
	return s[max(0, min(i, len(s)-1))]
}

// peakRSS reads a process's high-water resident set size (VmHWM).
func peakRSS(b *testing.B, pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// processCPU reads a process's user plus system CPU time.
func processCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command name, which is in parentheses and may hold spaces.
	fields := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ is 100 on Linux
}

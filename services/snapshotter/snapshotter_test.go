package snapshotter

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform"
	"github.com/tidemark-dev/tidemark/pkg/platform/local"
	"github.com/tidemark-dev/tidemark/tests/bustest"
)

// logBuffer collects log lines for assertions; it is safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

type harness struct {
	env  *bustest.Env
	snap *local.Snapshotter
	root string
	logs *logBuffer
}

// newHarness makes a snapshot root and a real embedded NATS server; start
// runs the service on them.
func newHarness(t *testing.T) *harness {
	t.Helper()
	logs := &logBuffer{}
	root := filepath.Join(t.TempDir(), "snapshots")
	snap, err := local.NewSnapshotter(root, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return &harness{env: bustest.Start(t), snap: snap, root: root, logs: logs}
}

func (h *harness) start(t *testing.T, cfg Config) {
	t.Helper()
	if cfg.Snapshotter == nil {
		cfg.Snapshotter = h.snap
	}
	cfg.Logger = slog.New(slog.NewTextHandler(h.logs, nil))
	s, err := New(cfg, h.env.Bus)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the snapshotter did not stop")
		}
	})
}

// snapshotDirs lists the snapshot directories on disk.
func (h *harness) snapshotDirs(t *testing.T) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(h.root, "*", "tm-*"))
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

func volume(t *testing.T, name string) events.VolumeRef {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(filepath.Join(dir, "base"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "base", "16384"), bytes.Repeat([]byte(name), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	return events.VolumeRef{Name: name, Source: dir}
}

func request(run events.RunID, step string, vols ...events.VolumeRef) events.Event {
	ev := events.New("tidemark/test", "shop/postgres", events.SnapshotRequested{
		RunID: run, Application: "shop/postgres", Step: step, Volumes: vols,
		Group: len(vols) > 1, IdempotencyKey: string(run) + ":" + step,
	}, time.Now())
	ev.CorrelationID = string(run)
	return ev
}

func deleteRequest(run events.RunID, ids ...events.SnapshotID) events.Event {
	ev := events.New("tidemark/test", "shop/postgres", events.SnapshotDeleteRequested{
		RunID: run, SnapshotIDs: ids, Reason: "exported to the repository",
	}, time.Now())
	ev.CorrelationID = string(run)
	return ev
}

// fact matches a fact of payload type P that satisfies match.
func fact[P events.Payload](match func(P) bool) func(events.Event) bool {
	return func(ev events.Event) bool {
		p, ok := events.As[P](ev)
		return ok && match(p)
	}
}

func TestSnapshotThroughTheBus(t *testing.T) {
	h := newHarness(t)
	h.start(t, Config{})
	data, wal := volume(t, "data"), volume(t, "wal")
	cmd := request("run-e2e", "snapshot-volumes", data, wal)
	h.env.Publish(t, cmd)

	isReady := fact(func(r events.SnapshotReady) bool { return r.RunID == "run-e2e" })
	ev := h.env.WaitFor(t, 20*time.Second, "snapshot.ready", isReady)
	r, _ := events.As[events.SnapshotReady](ev)
	if ev.CorrelationID != "run-e2e" || ev.CausationID != cmd.ID || ev.Subject != "shop/postgres" {
		t.Errorf("attributes: correlation %q causation %q subject %q", ev.CorrelationID, ev.CausationID, ev.Subject)
	}
	if r.Step != "snapshot-volumes" || len(r.Snapshots) != 2 {
		t.Fatalf("ready %+v", r)
	}
	if r.Group != nil {
		// The local platform's one pass is the group: nothing to report.
		t.Errorf("ready.group = %+v on the local platform, want none", *r.Group)
	}
	for i, vs := range r.Snapshots {
		want := []string{"data", "wal"}[i]
		if vs.Volume != want || vs.SnapshotID == "" || vs.Bytes != int64(len(want)*4096) || vs.Duration <= 0 ||
			(vs.Method != platform.MethodCopy && vs.Method != platform.MethodReflink) {
			t.Errorf("snapshot %d: %+v", i, vs)
		}
	}
	dirs := h.snapshotDirs(t)
	if len(dirs) != 2 {
		t.Fatalf("on disk: %v", dirs)
	}

	// The same command again (a new message, the same idempotency key):
	// the same answer, and no second snapshot.
	again := cmd
	again.ID = ""
	h.env.Publish(t, again)
	ev2 := h.env.WaitFor(t, 20*time.Second, "the repeated snapshot.ready", func(ev events.Event) bool {
		return isReady(ev) && ev.CausationID != cmd.ID
	})
	r2, _ := events.As[events.SnapshotReady](ev2)
	if r2.Snapshots[0].SnapshotID != r.Snapshots[0].SnapshotID || r2.Snapshots[1].SnapshotID != r.Snapshots[1].SnapshotID {
		t.Errorf("the repeated result names other snapshots: %+v, first %+v", r2, r)
	}
	if got := h.snapshotDirs(t); len(got) != 2 {
		t.Errorf("a redelivered request took another snapshot: %v", got)
	}

	// Delete, twice: both succeed, and the data is gone.
	ids := []events.SnapshotID{r.Snapshots[0].SnapshotID, r.Snapshots[1].SnapshotID}
	del := deleteRequest("run-e2e", ids...)
	h.env.Publish(t, del)
	isDeleted := fact(func(d events.SnapshotDeleted) bool { return d.RunID == "run-e2e" && len(d.SnapshotIDs) == 2 })
	h.env.WaitFor(t, 20*time.Second, "snapshot.deleted", isDeleted)
	for _, d := range dirs {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there: %v", d, err)
		}
	}
	del2 := deleteRequest("run-e2e", ids...)
	h.env.Publish(t, del2)
	h.env.WaitFor(t, 20*time.Second, "the second snapshot.deleted", func(ev events.Event) bool {
		return isDeleted(ev) && ev.CausationID == del2.ID
	})
	if _, err := os.Stat(data.Source); err != nil {
		t.Errorf("the volume itself was touched: %v", err)
	}
}

func TestMissingVolumeFailsPermanentlyAndLeavesNothing(t *testing.T) {
	h := newHarness(t)
	h.start(t, Config{})
	missing := filepath.Join(t.TempDir(), "x", "y")
	h.env.Publish(t, request("run-missing", "snapshot-volumes", volume(t, "data"), events.VolumeRef{Name: "wal", Source: missing}))
	ev := h.env.WaitFor(t, 20*time.Second, "snapshot.failed", fact(func(f events.SnapshotFailed) bool { return f.RunID == "run-missing" }))
	f, _ := events.As[events.SnapshotFailed](ev)
	want := "volume wal: " + missing + " does not exist; fix spec.volumes in the Application"
	if !f.Permanent || f.Error != want || f.Step != "snapshot-volumes" {
		t.Errorf("failed %+v, want a permanent %q", f, want)
	}
	if dirs := h.snapshotDirs(t); len(dirs) != 0 {
		t.Errorf("left behind: %v", dirs)
	}
}

// TestStartupSweep takes snapshots at fixed times, leaves a crash's
// half-taken snapshot, and starts the service 25 hours later: the old one
// and the incomplete one go, the fresh one stays.
func TestStartupSweep(t *testing.T) {
	h := newHarness(t)
	t0 := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	take := func(run events.RunID, at time.Time) platform.Snapshot {
		h.snap.Now = func() time.Time { return at }
		snaps, err := h.snap.Snapshot(context.Background(), run, []events.VolumeRef{volume(t, "data")})
		if err != nil {
			t.Fatal(err)
		}
		return snaps[0]
	}
	old := take("run-old", t0)
	fresh := take("run-fresh", t0.Add(23*time.Hour))
	orphan := filepath.Join(h.root, "run-crashed", "tm-run-crashed-data-0badf00d")
	if err := os.MkdirAll(filepath.Join(orphan, "data", "base"), 0o700); err != nil {
		t.Fatal(err)
	}

	h.start(t, Config{MaxAge: 24 * time.Hour, Now: func() time.Time { return t0.Add(25 * time.Hour) }})
	// The sweep runs before the service takes commands, so once a
	// command is answered the sweep is done.
	h.env.Publish(t, request("run-probe", "snapshot-volumes", volume(t, "data")))
	h.env.WaitFor(t, 20*time.Second, "snapshot.ready", fact(func(r events.SnapshotReady) bool { return r.RunID == "run-probe" }))

	for path, wantGone := range map[string]bool{old.Path: true, orphan: true, fresh.Path: false} {
		_, err := os.Stat(path)
		if gone := errors.Is(err, os.ErrNotExist); gone != wantGone {
			t.Errorf("%s: gone=%v, want %v (%v)", path, gone, wantGone, err)
		}
	}
	logs := h.logs.String()
	for _, want := range []string{"run=run-old", "run=run-crashed", "left incomplete by a crash"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the sweep's log lacks %q:\n%s", want, logs)
		}
	}
	if n := strings.Count(logs, "swept a leftover snapshot"); n != 2 {
		t.Errorf("the sweep logged %d deletions, want 2:\n%s", n, logs)
	}
	for _, ev := range h.env.Facts() {
		if _, ok := events.As[events.SnapshotDeleted](ev); ok {
			t.Errorf("the sweep emitted %s", ev.Type())
		}
	}
}

func TestSweepWithFixedClock(t *testing.T) {
	h := newHarness(t)
	t0 := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	var taken []platform.Snapshot
	for i, age := range []time.Duration{48 * time.Hour, 24*time.Hour + time.Second, 24 * time.Hour, time.Hour} {
		h.snap.Now = func() time.Time { return t0.Add(-age) }
		snaps, err := h.snap.Snapshot(context.Background(), events.RunID("run-"+string(rune('a'+i))), []events.VolumeRef{volume(t, "data")})
		if err != nil {
			t.Fatal(err)
		}
		taken = append(taken, snaps[0])
	}
	s, err := New(Config{Snapshotter: h.snap, Now: func() time.Time { return t0 }}, h.env.Bus)
	if err != nil {
		t.Fatal(err)
	}
	deleted, err := s.Sweep(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(deleted) != 2 || deleted[0].ID != taken[0].ID || deleted[1].ID != taken[1].ID {
		t.Errorf("deleted %+v; want the two older than the default 24h", deleted)
	}
	left, err := h.snap.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 2 {
		t.Errorf("left %+v", left)
	}
}

package snapshotter

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform"
	"github.com/tidemark-dev/tidemark/pkg/platform/local"
)

// groupSnapshotter is a platform with group snapshots, made of the local
// one: SnapshotGroup takes the volumes with Snapshot and answers with the
// configured group id or fallback reason (or error), recording its calls.
type groupSnapshotter struct {
	*local.Snapshotter
	group    events.SnapshotID
	fallback string
	err      error

	mu    sync.Mutex
	calls []string // "group" or "snapshot", one per call
}

func (g *groupSnapshotter) record(call string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, call)
}

func (g *groupSnapshotter) Calls() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.calls...)
}

func (g *groupSnapshotter) Snapshot(ctx context.Context, run events.RunID, volumes []events.VolumeRef) ([]platform.Snapshot, error) {
	g.record("snapshot")
	return g.Snapshotter.Snapshot(ctx, run, volumes)
}

func (g *groupSnapshotter) SnapshotGroup(ctx context.Context, run events.RunID, volumes []events.VolumeRef) (platform.GroupResult, error) {
	g.record("group")
	if g.err != nil {
		return platform.GroupResult{}, g.err
	}
	snaps, err := g.Snapshotter.Snapshot(ctx, run, volumes)
	if err != nil {
		return platform.GroupResult{}, err
	}
	return platform.GroupResult{Snapshots: snaps, Group: g.group, Fallback: g.fallback}, nil
}

var _ platform.GroupSnapshotter = (*groupSnapshotter)(nil)

func TestGroupRequestsGoThroughTheGroupSnapshotter(t *testing.T) {
	for _, tc := range []struct {
		name     string
		group    events.SnapshotID
		fallback string
		want     events.SnapshotGrouping
	}{
		{"group", "group:shop/tm-run-group", "", events.SnapshotGrouping{SnapshotID: "group:shop/tm-run-group"}},
		{"fallback", "", "no VolumeGroupSnapshotClass for CSI driver x", events.SnapshotGrouping{Fallback: "no VolumeGroupSnapshotClass for CSI driver x"}},
		// Neither: still says it was not a group.
		{"neither", "", "", events.SnapshotGrouping{Fallback: "the platform took no group snapshot and gave no reason"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			g := &groupSnapshotter{Snapshotter: h.snap, group: tc.group, fallback: tc.fallback}
			h.start(t, Config{Snapshotter: g})

			run := events.RunID("run-" + tc.name)
			h.env.Publish(t, request(run, "snapshot-volumes", volume(t, "data"), volume(t, "wal"))) // Group: true
			ev := h.env.WaitFor(t, 20*time.Second, "snapshot.ready", fact(func(r events.SnapshotReady) bool { return r.RunID == run }))
			r, _ := events.As[events.SnapshotReady](ev)
			if len(r.Snapshots) != 2 || r.Group == nil || *r.Group != tc.want {
				t.Errorf("ready %+v (group %v), want 2 snapshots and group %+v", r, r.Group, tc.want)
			}
			// A request for one volume asks for no group: plain Snapshot,
			// and nothing said about groups.
			single := events.RunID("run-single-" + tc.name)
			h.env.Publish(t, request(single, "snapshot-volumes", volume(t, "data")))
			ev = h.env.WaitFor(t, 20*time.Second, "snapshot.ready", fact(func(r events.SnapshotReady) bool { return r.RunID == single }))
			if r, _ := events.As[events.SnapshotReady](ev); len(r.Snapshots) != 1 || r.Group != nil {
				t.Errorf("ungrouped ready %+v (group %v), want 1 snapshot and no group", r, r.Group)
			}
			if calls := g.Calls(); len(calls) != 2 || calls[0] != "group" || calls[1] != "snapshot" {
				t.Errorf("calls %v, want [group snapshot]", calls)
			}
		})
	}
}

func TestGroupSnapshotFailureIsReported(t *testing.T) {
	h := newHarness(t)
	g := &groupSnapshotter{Snapshotter: h.snap, err: errors.Join(platform.ErrInvalidVolume, errors.New("two default group classes"))}
	h.start(t, Config{Snapshotter: g})
	h.env.Publish(t, request("run-group-fails", "snapshot-volumes", volume(t, "data"), volume(t, "wal")))
	ev := h.env.WaitFor(t, 20*time.Second, "snapshot.failed", fact(func(f events.SnapshotFailed) bool { return f.RunID == "run-group-fails" }))
	if f, _ := events.As[events.SnapshotFailed](ev); !f.Permanent {
		t.Errorf("failed %+v, want permanent", f)
	}
	if dirs := h.snapshotDirs(t); len(dirs) != 0 {
		t.Errorf("left behind: %v", dirs)
	}
}

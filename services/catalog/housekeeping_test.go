package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/pkg/retention"
)

// backup stores a real snapshot of a small volume, as a data mover would,
// and publishes the facts of a completed run made of it. It returns the
// snapshot's manifest id.
func (h *harness) backup(t *testing.T, app string, run events.RunID, point events.RestorePointID, at time.Time) events.ManifestID {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "data"), []byte("contents of "+string(run)), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := h.repo.ExportDir(context.Background(), repository.ExportRequest{App: app, Volume: "data", RunID: string(run), Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	id := events.ManifestID(res.ManifestID)
	for _, p := range []events.Payload{
		events.HookReleased{RunID: run, Step: "backup-start", HeldFor: events.Duration(time.Second), By: "request", Outputs: map[string]string{"labelfile": "START WAL LOCATION: " + string(run)}},
		events.VolumeExported{RunID: run, Volume: "data", SourceKind: "snapshot", ManifestID: id, Files: res.Files, Bytes: res.Bytes, StartedAt: at, FinishedAt: at},
		events.BackupCompleted{RunID: run, Application: app, RestorePointID: point, StartedAt: at, FinishedAt: at.Add(time.Minute), FreezeWindow: events.Duration(time.Second)},
	} {
		ev := events.New("tidemark/test", app, p, time.Now())
		ev.CorrelationID = string(run)
		h.env.Publish(t, ev)
	}
	return id
}

func (h *harness) waitRecorded(t *testing.T, point events.RestorePointID) {
	t.Helper()
	h.env.WaitFor(t, 20*time.Second, "restorepoint.recorded "+string(point), func(ev events.Event) bool {
		r, ok := events.As[events.RestorePointRecorded](ev)
		return ok && r.RestorePointID == point
	})
}

func (h *harness) hasSnapshot(t *testing.T, id events.ManifestID) bool {
	t.Helper()
	ok, err := h.repo.HasSnapshot(context.Background(), string(id))
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func recordIDs(t *testing.T, r *repository.Repository) []string {
	t.Helper()
	recs, err := r.Records(context.Background(), RecordKind)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, rec := range recs {
		ids = append(ids, rec.ID)
	}
	return ids
}

func TestRetentionExpiresPointsAfterEachNewOneAndDeletesTheirSnapshots(t *testing.T) {
	h := newSeparateHarness(t, Config{Retention: Retention{
		Applications: map[string]retention.Policy{"shop/postgres": {KeepLast: 2}},
		// Far away: what expires here is expired because a point was
		// recorded, not because a timer fired.
		Interval: time.Hour,
	}})
	ids := map[events.RestorePointID]events.ManifestID{}
	for i := 1; i <= 3; i++ {
		point := events.RestorePointID(fmt.Sprintf("rp-%d", i))
		ids[point] = h.backup(t, "shop/postgres", events.RunID(fmt.Sprintf("run-%d", i)), point, t0.Add(time.Duration(i)*time.Hour))
		h.waitRecorded(t, point)
	}
	// An application without a policy keeps everything.
	for i := 1; i <= 3; i++ {
		point := events.RestorePointID(fmt.Sprintf("maria-%d", i))
		ids[point] = h.backup(t, "shop/mariadb", events.RunID(fmt.Sprintf("mrun-%d", i)), point, t0.Add(time.Duration(i)*time.Hour))
		h.waitRecorded(t, point)
	}

	ev := h.env.WaitFor(t, 20*time.Second, "restorepoint.expired", func(ev events.Event) bool {
		_, ok := events.As[events.RestorePointExpired](ev)
		return ok
	})
	exp, _ := events.As[events.RestorePointExpired](ev)
	if exp.RestorePointID != "rp-1" || exp.Application != "shop/postgres" || !strings.Contains(exp.Reason, "keep last 2") {
		t.Fatalf("expired %+v, want rp-1 of shop/postgres with the policy as reason", exp)
	}
	if ev.CorrelationID != "run-1" || ev.Subject != "shop/postgres" {
		t.Errorf("expired event correlation %q subject %q", ev.CorrelationID, ev.Subject)
	}
	if _, err := h.store.Get(context.Background(), "rp-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the expired point is still in the catalog: %v", err)
	}
	if h.hasSnapshot(t, ids["rp-1"]) {
		t.Error("the expired point's snapshot is still in the repository")
	}
	for _, keep := range []events.RestorePointID{"rp-2", "rp-3", "maria-1", "maria-2", "maria-3"} {
		if p, err := h.store.Get(context.Background(), keep); err != nil || p.Status != StatusAvailable {
			t.Errorf("%s: %+v, %v; want it kept and available", keep, p, err)
		}
		if !h.hasSnapshot(t, ids[keep]) {
			t.Errorf("the snapshot of kept point %s was deleted", keep)
		}
	}
	if got := strings.Join(recordIDs(t, h.repo), ","); got != "maria-1,maria-2,maria-3,rp-2,rp-3" {
		t.Errorf("records in the repository: %s", got)
	}
	// Exactly one expiry: the others were kept on every pass.
	n := 0
	for _, f := range h.env.Facts() {
		if _, ok := events.As[events.RestorePointExpired](f); ok {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d restorepoint.expired events, want 1", n)
	}
}

// failingDeletes is the real repository, except that deleting a snapshot
// fails while fail is set: a storage outage in the middle of a deletion.
type failingDeletes struct {
	*repository.Repository
	fail atomic.Bool
}

func (f *failingDeletes) wrap(r *repository.Repository) { f.Repository = r }

func (f *failingDeletes) DeleteSnapshot(ctx context.Context, id string) error {
	if f.fail.Load() {
		return errors.New("storage unavailable: connection refused")
	}
	return f.Repository.DeleteSnapshot(ctx, id)
}

func TestAFailedDeletionKeepsThePointAndIsRetried(t *testing.T) {
	flaky := &failingDeletes{}
	flaky.fail.Store(true)
	h := newHarness(t, Config{
		Repository: flaky,
		Retention:  Retention{Default: &retention.Policy{KeepLast: 1}, Interval: time.Hour},
	})
	svc := h.svc
	old := h.backup(t, "shop/postgres", "run-1", "rp-1", t0)
	h.waitRecorded(t, "rp-1")
	h.backup(t, "shop/postgres", "run-2", "rp-2", t0.Add(time.Hour))
	h.waitRecorded(t, "rp-2")

	// The pass after rp-2 tries to expire rp-1 and fails.
	var p RestorePoint
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		p, err = h.store.Get(context.Background(), "rp-1")
		if err != nil {
			t.Fatalf("the point whose deletion failed vanished from the catalog: %v", err)
		}
		if p.Status == StatusDeleting && p.Deletion != nil && p.Deletion.LastError != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rp-1 is %+v; want it marked deleting with the error", p)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(p.Deletion.LastError, "connection refused") || p.Deletion.By != DeletedByRetention {
		t.Errorf("deletion %+v", p.Deletion)
	}
	if !h.hasSnapshot(t, old) {
		t.Fatal("the snapshot is gone although its deletion failed")
	}
	for _, f := range h.env.Facts() {
		if _, ok := events.As[events.RestorePointExpired](f); ok {
			t.Fatal("restorepoint.expired announced for a deletion that failed")
		}
	}
	// While it is being deleted, a rebuild must not bring it back.
	if ids := recordIDs(t, h.repo); len(ids) != 1 || ids[0] != "rp-2" {
		t.Errorf("records in the repository: %v, want only rp-2", ids)
	}

	// The storage is back; the next pass finishes the deletion.
	flaky.fail.Store(false)
	if rep := housekeep(t, svc); len(rep.Failed) != 0 {
		t.Fatalf("retry: %+v", rep)
	}
	if _, err := h.store.Get(context.Background(), "rp-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("rp-1 after the retry: %v", err)
	}
	if h.hasSnapshot(t, old) {
		t.Error("the snapshot survived the retried deletion")
	}
	h.env.WaitFor(t, 10*time.Second, "restorepoint.expired rp-1", func(ev events.Event) bool {
		e, ok := events.As[events.RestorePointExpired](ev)
		return ok && e.RestorePointID == "rp-1"
	})
	if p, err := h.store.Get(context.Background(), "rp-2"); err != nil || p.Status != StatusAvailable {
		t.Errorf("rp-2: %+v, %v", p, err)
	}
}

func TestDeletePointOnRequest(t *testing.T) {
	h := newHarness(t, Config{})
	snap := h.backup(t, "shop/postgres", "run-1", "rp-1", t0)
	h.waitRecorded(t, "rp-1")
	keep := h.backup(t, "shop/postgres", "run-2", "rp-2", t0.Add(time.Hour))
	h.waitRecorded(t, "rp-2")

	ctx := context.Background()
	cli := openRepo(t, h.repoPath) // the CLI is one more client
	p, deleted, err := DeletePoint(ctx, h.store, cli, h.env.Bus, "rp-1", "deleted by tidemark points delete")
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != "rp-1" || len(deleted) != 1 || deleted[0] != snap {
		t.Fatalf("deleted %+v %v", p, deleted)
	}
	if h.hasSnapshot(t, snap) || !h.hasSnapshot(t, keep) {
		t.Error("want rp-1's snapshot gone and rp-2's kept")
	}
	ev := h.env.WaitFor(t, 10*time.Second, "restorepoint.deleted", func(ev events.Event) bool {
		_, ok := events.As[events.RestorePointDeleted](ev)
		return ok
	})
	if d, _ := events.As[events.RestorePointDeleted](ev); d.RestorePointID != "rp-1" || len(d.Snapshots) != 1 || d.Snapshots[0] != snap {
		t.Errorf("deleted event %+v", d)
	}
	if ids := recordIDs(t, cli); len(ids) != 1 || ids[0] != "rp-2" {
		t.Errorf("records: %v", ids)
	}
	if _, _, err := DeletePoint(ctx, h.store, cli, h.env.Bus, "rp-404", ""); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "rp-404") {
		t.Errorf("deleting an unknown point: %v", err)
	}
}

func TestRebuildFromTheRepositoryAlone(t *testing.T) {
	h := newHarness(t, Config{})
	h.backup(t, "shop/postgres", "run-1", "rp-1", t0)
	h.backup(t, "shop/postgres", "run-2", "rp-2", t0.Add(time.Hour))
	h.backup(t, "shop/mariadb", "run-3", "rp-3", t0.Add(2*time.Hour))
	for _, p := range []events.RestorePointID{"rp-1", "rp-2", "rp-3"} {
		h.waitRecorded(t, p)
	}
	ctx := context.Background()
	before, err := h.store.List(ctx, "")
	if err != nil || len(before) != 3 {
		t.Fatalf("before: %v, %v", before, err)
	}
	h.stop()

	// The catalog's bucket is lost; `tidemark serve` on a new cluster
	// creates an empty one.
	js, err := jetstream.New(h.env.Conn)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteKeyValue(ctx, bus.BucketCatalog); err != nil {
		t.Fatal(err)
	}
	if err := h.env.Bus.EnsureTopology(ctx); err != nil {
		t.Fatal(err)
	}
	kv, err := h.env.Bus.KeyValue(ctx, bus.BucketCatalog)
	if err != nil {
		t.Fatal(err)
	}
	store := NewStore(kv)
	if empty, _ := store.List(ctx, ""); len(empty) != 0 {
		t.Fatalf("the new bucket holds %d points", len(empty))
	}

	// From a client that has never seen the catalog: the repository alone.
	rep, err := Rebuild(ctx, store, openRepo(t, h.repoPath))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Restored) != 3 || len(rep.Present) != 0 || len(rep.Problems) != 0 {
		t.Fatalf("rebuild: %+v", rep)
	}
	after, err := store.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.MarshalIndent(before, "", " ")
	a, _ := json.MarshalIndent(after, "", " ")
	if string(a) != string(b) {
		t.Fatalf("the rebuilt catalog differs:\nbefore %s\nafter  %s", b, a)
	}
	if after[2].StepOutputs["backup-start"]["labelfile"] != "START WAL LOCATION: run-1" {
		t.Errorf("the step outputs a restore needs were not rebuilt: %v", after[2].StepOutputs)
	}
	// Running it again changes nothing.
	again, err := Rebuild(ctx, store, h.repo)
	if err != nil || len(again.Restored) != 0 || len(again.Present) != 3 {
		t.Errorf("second rebuild: %+v, %v", again, err)
	}
}

// A record that could not be written when its point was recorded is
// written by the next housekeeping pass.
func TestARecordTheRepositoryRefusedIsWrittenLater(t *testing.T) {
	refusing := &refusingRecords{}
	refusing.refuse.Store(true)
	h := newHarness(t, Config{Repository: refusing, Retention: Retention{Interval: time.Hour}})
	svc := h.svc
	h.backup(t, "shop/postgres", "run-1", "rp-1", t0)
	h.waitRecorded(t, "rp-1") // recorded although its record was refused
	if ids := recordIDs(t, h.repo); len(ids) != 0 {
		t.Fatalf("records %v", ids)
	}
	refusing.refuse.Store(false)
	housekeep(t, svc)
	if ids := recordIDs(t, h.repo); len(ids) != 1 || ids[0] != "rp-1" {
		t.Errorf("records %v", ids)
	}
	if rep := housekeep(t, svc); len(rep.Synced) != 0 {
		t.Errorf("second pass wrote again: %+v", rep)
	}
}

// housekeep runs a pass as the next scheduled one would, waiting for a
// pass already running (after a new point) to finish first.
func housekeep(t *testing.T, svc *Service) HousekeepingReport {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		rep, err := svc.Housekeep(context.Background())
		if err != nil {
			t.Fatalf("housekeeping: %v", err)
		}
		if rep.Ran {
			return rep
		}
		if time.Now().After(deadline) {
			t.Fatal("housekeeping never got its lease")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type refusingRecords struct {
	*repository.Repository
	refuse atomic.Bool
}

func (r *refusingRecords) wrap(repo *repository.Repository) { r.Repository = repo }

func (r *refusingRecords) PutRecord(ctx context.Context, kind, id string, labels map[string]string, data json.RawMessage) error {
	if r.refuse.Load() {
		return errors.New("storage unavailable: no space left on device")
	}
	return r.Repository.PutRecord(ctx, kind, id, labels, data)
}

func TestMaintenanceRunsOnASchedule(t *testing.T) {
	h := newHarness(t, Config{MaintenanceInterval: 100 * time.Millisecond})
	deadline := time.Now().Add(30 * time.Second)
	for {
		runs, err := h.repo.MaintenanceRuns(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		// A new repository is due for full maintenance at once.
		if runs["snapshot-gc"] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no maintenance ran within 30s: %v", runs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Scheduled again and again, it does not run again before it is due.
	time.Sleep(time.Second)
	if runs, _ := h.repo.MaintenanceRuns(context.Background()); runs["snapshot-gc"] != 1 {
		t.Errorf("full maintenance ran %d times; kopia's schedule allows one a day", runs["snapshot-gc"])
	}
}

func TestMaintenanceNeverRunsTwiceAtOnce(t *testing.T) {
	h := newHarness(t, Config{})
	// A second catalog instance, with its own client of the repository.
	other, _ := startService(t, h.env, h.repoPath, Config{InstanceID: "other"})

	entered, release := make(chan struct{}), make(chan struct{})
	h.svc.maintainHook = func(context.Context) {
		close(entered)
		<-release
	}
	type result struct {
		res repository.MaintenanceResult
		err error
	}
	first := make(chan result, 1)
	go func() {
		res, err := h.svc.Maintain(context.Background(), repository.MaintenanceFull)
		first <- result{res, err}
	}()
	<-entered
	ctx := context.Background()
	if _, err := h.svc.Maintain(ctx, repository.MaintenanceFull); !errors.Is(err, ErrMaintenanceBusy) {
		t.Errorf("second trigger in the same instance: %v, want ErrMaintenanceBusy", err)
	}
	if _, err := other.Maintain(ctx, repository.MaintenanceFull); !errors.Is(err, ErrMaintenanceBusy) {
		t.Errorf("trigger in another instance: %v, want ErrMaintenanceBusy", err)
	}
	close(release)
	r := <-first
	if r.err != nil || r.res.Ran != repository.MaintenanceFull {
		t.Fatalf("the first trigger: %+v, %v", r.res, r.err)
	}
	runs, err := h.repo.MaintenanceRuns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if runs["snapshot-gc"] != 1 {
		t.Errorf("kopia recorded %d full maintenance runs, want exactly 1", runs["snapshot-gc"])
	}
	// Released: the other instance may run it now.
	h.svc.maintainHook = nil
	if res, err := other.Maintain(ctx, repository.MaintenanceQuick); err != nil || res.Ran != repository.MaintenanceQuick {
		t.Errorf("after the first finished, the other instance: %+v, %v", res, err)
	}
}

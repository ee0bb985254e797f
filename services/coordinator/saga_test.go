package coordinator_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/platform"
	"github.com/tidemark-dev/tidemark/services/coordinator"
)

// lockBlueprint quiesces with an exec step that creates a lock file (the
// "application" is frozen while it exists) and undoes it by removing the
// file; extra steps go between the lock and the snapshot.
func lockBlueprint(lockFile, maxFreeze, between string) string {
	return fmt.Sprintf(`apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: filelock}
spec:
  maxFreeze: %s
  actions:
    backup:
      - name: lock
        kind: exec
        exec:
          command: [sh, -c, 'echo locked > %s']
        timeout: 10s
        inverse:
          name: unlock
          kind: exec
          exec:
            command: [rm, -f, %s]
%s      - name: snapshot
        kind: snapshot
    restore:
      - name: snapshot
        kind: snapshot
`, maxFreeze, lockFile, lockFile, between)
}

type fileApp struct {
	sys      *system
	name     string
	lockFile string
	volume   string
}

func newFileApp(t *testing.T, sys *system, name, maxFreeze, between string) *fileApp {
	t.Helper()
	a := &fileApp{sys: sys, name: name, lockFile: filepath.Join(sys.dataDir, strings.ReplaceAll(name, "/", "_")+".lock")}
	between = strings.ReplaceAll(between, "LOCKFILE", a.lockFile)
	bp := sys.writeFile(strings.ReplaceAll(name, "/", "_")+".blueprint.yaml", lockBlueprint(a.lockFile, maxFreeze, between))
	a.volume = sys.volume(strings.ReplaceAll(name, "/", "_"))
	sys.app(name, bp, map[string]string{"data": a.volume}, "")
	return a
}

func (a *fileApp) locked() bool {
	_, err := os.Stat(a.lockFile)
	return !errors.Is(err, fs.ErrNotExist)
}

func TestFailedStepAfterQuiesceRunsTheInverse(t *testing.T) {
	sys := newSystem(t)
	sys.startAll()
	app := newFileApp(t, sys, "shop/failing", "30s", `      - name: check
        kind: exec
        exec:
          command: [sh, -c, 'echo disk almost full >&2; exit 3']
        noInverse: only reads
`)
	run := sys.backup(app.name)
	end := sys.outcome(run, 60*time.Second)
	f, ok := events.As[events.BackupFailed](end)
	if !ok {
		t.Fatalf("run ended with %s, want backup.failed", end.Type())
	}
	if f.FailedStep != "check" || !strings.Contains(f.Reason, "check") {
		t.Errorf("failure = %q at %q, want the check step named", f.Reason, f.FailedStep)
	}
	if c, ok := compensationIn(f.Compensations, "unlock"); !ok || c.Outcome != "succeeded" {
		t.Errorf("compensations %+v: want unlock succeeded", f.Compensations)
	}
	if app.locked() {
		t.Error("the lock file is still there: the inverse did not run")
	}
	if left := sys.snapshotsOf(run); len(left) != 0 {
		t.Errorf("snapshots left: %v", left)
	}
	noRestorePoint(t, sys, run)
}

func compensationIn(cs []events.Compensation, step string) (events.Compensation, bool) {
	for _, c := range cs {
		if c.Step == step {
			return c, true
		}
	}
	return events.Compensation{}, false
}

func noRestorePoint(t *testing.T, sys *system, run events.RunID) {
	t.Helper()
	for _, e := range sys.env.Facts() {
		if p, ok := events.As[events.RestorePointRecorded](e); ok && p.RunID == run {
			t.Errorf("a failed run has a restore point: %+v", p)
		}
	}
}

func TestFreezeDeadlineThawsTheApplication(t *testing.T) {
	sys := newSystem(t)
	sys.startAll()
	// The step between the lock and the snapshot takes longer than the
	// freeze may last.
	app := newFileApp(t, sys, "shop/slow", "1s", `      - name: slow
        kind: exec
        exec:
          command: [sleep, "4"]
        timeout: 20s
        noInverse: only waits
`)
	start := time.Now()
	run := sys.backup(app.name)
	end := sys.outcome(run, 30*time.Second)
	f, ok := events.As[events.BackupFailed](end)
	if !ok || !strings.Contains(f.Reason, "freeze deadline") {
		t.Fatalf("run ended with %s %+v, want a failure naming the freeze deadline", end.Type(), end.Data)
	}
	if app.locked() {
		t.Error("still quiesced after the freeze deadline")
	}
	if took := time.Since(start); took > 1*time.Second+5*time.Second {
		t.Errorf("thawed after %s, want within maxFreeze + 5s", took)
	}
	noRestorePoint(t, sys, run)
}

func TestStepTimeoutWithoutAnswerCompensates(t *testing.T) {
	sys := newSystem(t)
	sys.startAll()
	app := newFileApp(t, sys, "shop/lost", "30s", `      - name: hang
        kind: exec
        exec:
          command: [sleep, "30"]
        timeout: 1s
        noInverse: only waits
`)
	run := sys.backup(app.name)
	end := sys.outcome(run, 30*time.Second)
	f, ok := events.As[events.BackupFailed](end)
	if !ok || f.FailedStep != "hang" {
		t.Fatalf("run ended with %s %+v, want the hang step failed", end.Type(), end.Data)
	}
	if app.locked() {
		t.Error("still quiesced after a step timed out")
	}
}

func TestCancelCompensates(t *testing.T) {
	sys := newSystem(t)
	sys.startAll()
	app := newFileApp(t, sys, "shop/cancel", "30s", `      - name: wait
        kind: exec
        exec:
          command: [sleep, "5"]
        timeout: 20s
        noInverse: only waits
`)
	run := sys.backup(app.name)
	sys.env.WaitFor(t, 10*time.Second, "the lock", func(e events.Event) bool {
		p, ok := events.As[events.HookSucceeded](e)
		return ok && p.RunID == run && p.Step == "lock"
	})
	sys.env.Publish(t, events.New("tidemark/test", string(run), events.RunCancelRequested{RunID: run, RequestedBy: "alice", Reason: "wrong app"}, time.Now()))
	end := sys.outcome(run, 30*time.Second)
	c, ok := events.As[events.BackupCancelled](end)
	if !ok || c.CancelledBy != "alice" {
		t.Fatalf("run ended with %s %+v, want backup.cancelled by alice", end.Type(), end.Data)
	}
	if app.locked() {
		t.Error("still quiesced after a cancel")
	}
}

func TestSecondBackupOfTheSameApplicationIsRejected(t *testing.T) {
	sys := newSystem(t)
	sys.startAll()
	app := newFileApp(t, sys, "shop/busy", "30s", `      - name: wait
        kind: exec
        exec:
          command: [sleep, "2"]
        timeout: 20s
        noInverse: only waits
`)
	first := sys.backup(app.name)
	ev := events.New("tidemark/test", app.name, events.BackupRequested{Application: app.name, RequestedBy: "bob"}, time.Now())
	sys.env.Publish(t, ev)
	rej := sys.env.WaitFor(t, 10*time.Second, "backup.rejected", func(e events.Event) bool {
		_, ok := events.As[events.BackupRejected](e)
		return ok && e.CausationID == ev.ID
	})
	p, _ := events.As[events.BackupRejected](rej)
	if p.RunningRunID != first || !strings.Contains(p.Reason, "rejected, not queued") {
		t.Errorf("rejection %+v: want it to name run %s and say it was not queued", p, first)
	}
	if _, ok := events.As[events.RestorePointRecorded](sys.outcome(first, 60*time.Second)); !ok {
		t.Fatal("the first run did not complete")
	}
	// Once it has ended, the application can be backed up again.
	sys.waitStatus(first, 10*time.Second)
	second := sys.backup(app.name)
	if _, ok := events.As[events.RestorePointRecorded](sys.outcome(second, 60*time.Second)); !ok {
		t.Fatal("the second run did not complete")
	}
	// Both runs gave back what they held: the application's claim and each
	// run's lease. A leftover claim would refuse every later backup.
	sys.waitStatus(second, 10*time.Second)
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runs, err := sys.env.Bus.KeyValue(ctx, bus.BucketRuns)
		if err != nil {
			t.Fatal(err)
		}
		leases, err := sys.env.Bus.KeyValue(ctx, bus.BucketLeases)
		if err != nil {
			t.Fatal(err)
		}
		_, claimErr := runs.Get(ctx, bus.KeyFor("app", app.name))
		_, firstErr := leases.Get(ctx, "run."+string(first))
		_, secondErr := leases.Get(ctx, "run."+string(second))
		if errors.Is(claimErr, bus.ErrKeyNotFound) && errors.Is(firstErr, bus.ErrKeyNotFound) && errors.Is(secondErr, bus.ErrKeyNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind after both runs ended: application claim %v, lease of the first run %v, of the second %v (want all not found)", claimErr, firstErr, secondErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestUnknownApplicationIsRejectedWithTheReason(t *testing.T) {
	sys := newSystem(t)
	sys.startAll()
	ev := events.New("tidemark/test", "shop/nope", events.BackupRequested{Application: "shop/nope"}, time.Now())
	sys.env.Publish(t, ev)
	rej := sys.env.WaitFor(t, 10*time.Second, "backup.rejected", func(e events.Event) bool {
		_, ok := events.As[events.BackupRejected](e)
		return ok && e.CausationID == ev.ID
	})
	p, _ := events.As[events.BackupRejected](rej)
	if !strings.Contains(p.Reason, "shop/nope") || !strings.Contains(p.Reason, "not found") {
		t.Errorf("reason %q: want the application named and 'not found'", p.Reason)
	}
}

func TestDeadLetteredCommandCompensates(t *testing.T) {
	sys := newSystem(t)
	sys.startAll()
	app := newFileApp(t, sys, "shop/poison", "30s", `      - name: wait
        kind: exec
        exec:
          command: [sleep, "3"]
        timeout: 20s
        noInverse: only waits
`)
	run := sys.backup(app.name)
	sys.env.WaitFor(t, 10*time.Second, "the lock", func(e events.Event) bool {
		p, ok := events.As[events.HookSucceeded](e)
		return ok && p.RunID == run && p.Step == "lock"
	})
	// The wait step's command must exist before it can be set aside.
	for deadline := time.Now().Add(10 * time.Second); ; {
		sent := false
		for _, tk := range sys.runState(run).Tasks {
			if tk.Key == "step/wait" && tk.State == coordinator.TaskSent {
				sent = true
			}
		}
		if sent {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the wait step was never sent")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// What the bus publishes when a consumer gives up on a command after
	// MaxDeliver deliveries (pkg/bus tests that part): the dead letter names
	// the command it set aside by its id.
	dl := events.New("tidemark/hookrunner", string(run), events.DeadLettered{
		Reason: "failed on all 5 deliveries; last error: results bucket unavailable", Stream: "TIDEMARK_CMD_HOOKRUNNER",
		Consumer: "hookrunner", Subject: "tidemark.cmd.hook.requested.v1", Sequence: 7, Deliveries: 5,
	}, time.Now())
	dl.CorrelationID = string(run)
	dl.CausationID = string(run) + "/step/wait/1"
	sys.env.Publish(t, dl)
	end := sys.outcome(run, 30*time.Second)
	f, ok := events.As[events.BackupFailed](end)
	if !ok || !strings.Contains(f.Reason, "set aside after 5 deliveries") || f.FailedStep != "wait" {
		t.Fatalf("run ended with %s %+v, want a failure naming the dead-lettered step", end.Type(), end.Data)
	}
	if app.locked() {
		t.Error("still quiesced after a dead-lettered step")
	}
}

func TestInverseThatKeepsFailingIsLoudAndRetriedUntilItWorks(t *testing.T) {
	sys := newSystem(t)
	sys.startAll()
	// The unlock fails until the "operator" fixes things by creating the
	// fix file; the backup fails at a check after the lock.
	dir := t.TempDir()
	lockFile, fix := filepath.Join(dir, "app.lock"), filepath.Join(dir, "fixed")
	bp := sys.writeFile("stubborn.blueprint.yaml", fmt.Sprintf(`apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: stubborn}
spec:
  actions:
    backup:
      - name: lock
        kind: exec
        exec: {command: [touch, %[1]s]}
        inverse:
          name: unlock
          kind: exec
          exec: {command: [sh, -c, 'test -e %[2]s && rm -f %[1]s']}
          retry: {attempts: 2, backoff: 100ms}
      - name: check
        kind: exec
        exec: {command: ["false"]}
        noInverse: only reads
      - name: snapshot
        kind: snapshot
    restore:
      - name: snapshot
        kind: snapshot
`, lockFile, fix))
	sys.app("shop/stubborn", bp, map[string]string{"data": sys.volume("stubborn")}, "")
	run := sys.backup("shop/stubborn")
	loud := sys.env.WaitFor(t, 60*time.Second, "run.compensation_failed", func(e events.Event) bool {
		p, ok := events.As[events.RunCompensationFailed](e)
		return ok && p.RunID == run
	})
	lp := loud.Data.(events.RunCompensationFailed)
	if lp.Step != "unlock" || lp.Attempts < 3 || lp.NextRetryAt.IsZero() {
		t.Errorf("compensation_failed %+v: want the unlock, its attempts and the next try", lp)
	}
	end := sys.outcome(run, 30*time.Second)
	f, ok := events.As[events.BackupFailed](end)
	if !ok || f.FailedStep != "check" {
		t.Fatalf("run ended with %s %+v", end.Type(), end.Data)
	}
	if c, ok := compensationIn(f.Compensations, "unlock"); !ok || c.Outcome != "failed" {
		t.Errorf("compensations %+v: want unlock failed", f.Compensations)
	}
	if _, err := os.Stat(lockFile); err != nil {
		t.Fatal("the lock file should still be there while the unlock fails")
	}
	// The operator fixes it; the background retry finishes the unlock.
	if err := os.WriteFile(fix, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(lockFile); errors.Is(err, fs.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the background retry never unlocked; history:\n%s", history(sys.runState(run)))
		}
		time.Sleep(100 * time.Millisecond)
	}
	r := sys.waitStatus(run, 10*time.Second)
	if len(r.Unresolved) != 0 || !strings.Contains(history(r), "finally succeeded") {
		t.Errorf("unresolved %v; history:\n%s", r.Unresolved, history(r))
	}
}

// A volume the platform cannot snapshot (read live) is exported while the
// application is still quiesced, and only then thawed; the point says so:
// application-live, and the volume's artifact names how it was read.
func TestLiveVolumeIsExportedBeforeTheThaw(t *testing.T) {
	sys := newSystem(t)
	sys.liveVolumes = map[string]bool{"data": true}
	sys.startAll()
	app := newFileApp(t, sys, "shop/live", "30s", "")
	if err := os.WriteFile(filepath.Join(app.volume, "table"), []byte("rows"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := sys.backup(app.name)
	rec, ok := events.As[events.RestorePointRecorded](sys.outcome(run, time.Minute))
	if !ok {
		t.Fatalf("backup failed; history:\n%s", history(sys.runState(run)))
	}
	if rec.Consistency != "application-live" {
		t.Errorf("consistency %q, want application-live: the live volume was read under the lock, not snapshotted", rec.Consistency)
	}
	if len(rec.Artifacts) == 0 || rec.Artifacts[0].Name != "data" || rec.Artifacts[0].Consistency != platform.ConsistencyLive {
		t.Errorf("artifacts %+v: want data's to say %q", rec.Artifacts, platform.ConsistencyLive)
	}
	for _, e := range sys.env.Facts() {
		if r, ok := events.As[events.SnapshotReady](e); ok && r.RunID == run && (len(r.Snapshots) != 1 || r.Snapshots[0].Consistency != platform.ConsistencyLive) {
			t.Errorf("snapshot.ready %+v: want the live volume's consistency said", r.Snapshots)
		}
	}
	var exported, thawed time.Time
	for _, e := range sys.env.Facts() {
		switch p := e.Data.(type) {
		case events.VolumeExported:
			if p.RunID == run && p.Volume == "data" {
				exported = e.Time
			}
		case events.HookSucceeded:
			if p.RunID == run && p.Step == "unlock" {
				thawed = e.Time
			}
		}
	}
	if exported.IsZero() || thawed.IsZero() || !exported.Before(thawed) {
		t.Fatalf("live volume exported at %s, thawed at %s: want the export first; history:\n%s", exported, thawed, history(sys.runState(run)))
	}
	if app.locked() {
		t.Error("the application is still locked")
	}
}

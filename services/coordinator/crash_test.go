package coordinator_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
)

func TestCoordinatorLostInsideTheFreezeIsCompensatedOnRestart(t *testing.T) {
	sys := newSystem(t)
	sys.startAll()
	app := newFileApp(t, sys, "shop/crash", "30s", `      - name: wait
        kind: exec
        exec:
          command: [sleep, "2"]
        timeout: 20s
        noInverse: only waits
`)
	run := sys.backup(app.name)
	sys.env.WaitFor(t, 10*time.Second, "the lock", func(e events.Event) bool {
		p, ok := events.As[events.HookSucceeded](e)
		return ok && p.RunID == run && p.Step == "lock"
	})
	sys.stop("coordinator")
	if !app.locked() {
		t.Fatal("the application should be quiesced while the coordinator is down")
	}
	// The same instance comes back (a new life): it finds its old lease
	// and compensates the run it left inside the freeze.
	sys.start("coordinator")
	end := sys.outcome(run, 30*time.Second)
	f, ok := events.As[events.BackupFailed](end)
	if !ok || !strings.Contains(f.Reason, "was lost while the application was quiesced") {
		t.Fatalf("run ended with %s %+v, want compensation for a lost coordinator", end.Type(), end.Data)
	}
	if c, ok := compensationIn(f.Compensations, "unlock"); !ok || c.Outcome != "succeeded" {
		t.Errorf("compensations %+v: want unlock succeeded", f.Compensations)
	}
	if app.locked() {
		t.Error("still quiesced after the takeover")
	}
	noRestorePoint(t, sys, run)
}

func TestSurvivingCoordinatorTakesOverAndFinishesExactlyOnce(t *testing.T) {
	sys := newSystem(t)
	for _, n := range []string{"hookrunner", "snapshotter", "datamover", "catalog", "coordinator#1", "coordinator#2"} {
		sys.start(n)
	}
	// After the thaw, a step fails once and is retried after a pause: only
	// the run's owner keeps that clock, so the run finishes only if the
	// survivor takes the dead owner's lease.
	marker := sys.dataDir + "/flaky.marker"
	bp := sys.writeFile("flaky.blueprint.yaml", `apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: flaky}
spec:
  actions:
    backup:
      - name: snapshot
        kind: snapshot
      - name: flaky
        kind: exec
        exec:
          command: [sh, -c, 'if [ -e `+marker+` ]; then exit 0; fi; touch `+marker+`; exit 1']
        retry: {attempts: 3, backoff: 3s}
    restore:
      - name: snapshot
        kind: snapshot
`)
	sys.app("shop/ha", bp, map[string]string{"data": sys.volume("ha")}, "")
	run := sys.backup("shop/ha")
	sys.env.WaitFor(t, 10*time.Second, "the first failure", func(e events.Event) bool {
		p, ok := events.As[events.HookFailed](e)
		return ok && p.RunID == run && p.Step == "flaky"
	})
	owner := leaseOwner(t, sys, run)
	survivor := map[string]string{"coord-1": "coordinator#2", "coord-2": "coordinator#1"}[owner]
	if survivor == "" {
		t.Fatalf("lease owner %q is not one of the two coordinators", owner)
	}
	sys.stop(map[string]string{"coord-1": "coordinator#1", "coord-2": "coordinator#2"}[owner])
	end := sys.outcome(run, 60*time.Second)
	if _, ok := events.As[events.RestorePointRecorded](end); !ok {
		t.Fatalf("run ended with %s %+v, want it finished by the survivor", end.Type(), end.Data)
	}
	r := sys.waitStatus(run, 10*time.Second)
	if !strings.Contains(history(r), "took over the run") {
		t.Errorf("no takeover in the history:\n%s", history(r))
	}
	time.Sleep(time.Second)
	counts := map[events.Type]int{}
	for _, e := range sys.env.Facts() {
		switch p := e.Data.(type) {
		case events.BackupCompleted:
			if p.RunID == run {
				counts[e.Type()]++
			}
		case events.RestorePointRecorded:
			if p.RunID == run {
				counts[e.Type()]++
			}
		case events.BackupFailed:
			if p.RunID == run {
				counts[e.Type()]++
			}
		}
	}
	if counts[events.BackupCompleted{}.EventType()] != 1 || counts[events.RestorePointRecorded{}.EventType()] != 1 || counts[events.BackupFailed{}.EventType()] != 0 {
		t.Errorf("terminal facts %v: want exactly one completion and one restore point", counts)
	}
	_ = survivor
}

func leaseOwner(t *testing.T, sys *system, run events.RunID) string {
	t.Helper()
	kv, err := sys.env.Bus.KeyValue(context.Background(), bus.BucketLeases)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := kv.Get(context.Background(), "run."+string(run))
	if err != nil {
		t.Fatal(err)
	}
	var l struct{ Owner string }
	if err := json.Unmarshal(raw, &l); err != nil {
		t.Fatal(err)
	}
	return l.Owner
}

package coordinator

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

func TestTouchesSourceFindsTheOriginalNotItsNeighbours(t *testing.T) {
	vols := map[string]string{"pgdata": "/srv/db"}
	for spec, want := range map[string]string{
		`{"command":["sh","-c","x"],"env":{"PGDATA":"/srv/db"}}`:                "/srv/db",
		`{"command":["sh","-c","printf x > /srv/db/backup_label"]}`:             "/srv/db",
		`{"command":["sh","-c","x"],"env":{"PGDATA":"/srv/db-restore/pgdata"}}`: "",
		`{"command":["sh","-c","x"],"env":{"PGDATA":"/tmp/r/srv/dbx"}}`:         "",
	} {
		raw, _ := json.Marshal(json.RawMessage(spec))
		if got := touchesSource(blueprint.RenderedStep{Spec: raw}, vols); got != want {
			t.Errorf("%s: got %q, want %q", spec, got, want)
		}
	}
}

// A transition that changed nothing must not write (a redelivered answer,
// a clock tick), and one that changed anything must: the comparison skips
// only updatedAt.
func TestSameRunStateIgnoresOnlyUpdatedAt(t *testing.T) {
	at := time.Date(2026, 11, 23, 4, 0, 0, 0, time.UTC)
	encode := func(r Run) []byte {
		raw, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	base := Run{ID: "r1", Kind: KindBackup, Status: StatusRunning, UpdatedAt: at, Tasks: []*Task{{Key: "step/lock", State: TaskSent}}}
	later := base
	later.UpdatedAt = at.Add(1234567 * time.Nanosecond)
	if !sameRunState(encode(base), encode(later)) {
		t.Fatalf("runs differing only in updatedAt compare as changed:\n%s\n%s", encode(base), encode(later))
	}
	moved := base
	moved.Tasks = []*Task{{Key: "step/lock", State: TaskSucceeded}}
	if sameRunState(encode(base), encode(moved)) {
		t.Fatal("a run whose task changed compares as unchanged")
	}
	moved = base
	moved.Cursor = 1
	if sameRunState(encode(base), encode(moved)) {
		t.Fatal("a run whose cursor changed compares as unchanged")
	}
	// A record written with another field order (before updatedAt came
	// first) counts as changed: one extra write, never a lost one.
	legacy := []byte(`{"id":"r1","kind":"backup","updatedAt":"2026-11-23T04:00:00Z"}`)
	if sameRunState(encode(base), legacy) {
		t.Fatal("a record in the old field order compares as unchanged")
	}
}

package coordinator

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
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

// A restore point with a volume read live (no snapshot) never claims more
// than crash consistency, even when the application was quiesced.
func TestLiveVolumesMakeAPointCrashConsistent(t *testing.T) {
	now := time.Now()
	quiesced := &Run{FreezeStart: &now, Snapshots: []events.VolumeSnapshot{{Volume: "data", Method: "csi"}}}
	if got := quiesced.consistency(); got != "application" {
		t.Fatalf("quiesced CSI snapshot: %q, want application", got)
	}
	quiesced.Snapshots = append(quiesced.Snapshots, events.VolumeSnapshot{Volume: "logs", Method: "live"})
	if got := quiesced.consistency(); got != "crash" {
		t.Errorf("with a live volume: %q, want crash", got)
	}
}

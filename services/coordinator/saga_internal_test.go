package coordinator

import (
	"encoding/json"
	"testing"

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

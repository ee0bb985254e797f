package events

func init() {
	register[RestorePointDeleted](Fact, "A restore point was deleted on request, with its snapshots.")
}

// RestorePointDeleted reports a restore point deleted on a user's request
// (`tidemark points delete`), together with its kopia snapshots. A point
// removed by its retention policy is reported by RestorePointExpired.
type RestorePointDeleted struct {
	RestorePointID RestorePointID `json:"restorePointId"`
	Application    string         `json:"application"`
	// Snapshots are the kopia snapshots deleted with it.
	Snapshots []ManifestID `json:"snapshots"`
	Reason    string       `json:"reason"`
}

// EventType implements Payload.
func (RestorePointDeleted) EventType() Type { return "io.tidemark.restorepoint.deleted.v1" }

package events

func init() {
	register[SnapshotRequested](Command, "Asks the snapshotter to snapshot volumes, as one group where the platform can.")
	register[SnapshotProgress](Fact, "Progress of a snapshot that is a copy rather than an O(1) clone.")
	register[SnapshotReady](Fact, "Snapshots of every requested volume exist.")
	register[SnapshotFailed](Fact, "Snapshotting failed; no partial group is left behind.")
	register[SnapshotDeleteRequested](Command, "Asks the snapshotter to delete snapshots.")
	register[SnapshotDeleted](Fact, "Snapshots were deleted.")
}

// VolumeRef names one volume of an application.
type VolumeRef struct {
	Name string `json:"name"`
	// Source locates the volume on its platform (a directory, a PVC name).
	Source string `json:"source"`
}

// SnapshotRequested asks for a snapshot of the named volumes.
type SnapshotRequested struct {
	RunID          RunID       `json:"runId"`
	Application    string      `json:"application"`
	Step           string      `json:"step"`
	Volumes        []VolumeRef `json:"volumes"`
	Group          bool        `json:"group"`
	IdempotencyKey string      `json:"idempotencyKey"`
}

// EventType implements Payload.
func (SnapshotRequested) EventType() Type { return "io.tidemark.snapshot.requested.v1" }

// SnapshotProgress reports progress of a copying snapshot.
type SnapshotProgress struct {
	RunID      RunID  `json:"runId"`
	Step       string `json:"step"`
	BytesDone  int64  `json:"bytesDone"`
	BytesTotal int64  `json:"bytesTotal"`
}

// EventType implements Payload.
func (SnapshotProgress) EventType() Type { return "io.tidemark.snapshot.progress.v1" }

// VolumeSnapshot is one taken snapshot.
type VolumeSnapshot struct {
	Volume     string     `json:"volume"`
	SnapshotID SnapshotID `json:"snapshotId"`
	// Method is "reflink", "copy", "csi" or "live"; a copy is not an O(1)
	// snapshot, and live is none: the volume is read in place while the
	// application is held quiesced.
	Method   string   `json:"method"`
	Bytes    int64    `json:"bytes"`
	Duration Duration `json:"duration"`
	// Consistency says what this volume's copy guarantees when it is not
	// a point-in-time snapshot taken with the others: a live volume read
	// while the application is held quiesced, or a per-volume snapshot
	// where a group snapshot was asked for. Empty otherwise.
	Consistency string `json:"consistency,omitempty"`
}

// SnapshotReady reports the snapshots of a request.
type SnapshotReady struct {
	RunID     RunID            `json:"runId"`
	Step      string           `json:"step"`
	Snapshots []VolumeSnapshot `json:"snapshots"`
	// Group says how a request that asked for a group was carried out on
	// a platform with group snapshots (Kubernetes). It is absent when the
	// request did not ask for one, or when the platform's one pass over
	// the volumes is itself the group (the local platform).
	Group *SnapshotGrouping `json:"group,omitempty"`
}

// SnapshotGrouping is how a group request was carried out: one group
// snapshot (SnapshotID), or one snapshot per volume (Fallback says why).
// Exactly one of the two is set.
type SnapshotGrouping struct {
	// SnapshotID names the group snapshot as a whole (on Kubernetes
	// group:namespace/name, a VolumeGroupSnapshot); the volumes' snapshots
	// are its members.
	SnapshotID SnapshotID `json:"snapshotId,omitempty"`
	// Fallback says why the volumes were snapshotted one by one: each is
	// point-in-time, but they were cut one after another, held together
	// only by the application being quiesced.
	Fallback string `json:"fallback,omitempty"`
}

// EventType implements Payload.
func (SnapshotReady) EventType() Type { return "io.tidemark.snapshot.ready.v1" }

// SnapshotFailed reports a failed snapshot request.
type SnapshotFailed struct {
	RunID     RunID  `json:"runId"`
	Step      string `json:"step"`
	Error     string `json:"error"`
	Permanent bool   `json:"permanent"`
}

// EventType implements Payload.
func (SnapshotFailed) EventType() Type { return "io.tidemark.snapshot.failed.v1" }

// SnapshotDeleteRequested asks for snapshots to be deleted.
type SnapshotDeleteRequested struct {
	RunID       RunID        `json:"runId"`
	SnapshotIDs []SnapshotID `json:"snapshotIds"`
	Reason      string       `json:"reason,omitempty"`
}

// EventType implements Payload.
func (SnapshotDeleteRequested) EventType() Type { return "io.tidemark.snapshot.delete.requested.v1" }

// SnapshotDeleted reports deleted snapshots.
type SnapshotDeleted struct {
	RunID       RunID        `json:"runId"`
	SnapshotIDs []SnapshotID `json:"snapshotIds"`
}

// EventType implements Payload.
func (SnapshotDeleted) EventType() Type { return "io.tidemark.snapshot.deleted.v1" }

package events

import "time"

func init() {
	register[RestorePointRecorded](Fact, "The catalog recorded a restore point.")
	register[RestorePointExpired](Fact, "A restore point passed its retention and was removed.")
	register[DeadLettered](DeadLetter, "A message could not be handled and was set aside with the reason.")
}

// Artifact is one piece of a restore point: a volume or a dump stream.
type Artifact struct {
	Name       string     `json:"name"`
	Kind       string     `json:"kind"`
	ManifestID ManifestID `json:"manifestId"`
	Bytes      int64      `json:"bytes"`
	// Files is how many files a volume held.
	Files int64 `json:"files,omitempty"`
	// Consistency is the volume's snapshot's (VolumeSnapshot.Consistency)
	// when it was not a point-in-time snapshot taken with the others.
	Consistency string `json:"consistency,omitempty"`
}

// RestorePointRecorded reports a restore point in the catalog.
type RestorePointRecorded struct {
	RestorePointID RestorePointID `json:"restorePointId"`
	RunID          RunID          `json:"runId"`
	Application    string         `json:"application"`
	CreatedAt      time.Time      `json:"createdAt"`
	Artifacts      []Artifact     `json:"artifacts"`
	// Consistency says what the restore point guarantees: "application"
	// (quiesced), "application-live" (quiesced, and some volumes had no
	// snapshot: they were read in place while the application was held;
	// their artifacts say so), "crash" (snapshot only) or "logical" (a dump).
	Consistency string            `json:"consistency"`
	Labels      map[string]string `json:"labels,omitempty"`
}

// EventType implements Payload.
func (RestorePointRecorded) EventType() Type { return "io.tidemark.restorepoint.recorded.v1" }

// RestorePointExpired reports a removed restore point.
type RestorePointExpired struct {
	RestorePointID RestorePointID `json:"restorePointId"`
	Application    string         `json:"application"`
	Reason         string         `json:"reason"`
}

// EventType implements Payload.
func (RestorePointExpired) EventType() Type { return "io.tidemark.restorepoint.expired.v1" }

// DeadLettered keeps a message that could not be handled, whole, with the
// reason. Headers and Data are the original message's, byte for byte.
type DeadLettered struct {
	Reason   string `json:"reason"`
	Stream   string `json:"stream"`
	Consumer string `json:"consumer"`
	Subject  string `json:"subject"`
	Sequence uint64 `json:"sequence"`
	// Deliveries is how many times the message was delivered.
	Deliveries uint64              `json:"deliveries"`
	Headers    map[string][]string `json:"headers,omitempty"`
	Data       []byte              `json:"data,omitempty"`
}

// EventType implements Payload.
func (DeadLettered) EventType() Type { return "io.tidemark.message.deadlettered.v1" }

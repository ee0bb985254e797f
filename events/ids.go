package events

import (
	"encoding/json"
	"fmt"
	"time"
	"unicode"
)

// Identifiers have their own types so a run id cannot be passed where a
// snapshot id is expected.
type (
	// RunID names one backup or restore run; it is the correlation id of
	// every event the run produces.
	RunID string
	// RestorePointID names a recorded restore point.
	RestorePointID string
	// SnapshotID names one volume snapshot taken by the snapshotter.
	SnapshotID string
	// ManifestID names a kopia snapshot manifest in the repository.
	ManifestID string
)

// Duration is a time.Duration that travels as a Go duration string with a
// unit ("90s", "1m30s"). A bare number is rejected: "60" could mean seconds
// or nanoseconds and a backup tool must not guess.
type Duration time.Duration

// Std returns the value as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON encodes the duration as a string such as "1m30s".
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON accepts only strings with units.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string with a unit such as \"30s\" or \"5m\", got %s", string(b))
	}
	if s == "" || !unicode.IsLetter(rune(s[len(s)-1])) {
		return fmt.Errorf("duration %q has no unit; write it with one, such as \"30s\" or \"5m\"", s)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w (write it with a unit, such as \"30s\" or \"5m\")", s, err)
	}
	*d = Duration(v)
	return nil
}

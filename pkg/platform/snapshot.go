package platform

import (
	"context"
	"errors"
	"time"

	"github.com/tidemark-dev/tidemark/events"
)

// Snapshot methods, as reported in snapshot.ready. Only a copy takes time
// and space in proportion to the data; it is named so nobody mistakes it
// for an O(1) snapshot.
const (
	MethodReflink = "reflink"
	MethodCopy    = "copy"
	MethodCSI     = "csi"
	// MethodLive: nothing was snapshotted (the volume's storage cannot
	// be); the data mover reads the live volume while the application is
	// held quiesced. Consistency says so.
	MethodLive = "live"
)

// ConsistencyLive is the Consistency of a MethodLive snapshot.
const ConsistencyLive = "live volume read while quiesced"

// Snapshot is one taken (or abandoned) volume snapshot.
type Snapshot struct {
	ID     events.SnapshotID
	RunID  events.RunID
	Volume string
	// Path is where the snapshot's data can be read (mounted) by a data
	// mover, on platforms where it is a path.
	Path string
	// Method is MethodReflink, MethodCopy, MethodCSI or MethodLive.
	Method string
	// Consistency, when set, qualifies what the snapshot holds for the
	// restore point (ConsistencyLive); empty means a point-in-time copy.
	Consistency string
	// Bytes is the apparent size of the volume's file data.
	Bytes     int64
	Duration  time.Duration
	CreatedAt time.Time
	// Incomplete marks a snapshot whose taking never finished (its taker
	// crashed). It holds no usable data; only deleting it makes sense.
	Incomplete bool
}

// Snapshotter takes, lists and deletes volume snapshots.
type Snapshotter interface {
	// Snapshot snapshots every volume in one pass, in order. It is all or
	// nothing: on error, no snapshot of this call is left behind.
	Snapshot(ctx context.Context, run events.RunID, volumes []events.VolumeRef) ([]Snapshot, error)
	// Delete removes a snapshot. Deleting one that does not exist succeeds.
	Delete(ctx context.Context, id events.SnapshotID) error
	// List returns every snapshot, incomplete ones included, except those
	// this Snapshotter is still taking.
	List(ctx context.Context) ([]Snapshot, error)
}

// Errors a Snapshotter returns, wrapped with the volume and path they are
// about. Each says the request itself is wrong: retrying cannot help.
var (
	// ErrSourceNotFound: a volume's data does not exist where the
	// application says it is.
	ErrSourceNotFound = errors.New("volume data not found")
	// ErrInvalidVolume: a volume is named or located in a way that cannot
	// be snapshotted (no name, two volumes with one name, a relative path,
	// a file instead of a directory).
	ErrInvalidVolume = errors.New("invalid volume")
	// ErrInvalidSnapshotID: an id this platform could never have issued.
	ErrInvalidSnapshotID = errors.New("invalid snapshot id")
)

// IsPermanentSnapshotError reports whether err says the request is wrong,
// rather than that the platform had trouble carrying it out.
func IsPermanentSnapshotError(err error) bool {
	return errors.Is(err, ErrSourceNotFound) || errors.Is(err, ErrInvalidVolume) || errors.Is(err, ErrInvalidSnapshotID)
}

// GroupSnapshotter is a Snapshotter that can also cut several volumes at
// one instant on the storage side (on Kubernetes, a VolumeGroupSnapshot).
// A platform whose Snapshot already holds a request's volumes together
// (the local one: one pass while the application stays quiesced) does not
// implement it.
type GroupSnapshotter interface {
	Snapshotter
	// SnapshotGroup snapshots volumes as one group where it can, else one
	// by one as Snapshot does, and says which in the result. All or
	// nothing, like Snapshot.
	SnapshotGroup(ctx context.Context, run events.RunID, volumes []events.VolumeRef) (GroupResult, error)
}

// GroupResult is how a group request was carried out.
type GroupResult struct {
	// Snapshots are one per requested volume, in request order.
	Snapshots []Snapshot
	// Group names the group snapshot as a whole, whose members the
	// Snapshots are; empty when there was none.
	Group events.SnapshotID
	// Fallback, when set, says why there is no group: the volumes were
	// snapshotted one by one.
	Fallback string
}

package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
)

// Consistency levels of a restore point.
const (
	// ConsistencyApplication: the application was held still (locks,
	// backup mode) while its volumes were snapshotted.
	ConsistencyApplication = "application"
	// ConsistencyApplicationLive: held still as for application, but some
	// volumes had no snapshot (a CSI driver without a snapshot class) and
	// were read in place while the application was held; as consistent as
	// the quiesce keeps their files still. Their artifacts say so.
	ConsistencyApplicationLive = "application-live"
	// ConsistencyCrash: volumes snapshotted without quiescing; what a
	// power cut would leave.
	ConsistencyCrash = "crash"
	// ConsistencyLogical: the point holds logical dumps only.
	ConsistencyLogical = "logical"
)

// Statuses of a restore point.
const (
	// StatusAvailable marks a restore point that can be restored.
	StatusAvailable = "available"
	// StatusDeleting marks a restore point whose deletion began: it must
	// not be restored (some of its snapshots may be gone), and the catalog
	// retries the deletion until it is complete. It stays listed until
	// then, so a failed deletion never loses track of data.
	StatusDeleting = "deleting"
)

// Who asked for a deletion (Deletion.By).
const (
	DeletedByRetention = "retention"
	DeletedByUser      = "user"
)

// Deletion says why a restore point is being deleted.
type Deletion struct {
	By     string    `json:"by"`
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
	// LastError is why the last attempt failed, if one did.
	LastError string `json:"lastError,omitempty"`
}

// ErrNotFound is returned for a restore point the catalog does not have.
var ErrNotFound = errors.New("restore point not found")

// Artifact is one piece of a restore point.
type Artifact struct {
	Name       string            `json:"name"`
	Kind       string            `json:"kind"`
	ManifestID events.ManifestID `json:"manifestId"`
	Bytes      int64             `json:"bytes"`
	Files      int64             `json:"files,omitempty"`
	// Consistency: a volume read live while quiesced, or snapshotted on
	// its own where a group was asked for (events.Artifact.Consistency).
	Consistency string `json:"consistency,omitempty"`
}

// RestorePoint is what the catalog keeps of one successful backup.
type RestorePoint struct {
	ID          events.RestorePointID `json:"id"`
	RunID       events.RunID          `json:"runId"`
	Application string                `json:"application"`
	CreatedAt   time.Time             `json:"createdAt"`
	Artifacts   []Artifact            `json:"artifacts"`
	// StepOutputs are the outputs a restore needs, by step (for PostgreSQL,
	// the backup label that pg_backup_stop returned).
	StepOutputs map[string]map[string]string `json:"stepOutputs,omitempty"`
	Consistency string                       `json:"consistency"`
	Status      string                       `json:"status"`
	// Deletion is set while Status is StatusDeleting.
	Deletion *Deletion `json:"deletion,omitempty"`
}

// Store keeps restore points, and the facts of runs not yet complete, in
// the catalog's KV bucket.
type Store struct{ kv bus.KV }

// NewStore returns a store over kv (bus.BucketCatalog).
func NewStore(kv bus.KV) *Store { return &Store{kv: kv} }

// Key namespaces in the bucket: point.<hash of id>, pending.<hash of run>,
// unsynced.<hash of id> (a point whose record is not in the repository
// yet), and lock.<name> (leases of housekeeping).
const (
	pointKeys    = "point"
	pendingKeys  = "pending"
	unsyncedKeys = "unsynced"
	lockKeys     = "lock"
)

// Put records p.
func (s *Store) Put(ctx context.Context, p RestorePoint) error {
	raw, err := marshal(p)
	if err != nil {
		return err
	}
	return s.kv.Put(ctx, bus.KeyFor(pointKeys, string(p.ID)), raw)
}

// Delete removes the restore point id. Removing one that is not there is
// not an error.
func (s *Store) Delete(ctx context.Context, id events.RestorePointID) error {
	return s.kv.Delete(ctx, bus.KeyFor(pointKeys, string(id)))
}

// markUnsynced notes that point id's record must still be written to the
// repository.
func (s *Store) markUnsynced(ctx context.Context, id events.RestorePointID) error {
	return s.kv.Put(ctx, bus.KeyFor(unsyncedKeys, string(id)), []byte(id))
}

func (s *Store) clearUnsynced(ctx context.Context, id events.RestorePointID) error {
	return s.kv.Delete(ctx, bus.KeyFor(unsyncedKeys, string(id)))
}

// unsynced returns the points whose records are not in the repository yet.
func (s *Store) unsynced(ctx context.Context) ([]events.RestorePointID, error) {
	keys, err := s.kv.Keys(ctx)
	if err != nil {
		return nil, err
	}
	var out []events.RestorePointID
	for _, k := range keys {
		if !strings.HasPrefix(k, unsyncedKeys+".") {
			continue
		}
		raw, err := s.kv.Get(ctx, k)
		if errors.Is(err, bus.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, events.RestorePointID(raw))
	}
	return out, nil
}

// Get returns one restore point.
func (s *Store) Get(ctx context.Context, id events.RestorePointID) (RestorePoint, error) {
	raw, err := s.kv.Get(ctx, bus.KeyFor(pointKeys, string(id)))
	if errors.Is(err, bus.ErrKeyNotFound) {
		return RestorePoint{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return RestorePoint{}, err
	}
	var p RestorePoint
	if err := json.Unmarshal(raw, &p); err != nil {
		return RestorePoint{}, fmt.Errorf("restore point %s: %w", id, err)
	}
	return p, nil
}

// List returns the restore points of application (all when empty), newest
// first.
func (s *Store) List(ctx context.Context, application string) ([]RestorePoint, error) {
	keys, err := s.kv.Keys(ctx)
	if err != nil {
		return nil, err
	}
	var out []RestorePoint
	for _, k := range keys {
		if !strings.HasPrefix(k, pointKeys+".") {
			continue
		}
		raw, err := s.kv.Get(ctx, k)
		if errors.Is(err, bus.ErrKeyNotFound) {
			continue // deleted since the listing
		}
		if err != nil {
			return nil, err
		}
		var p RestorePoint
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, fmt.Errorf("catalog entry %s: %w", k, err)
		}
		if application == "" || p.Application == application {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out, nil
}

func pendingKey(run events.RunID) string {
	return bus.KeyFor(pendingKeys, string(run))
}

func (s *Store) pending(ctx context.Context, run events.RunID) (*pendingRun, error) {
	r := &pendingRun{Artifacts: map[string]Artifact{}}
	raw, err := s.kv.Get(ctx, pendingKey(run))
	if errors.Is(err, bus.ErrKeyNotFound) {
		return r, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, r); err != nil {
		return nil, fmt.Errorf("gathered facts of run %s: %w", run, err)
	}
	if r.Artifacts == nil {
		r.Artifacts = map[string]Artifact{}
	}
	return r, nil
}

// updatePending applies change to a run's gathered facts. The catalog
// handles one event at a time, so read-modify-write needs no lock.
func (s *Store) updatePending(ctx context.Context, run events.RunID, change func(*pendingRun)) error {
	r, err := s.pending(ctx, run)
	if err != nil {
		return err
	}
	change(r)
	raw, err := marshal(r)
	if err != nil {
		return err
	}
	return s.kv.Put(ctx, pendingKey(run), raw)
}

func (s *Store) dropPending(ctx context.Context, run events.RunID) error {
	return s.kv.Delete(ctx, pendingKey(run))
}

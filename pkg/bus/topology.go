package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tidemark-dev/tidemark/events"
)

// Stream names.
const (
	// StreamEvents is the audit log: every fact, kept by age and size.
	StreamEvents = "TIDEMARK_EVENTS"
	// StreamDeadLetter keeps messages no consumer could handle, with the reason.
	StreamDeadLetter = "TIDEMARK_DEADLETTER"
	// StreamCoordinatorCommands holds backup, restore and run commands.
	StreamCoordinatorCommands = "TIDEMARK_CMD_COORDINATOR"
	// StreamHookCommands holds commands for the hookrunner.
	StreamHookCommands = "TIDEMARK_CMD_HOOKRUNNER"
	// StreamSnapshotCommands holds commands for the snapshotter.
	StreamSnapshotCommands = "TIDEMARK_CMD_SNAPSHOTTER"
	// StreamVolumeCommands is the data movers' work queue, one volume per message.
	StreamVolumeCommands = "TIDEMARK_CMD_DATAMOVER"
)

// KV bucket names.
const (
	// BucketRuns holds the durable state of each run.
	BucketRuns = "tidemark-runs"
	// BucketLeases holds per-run ownership leases and each coordinator
	// instance's liveness record. A liveness record carries its own expiry
	// time, so a lease dies with its owner without a bucket-wide TTL that
	// would also expire the leases of long runs.
	BucketLeases = "tidemark-leases"
	// BucketHooks holds hookrunner results by idempotency key and the
	// registry of held sessions.
	BucketHooks = "tidemark-hooks"
	// BucketCatalog holds restore points and the runs still gathering theirs.
	BucketCatalog = "tidemark-catalog"
	// BucketSnapshots holds snapshotter results by idempotency key.
	BucketSnapshots = "tidemark-snapshots"
	// BucketMovers holds data mover results by idempotency key.
	BucketMovers = "tidemark-movers"
)

// Retention says what removes messages from a stream.
type Retention int

const (
	// Limits keeps messages until MaxAge or MaxBytes: the audit log.
	Limits Retention = iota
	// WorkQueue removes a message once it is acknowledged: commands.
	WorkQueue
)

// StreamSpec declares one stream.
type StreamSpec struct {
	Name        string
	Description string
	Subjects    []string
	Retention   Retention
	MaxAge      time.Duration
	MaxBytes    int64
	// Duplicates is the window in which a repeated Nats-Msg-Id is dropped.
	Duplicates time.Duration
}

// BucketSpec declares one key-value bucket.
type BucketSpec struct {
	Name        string
	Description string
	History     uint8
	// TTL expires entries; zero keeps them.
	TTL time.Duration
}

// Topology is every stream and bucket Tidemark uses, declared in one place
// and created or updated idempotently at start-up.
type Topology struct {
	Streams []StreamSpec
	Buckets []BucketSpec
	// ObjectBuckets hold large streams (dumps) on their way between services.
	ObjectBuckets []ObjectBucketSpec
	// Replicas is the replication factor of every stream and bucket: 1 on
	// the embedded server, 3 or 5 on a cluster.
	Replicas int
}

// TopologyOptions tunes DefaultTopology.
type TopologyOptions struct {
	Replicas int
	// EventsMaxAge is how long the audit log keeps facts.
	EventsMaxAge time.Duration
	// DeadLetterMaxAge is how long dead letters are kept for inspection.
	DeadLetterMaxAge time.Duration
}

// DefaultTopology returns Tidemark's streams and buckets.
func DefaultTopology(o TopologyOptions) Topology {
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.EventsMaxAge <= 0 {
		o.EventsMaxAge = 30 * 24 * time.Hour
	}
	if o.DeadLetterMaxAge <= 0 {
		o.DeadLetterMaxAge = 90 * 24 * time.Hour
	}
	const dedup = 10 * time.Minute
	cmd := func(name, desc string, areas ...string) StreamSpec {
		subjects := make([]string, len(areas))
		for i, a := range areas {
			subjects[i] = events.CommandSubjectPrefix + a + ".>"
		}
		return StreamSpec{Name: name, Description: desc, Subjects: subjects, Retention: WorkQueue, Duplicates: dedup}
	}
	return Topology{
		Replicas: o.Replicas,
		Streams: []StreamSpec{
			{Name: StreamEvents, Description: "Tidemark facts: the audit log of every run", Subjects: []string{events.FactSubjectPrefix + ">"}, Retention: Limits, MaxAge: o.EventsMaxAge, Duplicates: dedup},
			{Name: StreamDeadLetter, Description: "Messages no consumer could handle, with the reason", Subjects: []string{events.DeadLetterSubjectPrefix + ">"}, Retention: Limits, MaxAge: o.DeadLetterMaxAge, Duplicates: dedup},
			cmd(StreamCoordinatorCommands, "Backup, restore and run commands for the coordinator", "backup", "restore", "run"),
			cmd(StreamHookCommands, "Blueprint step commands for the hookrunner", "hook"),
			cmd(StreamSnapshotCommands, "Snapshot commands for the snapshotter", "snapshot"),
			cmd(StreamVolumeCommands, "Volume export and import work items for data movers", "volume"),
		},
		ObjectBuckets: []ObjectBucketSpec{
			{Name: BucketDumps, Description: "Dump streams between the hookrunner and data movers", TTL: 7 * 24 * time.Hour},
		},
		Buckets: []BucketSpec{
			{Name: BucketRuns, Description: "Durable state of backup and restore runs", History: 8},
			{Name: BucketLeases, Description: "Per-run ownership leases and liveness of coordinator instances", History: 1},
			{Name: BucketHooks, Description: "Hook results by idempotency key, and held sessions", History: 1, TTL: 7 * 24 * time.Hour},
			{Name: BucketCatalog, Description: "Restore points, and runs still gathering their artifacts", History: 4},
			{Name: BucketSnapshots, Description: "Snapshotter results by idempotency key", History: 1, TTL: 7 * 24 * time.Hour},
			{Name: BucketMovers, Description: "Data mover results by idempotency key", History: 1, TTL: 7 * 24 * time.Hour},
		},
	}
}

// StreamFor returns the stream that stores messages published on subject.
func (t Topology) StreamFor(subject string) (StreamSpec, bool) {
	for _, s := range t.Streams {
		for _, f := range s.Subjects {
			if subjectMatches(f, subject) {
				return s, true
			}
		}
	}
	return StreamSpec{}, false
}

// subjectMatches reports whether a concrete subject matches a filter with
// NATS wildcards (* one token, > the rest).
func subjectMatches(filter, subject string) bool {
	ft := strings.Split(filter, ".")
	st := strings.Split(subject, ".")
	for i, f := range ft {
		if f == ">" {
			return len(st) > i
		}
		if i >= len(st) || (f != "*" && f != st[i]) {
			return false
		}
	}
	return len(ft) == len(st)
}

func (s StreamSpec) config(replicas int) jetstream.StreamConfig {
	cfg := jetstream.StreamConfig{
		Name:        s.Name,
		Description: s.Description,
		Subjects:    s.Subjects,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		MaxAge:      s.MaxAge,
		MaxBytes:    s.MaxBytes,
		Duplicates:  s.Duplicates,
		Discard:     jetstream.DiscardOld,
		Retention:   jetstream.LimitsPolicy,
	}
	if s.MaxBytes == 0 {
		cfg.MaxBytes = -1
	}
	if s.Retention == WorkQueue {
		cfg.Retention = jetstream.WorkQueuePolicy
		// A full work queue must refuse new commands, never drop queued ones.
		cfg.Discard = jetstream.DiscardNew
	}
	return cfg
}

// ensure creates every stream and bucket or updates it to match.
func (t Topology) ensure(ctx context.Context, js jetstream.JetStream) error {
	for _, s := range t.Streams {
		if _, err := js.CreateOrUpdateStream(ctx, s.config(t.Replicas)); err != nil {
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) || strings.Contains(err.Error(), "retention") {
				return fmt.Errorf("%w: stream %s exists with a different retention; it cannot be changed in place (back it up and delete it): %v", ErrTopology, s.Name, err)
			}
			return fmt.Errorf("%w: stream %s: %v", ErrTopology, s.Name, err)
		}
	}
	for _, b := range t.ObjectBuckets {
		cfg := jetstream.ObjectStoreConfig{
			Bucket:      b.Name,
			Description: b.Description,
			TTL:         b.TTL,
			Storage:     jetstream.FileStorage,
			Replicas:    t.Replicas,
			Compression: true,
		}
		if _, err := js.CreateOrUpdateObjectStore(ctx, cfg); err != nil {
			return fmt.Errorf("%w: object bucket %s: %v", ErrTopology, b.Name, err)
		}
	}
	for _, b := range t.Buckets {
		cfg := jetstream.KeyValueConfig{
			Bucket:      b.Name,
			Description: b.Description,
			History:     b.History,
			TTL:         b.TTL,
			Storage:     jetstream.FileStorage,
			Replicas:    t.Replicas,
		}
		if _, err := js.CreateOrUpdateKeyValue(ctx, cfg); err != nil {
			return fmt.Errorf("%w: bucket %s: %v", ErrTopology, b.Name, err)
		}
	}
	return nil
}

// check reports the first declared stream or bucket that is missing.
func (t Topology) check(ctx context.Context, js jetstream.JetStream) error {
	for _, s := range t.Streams {
		if _, err := js.Stream(ctx, s.Name); err != nil {
			return fmt.Errorf("%w: stream %s: %v", ErrTopology, s.Name, err)
		}
	}
	for _, b := range t.Buckets {
		if _, err := js.KeyValue(ctx, b.Name); err != nil {
			return fmt.Errorf("%w: bucket %s: %v", ErrTopology, b.Name, err)
		}
	}
	for _, b := range t.ObjectBuckets {
		if _, err := js.ObjectStore(ctx, b.Name); err != nil {
			return fmt.Errorf("%w: object bucket %s: %v", ErrTopology, b.Name, err)
		}
	}
	return nil
}

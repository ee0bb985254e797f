package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrKeyNotFound is returned by KV.Get for a key that has no value.
var ErrKeyNotFound = errors.New("bus: key not found")

// KV is the narrow key-value store services use for durable state.
type KV interface {
	Get(ctx context.Context, key string) ([]byte, error)
	Put(ctx context.Context, key string, value []byte) error
	Delete(ctx context.Context, key string) error
	// Keys lists every key, in no particular order.
	Keys(ctx context.Context) ([]string, error)
}

type kv struct{ kv jetstream.KeyValue }

// KeyValue opens a declared bucket.
func (b *Bus) KeyValue(ctx context.Context, bucket string) (KV, error) {
	ctx, cancel := withDefaultTimeout(ctx, 10*time.Second)
	defer cancel()
	k, err := b.js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("%w: bucket %s: %v", ErrTopology, bucket, err)
	}
	return kv{k}, nil
}

func (k kv) Get(ctx context.Context, key string) ([]byte, error) {
	e, err := k.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, ErrKeyNotFound
	}
	if err != nil {
		return nil, err
	}
	return e.Value(), nil
}

func (k kv) Put(ctx context.Context, key string, value []byte) error {
	_, err := k.kv.Put(ctx, key, value)
	return err
}

func (k kv) Delete(ctx context.Context, key string) error {
	err := k.kv.Delete(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	return err
}

func (k kv) Keys(ctx context.Context) ([]string, error) {
	lister, err := k.kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var keys []string
	for key := range lister.Keys() {
		keys = append(keys, key)
	}
	return keys, nil
}

// ErrConflict is returned by a compare-and-set write whose expectation no
// longer holds: the key exists (Create) or changed since it was read
// (Update, DeleteAt). Reload and decide again.
var ErrConflict = errors.New("bus: key changed concurrently")

// Entry is one key's value and the revision that wrote it.
type Entry struct {
	Key      string
	Value    []byte
	Revision uint64
}

// VersionedKV adds compare-and-set on revisions to KV, for state that
// several writers may race on (runs, leases).
type VersionedKV interface {
	KV
	// Entry returns the key's value and revision, ErrKeyNotFound when none.
	Entry(ctx context.Context, key string) (Entry, error)
	// Create writes a key that must not exist yet (a deleted key counts as
	// absent). It returns the new revision, or ErrConflict.
	Create(ctx context.Context, key string, value []byte) (uint64, error)
	// Update writes a key whose revision must still be rev, or ErrConflict.
	Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error)
	// DeleteAt deletes a key whose revision must still be rev, or ErrConflict.
	DeleteAt(ctx context.Context, key string, rev uint64) error
	// Entries returns every live key with its value, in no particular order,
	// read in one pass.
	Entries(ctx context.Context) ([]Entry, error)
	// EntriesUnder is Entries of the keys prefix.*: one kind of record of
	// a bucket that holds several, without reading the others.
	EntriesUnder(ctx context.Context, prefix string) ([]Entry, error)
}

// VersionedKeyValues is the capability to open a bucket with
// compare-and-set.
type VersionedKeyValues interface {
	VersionedKeyValue(ctx context.Context, bucket string) (VersionedKV, error)
}

// VersionedKeyValue opens a declared bucket with compare-and-set.
func (b *Bus) VersionedKeyValue(ctx context.Context, bucket string) (VersionedKV, error) {
	k, err := b.KeyValue(ctx, bucket)
	if err != nil {
		return nil, err
	}
	return k.(kv), nil
}

func (k kv) Entry(ctx context.Context, key string) (Entry, error) {
	e, err := k.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return Entry{}, ErrKeyNotFound
	}
	if err != nil {
		return Entry{}, err
	}
	return Entry{Key: key, Value: e.Value(), Revision: e.Revision()}, nil
}

func (k kv) Create(ctx context.Context, key string, value []byte) (uint64, error) {
	rev, err := k.kv.Create(ctx, key, value)
	return rev, casError(err)
}

func (k kv) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	n, err := k.kv.Update(ctx, key, value, rev)
	return n, casError(err)
}

func (k kv) DeleteAt(ctx context.Context, key string, rev uint64) error {
	return casError(k.kv.Delete(ctx, key, jetstream.LastRevision(rev)))
}

func (k kv) Entries(ctx context.Context) ([]Entry, error) {
	w, err := k.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	return entries(ctx, w)
}

func (k kv) EntriesUnder(ctx context.Context, prefix string) ([]Entry, error) {
	w, err := k.kv.WatchFiltered(ctx, []string{prefix + ".>"}, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	return entries(ctx, w)
}

func entries(ctx context.Context, w jetstream.KeyWatcher) ([]Entry, error) {
	defer w.Stop()
	var out []Entry
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return out, nil
			}
			// A nil entry marks the end of the values present at the start.
			if e == nil {
				return out, nil
			}
			out = append(out, Entry{Key: e.Key(), Value: e.Value(), Revision: e.Revision()})
		}
	}
}

// casError maps the server's answers to a failed expectation onto
// ErrConflict, so callers can errors.Is it.
func casError(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("%w: %v", ErrConflict, err)
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return fmt.Errorf("%w: %v", ErrConflict, err)
	}
	return err
}

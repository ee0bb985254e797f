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

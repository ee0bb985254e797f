package bus

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/tidemark-dev/tidemark/events"
)

// Results keeps the result of each command by its idempotency key, so a
// redelivered or repeated command gets the same answer instead of doing
// its work twice (locking twice, snapshotting twice).
type Results struct {
	kv     KV
	prefix string
}

// NewResults stores results in kv under keys starting with prefix.
func NewResults(kv KV, prefix string) *Results { return &Results{kv: kv, prefix: prefix} }

// KeyFor turns any string into a valid KV key under prefix.
func KeyFor(prefix, raw string) string {
	sum := sha256.Sum256([]byte(raw))
	return prefix + "." + hex.EncodeToString(sum[:16])
}

type storedResult struct {
	Type events.Type     `json:"type"`
	Data json.RawMessage `json:"data"`
}

// Load returns the stored result for idempotencyKey, if there is one.
func (r *Results) Load(ctx context.Context, idempotencyKey string) (events.Payload, bool, error) {
	key := KeyFor(r.prefix, idempotencyKey)
	raw, err := r.kv.Get(ctx, key)
	if errors.Is(err, ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	var s storedResult
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, false, fmt.Errorf("stored result %s: %w", key, err)
	}
	p, err := events.DecodePayload(s.Type, s.Data)
	if err != nil {
		return nil, false, fmt.Errorf("stored result %s: %w", key, err)
	}
	return p, true, nil
}

// Store records p as the result for idempotencyKey.
func (r *Results) Store(ctx context.Context, idempotencyKey string, p events.Payload) error {
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(storedResult{Type: p.EventType(), Data: data})
	if err != nil {
		return err
	}
	return r.kv.Put(ctx, KeyFor(r.prefix, idempotencyKey), raw)
}

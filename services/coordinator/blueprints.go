package coordinator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"github.com/tidemark-dev/tidemark/pkg/bus"
)

// A run renders every step from the blueprint it started with. The source
// is kept once per distinct blueprint in the runs bucket, under its SHA-256
// ("blueprint.<hex>"), and the run records only the digest: a run's record
// is written at every transition, and a blueprint is most of its bytes.

// errBlueprintUnavailable: the run's blueprint could not be read now (the
// bus is down); the transition is retried, not given up.
var errBlueprintUnavailable = errors.New("the run's blueprint cannot be read now")

func blueprintKey(digest string) string { return "blueprint." + digest }

func blueprintDigest(source []byte) string {
	sum := sha256.Sum256(source)
	return hex.EncodeToString(sum[:])
}

// storedBlueprints remembers the sources this instance has stored or read,
// by digest.
type storedBlueprints struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (b *storedBlueprints) get(digest string) ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	src, ok := b.m[digest]
	return src, ok
}

func (b *storedBlueprints) put(digest string, source []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil || len(b.m) > 1000 {
		b.m = map[string][]byte{}
	}
	b.m[digest] = source
}

// storeBlueprint keeps source in the runs bucket, before any run refers to
// it, and returns its digest.
func (s *Service) storeBlueprint(ctx context.Context, source []byte) (string, error) {
	digest := blueprintDigest(source)
	if _, ok := s.sources.get(digest); ok {
		return digest, nil
	}
	if _, err := s.runs.Create(ctx, blueprintKey(digest), source); err != nil && !errors.Is(err, bus.ErrConflict) {
		return "", fmt.Errorf("storing the blueprint: %w", err)
	}
	s.sources.put(digest, source)
	return digest, nil
}

// runBlueprint returns the blueprint r renders from: the source in its
// record (runs started before sources were stored apart), else the one its
// digest names.
func (s *Service) runBlueprint(ctx context.Context, r *Run) (*blueprint.Blueprint, error) {
	if len(r.BlueprintSource) > 0 || r.BlueprintDigest == "" {
		return s.blueprints.get(r)
	}
	source, ok := s.sources.get(r.BlueprintDigest)
	if !ok {
		raw, err := s.runs.Get(ctx, blueprintKey(r.BlueprintDigest))
		if errors.Is(err, bus.ErrKeyNotFound) {
			return nil, fmt.Errorf("blueprint %s (sha256 %s) is no longer stored", r.Blueprint, r.BlueprintDigest)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errBlueprintUnavailable, err)
		}
		if blueprintDigest(raw) != r.BlueprintDigest {
			return nil, fmt.Errorf("blueprint %s: the stored source does not match its digest %s", r.Blueprint, r.BlueprintDigest)
		}
		s.sources.put(r.BlueprintDigest, raw)
		source = raw
	}
	return s.blueprints.parse(r.Blueprint, source)
}

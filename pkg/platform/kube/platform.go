package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/tidemark-dev/tidemark/pkg/platform"
)

// Platform acts on one cluster.
type Platform struct {
	c            *Clients
	pollInterval time.Duration
	movers       moverSlots
}

// Option configures a Platform.
type Option func(*Platform)

// WithPollInterval sets how often waits re-read what they wait on (DefaultPollInterval).
func WithPollInterval(d time.Duration) Option {
	return func(p *Platform) {
		if d > 0 {
			p.pollInterval = d
		}
	}
}

// WithMoverLimit bounds how many mover pods this Platform has in the
// cluster at once (0: no bound). StartMover waits for a free slot; a slot
// is freed when the mover's pod is deleted (Cleanup, CleanupMovers).
func WithMoverLimit(n int) Option {
	return func(p *Platform) {
		if n > 0 {
			p.movers.limit = make(chan struct{}, n)
		}
	}
}

// New returns a Platform using c.
func New(c *Clients, opts ...Option) *Platform {
	p := &Platform{c: c, pollInterval: DefaultPollInterval}
	for _, o := range opts {
		o(p)
	}
	return p
}

// Clients returns the platform's API clients.
func (p *Platform) Clients() *Clients { return p.c }

var _ platform.StepRunner = (*Platform)(nil)

// Kinds implements platform.StepRunner.
func (p *Platform) Kinds() []string { return []string{KindApply, KindScale} }

// RunStep implements platform.StepRunner: it runs a scale or apply step.
// A scale step's outputs come back with its error when the workload was
// already changed, so the inverse that restores it can be rendered.
func (p *Platform) RunStep(ctx context.Context, req platform.StepRequest) (map[string]string, error) {
	switch req.Kind {
	case KindScale:
		spec, err := decodeStrict[ScaleSpec](req)
		if err != nil {
			return nil, err
		}
		return p.runScale(ctx, req.Namespace, spec)
	case KindApply:
		spec, err := decodeStrict[ApplySpec](req)
		if err != nil {
			return nil, err
		}
		return p.Apply(ctx, req.Namespace, spec)
	}
	return nil, fmt.Errorf("%w: step kind %q is not one the Kubernetes platform runs (it runs scale and apply)", ErrInvalidSpec, req.Kind)
}

func decodeStrict[T any](req platform.StepRequest) (T, error) {
	var spec T
	dec := json.NewDecoder(bytes.NewReader(req.Spec))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return spec, fmt.Errorf("%w: %s spec: %v", ErrInvalidSpec, req.Kind, err)
	}
	return spec, nil
}

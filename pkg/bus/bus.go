// Package bus is the only place in Tidemark that knows NATS JetStream. It
// declares the topology, publishes events with publish-acks and dedup, and
// runs durable pull consumers that acknowledge only finished work, heartbeat
// long handlers, retry with backoff and set poison messages aside in a dead
// letter stream with the reason.
package bus

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tidemark-dev/tidemark/events"
)

const instrumentationName = "github.com/tidemark-dev/tidemark/pkg/bus"

// Publisher sends events. Services depend on this, not on *Bus.
type Publisher interface {
	Publish(ctx context.Context, ev events.Event) (PublishAck, error)
}

// Consumer runs handlers on durable consumers.
type Consumer interface {
	Consume(ctx context.Context, spec ConsumerSpec, h Handler) error
}

// KeyValues opens declared key-value buckets.
type KeyValues interface {
	KeyValue(ctx context.Context, bucket string) (KV, error)
}

// ObjectStores opens declared object-store buckets.
type ObjectStores interface {
	ObjectStore(ctx context.Context, bucket string) (Objects, error)
}

// Bus is a JetStream-backed event bus.
type Bus struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	topo    Topology
	source  string
	log     *slog.Logger
	tracer  trace.Tracer
	prop    propagation.TextMapPropagator
	metrics *metrics
	now     func() time.Time
}

var (
	_ Publisher    = (*Bus)(nil)
	_ Consumer     = (*Bus)(nil)
	_ KeyValues    = (*Bus)(nil)
	_ ObjectStores = (*Bus)(nil)
)

type options struct {
	source     string
	log        *slog.Logger
	tracerProv trace.TracerProvider
	registerer prometheus.Registerer
	now        func() time.Time
	topology   *Topology
}

// Option configures New.
type Option func(*options)

// WithSource sets the CloudEvents source of events published without one,
// such as "tidemark/coordinator".
func WithSource(s string) Option { return func(o *options) { o.source = s } }

// WithLogger sets the logger; the default discards.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithTracerProvider sets the OpenTelemetry tracer provider; the default is
// the global one.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tracerProv = tp }
}

// WithRegisterer registers the bus's Prometheus metrics there.
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.registerer = r } }

// WithClock replaces time.Now, for tests with fixed clocks.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithTopology replaces DefaultTopology.
func WithTopology(t Topology) Option { return func(o *options) { o.topology = &t } }

// New returns a bus over an open NATS connection. The caller keeps
// ownership of the connection and closes it after the bus's consumers end.
func New(nc *nats.Conn, opts ...Option) (*Bus, error) {
	o := options{
		source: "tidemark",
		log:    slog.New(slog.DiscardHandler),
		now:    time.Now,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.tracerProv == nil {
		o.tracerProv = otel.GetTracerProvider()
	}
	if o.topology == nil {
		t := DefaultTopology(TopologyOptions{})
		o.topology = &t
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	m, err := newMetrics(o.registerer)
	if err != nil {
		return nil, err
	}
	return &Bus{
		nc:      nc,
		js:      js,
		topo:    *o.topology,
		source:  o.source,
		log:     o.log,
		tracer:  o.tracerProv.Tracer(instrumentationName),
		prop:    propagation.TraceContext{},
		metrics: m,
		now:     o.now,
	}, nil
}

// Topology returns the declared topology.
func (b *Bus) Topology() Topology { return b.topo }

// EnsureTopology creates or updates every declared stream and bucket. It is
// safe to call from every process at every start.
func (b *Bus) EnsureTopology(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx, 30*time.Second)
	defer cancel()
	return b.topo.ensure(ctx, b.js)
}

// Ready reports nil when the connection is up and every declared stream and
// bucket exists.
func (b *Bus) Ready(ctx context.Context) error {
	if !b.nc.IsConnected() {
		return fmt.Errorf("%w (status %s)", ErrNotConnected, b.nc.Status())
	}
	ctx, cancel := withDefaultTimeout(ctx, 5*time.Second)
	defer cancel()
	return b.topo.check(ctx, b.js)
}

// Flush waits until the server has processed everything sent so far,
// including acknowledgements.
func (b *Bus) Flush(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx, 5*time.Second)
	defer cancel()
	return b.nc.FlushWithContext(ctx)
}

func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

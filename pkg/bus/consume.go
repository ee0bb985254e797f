package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/cenats"
)

// Handler holds only business logic: it handles one event and returns the
// events it produces. The bus publishes those (with ids derived from the
// input's, the input's correlation id and the input as their cause) and only
// then acknowledges the input. Return Permanent(err) when retrying cannot help.
type Handler func(ctx context.Context, ev events.Event) ([]events.Event, error)

// ConsumerSpec declares one durable pull consumer.
type ConsumerSpec struct {
	// Name is the durable consumer name; instances sharing it share the work.
	Name   string
	Stream string
	// FilterSubjects limits the consumer to these subjects; empty means all
	// of the stream's.
	FilterSubjects []string
	// AckWait is how long the server waits for an ack or heartbeat before it
	// redelivers. Handlers are heartbeated every AckWait/3, so it bounds how
	// quickly a crashed worker's message moves on, not how long work may take.
	AckWait time.Duration
	// MaxDeliver is how many times a message is tried before it is dead-lettered.
	MaxDeliver int
	// Backoff is the delay before the nth redelivery after a handler error;
	// the last value repeats.
	Backoff []time.Duration
	// Concurrency is how many handlers run at once in this process.
	Concurrency int
	// Prefetch is how many messages are pulled at once (default
	// Concurrency). Raise it for many short handlers; keep it at Concurrency
	// when handlers can run longer than AckWait.
	Prefetch int
	// ShutdownGrace is how long in-flight handlers may finish after the
	// consumer is stopped; then their context is cancelled and their
	// messages are returned for redelivery.
	ShutdownGrace time.Duration
	// InactiveThreshold, when set, lets the server delete the durable
	// consumer once nobody has pulled from it for that long: for a
	// consumer named after one instance, which no other will ever use.
	InactiveThreshold time.Duration
}

// Consumer defaults.
const (
	DefaultAckWait       = 30 * time.Second
	DefaultMaxDeliver    = 5
	DefaultShutdownGrace = 10 * time.Second
)

// pullExpiry is how long one pull request waits on the server.
const (
	pullExpiry    = 5 * time.Second
	pullHeartbeat = 500 * time.Millisecond
)

// DefaultBackoff is the redelivery backoff when a spec sets none.
var DefaultBackoff = []time.Duration{time.Second, 5 * time.Second, 30 * time.Second, 2 * time.Minute}

func (s ConsumerSpec) withDefaults() ConsumerSpec {
	if s.AckWait == 0 {
		s.AckWait = DefaultAckWait
	}
	if s.MaxDeliver == 0 {
		s.MaxDeliver = DefaultMaxDeliver
	}
	if len(s.Backoff) == 0 {
		s.Backoff = DefaultBackoff
	}
	if s.Concurrency == 0 {
		s.Concurrency = 1
	}
	if s.Prefetch == 0 {
		// Pulled-ahead messages are not heartbeated, so by default nothing
		// waits in a buffer: a slow handler cannot age a queued message past
		// AckWait and cause a duplicate delivery.
		s.Prefetch = s.Concurrency
	}
	if s.ShutdownGrace == 0 {
		s.ShutdownGrace = DefaultShutdownGrace
	}
	return s
}

// Validate reports the first field that cannot work, and how to fix it.
func (s ConsumerSpec) Validate() error {
	switch {
	case s.Name == "":
		return fmt.Errorf("%w: Name is empty; give the durable consumer a name", ErrInvalidConsumer)
	case s.Stream == "":
		return fmt.Errorf("%w: %s: Stream is empty; name the stream to consume", ErrInvalidConsumer, s.Name)
	case s.AckWait < 100*time.Millisecond:
		return fmt.Errorf("%w: %s: AckWait %s is below 100ms; heartbeats could not keep up", ErrInvalidConsumer, s.Name, s.AckWait)
	case s.MaxDeliver < 1:
		return fmt.Errorf("%w: %s: MaxDeliver %d must be at least 1", ErrInvalidConsumer, s.Name, s.MaxDeliver)
	case s.Concurrency < 1:
		return fmt.Errorf("%w: %s: Concurrency %d must be at least 1", ErrInvalidConsumer, s.Name, s.Concurrency)
	case s.Prefetch < 1:
		return fmt.Errorf("%w: %s: Prefetch %d must be at least 1", ErrInvalidConsumer, s.Name, s.Prefetch)
	}
	for i, d := range s.Backoff {
		if d < 0 {
			return fmt.Errorf("%w: %s: Backoff[%d] is negative", ErrInvalidConsumer, s.Name, i)
		}
	}
	return nil
}

func (s ConsumerSpec) backoff(deliveries uint64) time.Duration {
	i := int(deliveries) - 1
	if i >= len(s.Backoff) {
		i = len(s.Backoff) - 1
	}
	if i < 0 {
		i = 0
	}
	return s.Backoff[i]
}

// Consume runs handler on the durable consumer described by spec until ctx
// is done, then stops taking work, lets in-flight handlers finish for
// ShutdownGrace, returns unfinished and unstarted messages for redelivery,
// flushes acknowledgements and returns nil. Nothing is acknowledged before
// its handler succeeded and its results were stored.
func (b *Bus) Consume(ctx context.Context, spec ConsumerSpec, handler Handler) error {
	spec = spec.withDefaults()
	if err := spec.Validate(); err != nil {
		return err
	}
	setupCtx, cancel := withDefaultTimeout(ctx, 30*time.Second)
	cons, err := b.js.CreateOrUpdateConsumer(setupCtx, spec.Stream, jetstream.ConsumerConfig{
		Durable:           spec.Name,
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           spec.AckWait,
		MaxDeliver:        spec.MaxDeliver,
		FilterSubjects:    spec.FilterSubjects,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		MaxAckPending:     max(1000, 4*spec.Prefetch),
		InactiveThreshold: spec.InactiveThreshold,
	})
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped before it started: nothing was taken
		}
		return fmt.Errorf("%w: consumer %s on %s: %v", ErrTopology, spec.Name, spec.Stream, err)
	}

	// Work that outlives ctx (finishing in-flight handlers, settling
	// messages, dead-lettering) runs on this context, cancelled only when
	// the grace period is over.
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	var inflight sync.WaitGroup

	advisories, err := b.watchMaxDeliveries(workCtx, spec, &inflight)
	if err != nil {
		return err
	}
	defer advisories.Unsubscribe() //nolint:errcheck // best effort on the way out

	// Small pull batches on a work-queue stream (nats-server 2.15, nats.go
	// 1.55) occasionally lose track of the outstanding pull after an async
	// ack: the next message then waits until the client notices missing
	// idle heartbeats, 30 s with the defaults (measured in BenchmarkRoundTrip,
	// raw nats.go included). A 500 ms heartbeat bounds that to about a
	// second and, in our runs, removed it; a freeze window must not grow by
	// 30 s. See docs/benchmarks.md.
	iter, err := cons.Messages(jetstream.PullMaxMessages(spec.Prefetch), jetstream.PullExpiry(pullExpiry), jetstream.PullHeartbeat(pullHeartbeat))
	if err != nil {
		return fmt.Errorf("bus: consumer %s: %w", spec.Name, err)
	}
	b.log.Info("consumer started", "consumer", spec.Name, "stream", spec.Stream, "concurrency", spec.Concurrency)

	hb := &heartbeats{running: map[jetstream.Msg]struct{}{}}
	hbCtx, stopHeartbeats := context.WithCancel(workCtx)
	defer stopHeartbeats()
	go hb.run(hbCtx, spec.AckWait/3, func(err error) { b.log.Warn("heartbeat", "consumer", spec.Name, "err", err) })

	cm := &consumerMetrics{
		acked:       b.metrics.handled.WithLabelValues(spec.Name, "ack"),
		handlerTime: b.metrics.handlerTime.WithLabelValues(spec.Name),
	}
	// A fixed pool of workers (rather than a goroutine per message) keeps
	// their grown stacks: schema validation recurses deeply enough that a
	// fresh goroutine's stack growth showed up in profiles.
	work := make(chan jetstream.Msg)
	var workers sync.WaitGroup
	for range spec.Concurrency {
		workers.Add(1)
		inflight.Add(1)
		go func() {
			defer workers.Done()
			defer inflight.Done()
			for msg := range work {
				b.process(workCtx, spec, cm, hb, msg, handler)
			}
		}()
	}

	var loopErr error
loop:
	for {
		msg, err := iter.Next(jetstream.NextContext(ctx))
		if err != nil {
			switch {
			case ctx.Err() != nil:
				break loop
			case errors.Is(err, jetstream.ErrMsgIteratorClosed):
				loopErr = fmt.Errorf("bus: consumer %s closed: %w", spec.Name, err)
				break loop
			default:
				// Missed heartbeats and reconnects are reported here; the
				// iterator keeps pulling once the server is back.
				b.log.Warn("consumer pull", "consumer", spec.Name, "err", err)
				continue
			}
		}
		select {
		case work <- msg:
		case <-ctx.Done():
			// Taken from the server but never started: hand it back now.
			_ = msg.Nak()
			b.metrics.handled.WithLabelValues(spec.Name, "shutdown").Inc()
			break loop
		}
	}
	close(work)

	b.returnBuffered(iter, spec)
	done := make(chan struct{})
	go func() { inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(spec.ShutdownGrace):
		b.log.Warn("consumer shutdown grace over; cancelling in-flight handlers", "consumer", spec.Name)
		stopWork()
		<-done
	}
	if err := b.Flush(context.Background()); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		b.log.Warn("flush after consumer stop", "consumer", spec.Name, "err", err)
	}
	b.log.Info("consumer stopped", "consumer", spec.Name)
	return loopErr
}

// returnBuffered naks messages that were pulled but never handed to a
// handler, so another instance gets them now rather than after AckWait.
func (b *Bus) returnBuffered(iter jetstream.MessagesContext, spec ConsumerSpec) {
	iter.Drain()
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		msg, err := iter.Next(jetstream.NextMaxWait(200 * time.Millisecond))
		if err != nil {
			break
		}
		_ = msg.Nak()
		b.metrics.handled.WithLabelValues(spec.Name, "shutdown").Inc()
	}
	iter.Stop()
}

// consumerMetrics are the metrics every message of a consumer touches,
// looked up by label once per consumer rather than once per message.
type consumerMetrics struct {
	acked       prometheus.Counter
	handlerTime prometheus.Observer
}

func (b *Bus) process(ctx context.Context, spec ConsumerSpec, cm *consumerMetrics, hb *heartbeats, msg jetstream.Msg, handler Handler) {
	meta, err := msg.Metadata()
	if err != nil {
		// Not a JetStream message; there is nothing to settle.
		b.log.Error("message without JetStream metadata", "consumer", spec.Name, "err", err)
		return
	}
	raw := &nats.Msg{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()}
	ev, err := cenats.Decode(ctx, raw)
	if err != nil {
		b.settleDeadLetter(ctx, spec, msg, meta, raw, "undecodable message: "+err.Error())
		return
	}

	parent := b.prop.Extract(ctx, headerCarrier(raw.Header))
	hctx, span := b.tracer.Start(parent, spanName(processSpan, ev.Type()), trace.WithSpanKind(trace.SpanKindConsumer))
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.consumer.group.name", spec.Name),
			attribute.String("messaging.destination.name", raw.Subject),
			attribute.Int64("messaging.nats.deliveries", int64(meta.NumDelivered)),
			attribute.String("cloudevents.event_type", string(ev.Type())),
			attribute.String("cloudevents.event_id", ev.ID),
			attribute.String("cloudevents.event_subject", ev.Subject),
		)
	}

	start := time.Now()
	results, herr := b.runHandler(hctx, spec, hb, msg, handler, ev)
	if herr == nil {
		herr = b.publishResults(hctx, ev, results)
	}
	cm.handlerTime.Observe(time.Since(start).Seconds())

	switch {
	case herr == nil:
		if err := msg.Ack(); err != nil {
			b.log.Warn("ack", "consumer", spec.Name, "id", ev.ID, "err", err)
		}
		cm.acked.Inc()
		return
	case ctx.Err() != nil:
		// Stopped mid-handler: hand the message back without counting
		// against its backoff.
		_ = msg.Nak()
		span.SetStatus(codes.Error, "shutdown")
		b.metrics.handled.WithLabelValues(spec.Name, "shutdown").Inc()
		return
	}
	span.RecordError(herr)
	span.SetStatus(codes.Error, herr.Error())
	switch {
	case IsPermanent(herr):
		b.settleDeadLetter(ctx, spec, msg, meta, raw, "permanent error: "+herr.Error())
	case meta.NumDelivered >= uint64(spec.MaxDeliver):
		b.settleDeadLetter(ctx, spec, msg, meta, raw, fmt.Sprintf("failed on all %d deliveries; last error: %v", meta.NumDelivered, herr))
	default:
		delay := spec.backoff(meta.NumDelivered)
		b.log.Warn("handler failed; will retry", "consumer", spec.Name, "type", ev.Type(), "id", ev.ID,
			"delivery", meta.NumDelivered, "maxDeliver", spec.MaxDeliver, "retryIn", delay, "err", herr)
		_ = msg.NakWithDelay(delay)
		b.metrics.handled.WithLabelValues(spec.Name, "retry").Inc()
	}
}

// heartbeats tells the server, every AckWait/3, that each message whose
// handler is running is still in progress, so long work is never
// redelivered while it is alive. One ticker serves every handler of a
// consumer.
type heartbeats struct {
	mu      sync.Mutex
	running map[jetstream.Msg]struct{}
}

func (h *heartbeats) add(m jetstream.Msg) {
	h.mu.Lock()
	h.running[m] = struct{}{}
	h.mu.Unlock()
}

// remove returns once no heartbeat for m can be sent any more, so an ack
// that follows is never overtaken by a stray in-progress signal.
func (h *heartbeats) remove(m jetstream.Msg) {
	h.mu.Lock()
	delete(h.running, m)
	h.mu.Unlock()
}

func (h *heartbeats) run(ctx context.Context, every time.Duration, log func(error)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			h.mu.Lock()
			for m := range h.running {
				if err := m.InProgress(); err != nil {
					log(err)
				}
			}
			h.mu.Unlock()
		}
	}
}

// runHandler calls the handler under heartbeats, recovering a panic into an
// error.
func (b *Bus) runHandler(ctx context.Context, spec ConsumerSpec, hb *heartbeats, msg jetstream.Msg, handler Handler, ev events.Event) (results []events.Event, err error) {
	hb.add(msg)
	defer hb.remove(msg)
	defer func() {
		if r := recover(); r != nil {
			b.log.Error("handler panicked", "consumer", spec.Name, "type", ev.Type(), "id", ev.ID, "panic", r, "stack", string(debug.Stack()))
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return handler(ctx, ev)
}

func (b *Bus) publishResults(ctx context.Context, cause events.Event, results []events.Event) error {
	for i, r := range results {
		r = r.CausedBy(cause)
		if r.ID == "" {
			r.ID = resultID(cause, i, r.Type())
		}
		if _, err := b.Publish(ctx, r); err != nil {
			return fmt.Errorf("storing result %d (%s): %w", i, r.Type(), err)
		}
	}
	return nil
}

// settleDeadLetter stores the message in the dead-letter stream and then
// acknowledges it. If the dead letter cannot be stored, the message is
// returned for redelivery instead: it is never dropped.
func (b *Bus) settleDeadLetter(ctx context.Context, spec ConsumerSpec, msg jetstream.Msg, meta *jetstream.MsgMetadata, raw *nats.Msg, reason string) {
	if err := b.deadLetter(ctx, spec.Name, meta.Stream, meta.Sequence.Stream, meta.NumDelivered, raw, reason); err != nil {
		b.log.Error("dead letter not stored; returning the message", "consumer", spec.Name, "seq", meta.Sequence.Stream, "err", err)
		_ = msg.NakWithDelay(spec.backoff(meta.NumDelivered))
		b.metrics.handled.WithLabelValues(spec.Name, "retry").Inc()
		return
	}
	if err := msg.Ack(); err != nil {
		b.log.Warn("ack after dead letter", "consumer", spec.Name, "err", err)
	}
	b.metrics.handled.WithLabelValues(spec.Name, "deadletter").Inc()
}

var deadLetterIDNamespace = uuid.MustParse("0b8e7d4a-2f6c-4e1a-b5d3-9c7a1e2f4b60")

func (b *Bus) deadLetter(ctx context.Context, consumer, stream string, seq, deliveries uint64, raw *nats.Msg, reason string) error {
	headers := map[string][]string{}
	for k, v := range raw.Header {
		headers[k] = append([]string(nil), v...)
	}
	subject := raw.Header.Get("ce-subject")
	if subject == "" {
		subject = raw.Subject
	}
	ev := events.Event{
		// One id per stored message: the inline path and the max-deliveries
		// advisory path may both try, and only one copy is kept.
		ID:            uuid.NewSHA1(deadLetterIDNamespace, fmt.Appendf(nil, "%s/%d", stream, seq)).String(),
		Subject:       subject,
		CorrelationID: raw.Header.Get("ce-" + events.ExtCorrelationID),
		CausationID:   raw.Header.Get(cenats.HeaderID),
		Data: events.DeadLettered{
			Reason:     reason,
			Stream:     stream,
			Consumer:   consumer,
			Subject:    raw.Subject,
			Sequence:   seq,
			Deliveries: deliveries,
			Headers:    headers,
			Data:       raw.Data,
		},
	}
	if _, err := b.Publish(ctx, ev); err != nil {
		return err
	}
	b.metrics.deadLettered.WithLabelValues(consumer).Inc()
	b.log.Warn("message dead-lettered", "consumer", consumer, "stream", stream, "seq", seq, "subject", raw.Subject, "reason", reason)
	return nil
}

// maxDeliveriesAdvisory is the part of JetStream's
// io.nats.jetstream.advisory.v1.max_deliver we use.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// watchMaxDeliveries dead-letters messages the server gave up on without a
// handler ever returning (a worker crashed or hung on every delivery). Those
// never reach process's dead-letter path, so without this they would sit in
// a work queue forever, unseen.
func (b *Bus) watchMaxDeliveries(ctx context.Context, spec ConsumerSpec, inflight *sync.WaitGroup) (*nats.Subscription, error) {
	subject := fmt.Sprintf("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.%s.%s", spec.Stream, spec.Name)
	sub, err := b.nc.QueueSubscribe(subject, "tidemark-maxdeliver-"+spec.Name, func(m *nats.Msg) {
		var adv maxDeliveriesAdvisory
		if err := json.Unmarshal(m.Data, &adv); err != nil {
			b.log.Warn("unreadable max-deliveries advisory", "consumer", spec.Name, "err", err)
			return
		}
		inflight.Add(1)
		go func() {
			defer inflight.Done()
			b.deadLetterAbandoned(ctx, spec, adv)
		}()
	})
	if err != nil {
		return nil, fmt.Errorf("bus: consumer %s: advisory subscription: %w", spec.Name, err)
	}
	return sub, nil
}

func (b *Bus) deadLetterAbandoned(ctx context.Context, spec ConsumerSpec, adv maxDeliveriesAdvisory) {
	ctx, cancel := withDefaultTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := b.js.Stream(ctx, spec.Stream)
	if err != nil {
		b.log.Error("max deliveries: stream lookup", "stream", spec.Stream, "err", err)
		return
	}
	stored, err := stream.GetMsg(ctx, adv.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return // already settled elsewhere
	}
	if err != nil {
		b.log.Error("max deliveries: fetching abandoned message", "stream", spec.Stream, "seq", adv.StreamSeq, "err", err)
		return
	}
	raw := &nats.Msg{Subject: stored.Subject, Header: stored.Header, Data: stored.Data}
	reason := fmt.Sprintf("delivered %d times and never acknowledged: the handler did not finish (crashed, hung, or AckWait %s too short without heartbeats)", adv.Deliveries, spec.AckWait)
	if err := b.deadLetter(ctx, spec.Name, spec.Stream, adv.StreamSeq, adv.Deliveries, raw, reason); err != nil {
		b.log.Error("max deliveries: dead letter not stored", "stream", spec.Stream, "seq", adv.StreamSeq, "err", err)
		return
	}
	if b.isWorkQueue(spec.Stream) {
		// The dead letter now holds the command; a work queue must not keep a
		// second, undeliverable copy.
		if err := stream.DeleteMsg(ctx, adv.StreamSeq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			b.log.Warn("max deliveries: removing dead-lettered command", "stream", spec.Stream, "seq", adv.StreamSeq, "err", err)
		}
	}
	b.metrics.handled.WithLabelValues(spec.Name, "deadletter").Inc()
}

func (b *Bus) isWorkQueue(stream string) bool {
	for _, s := range b.topo.Streams {
		if s.Name == stream {
			return s.Retention == WorkQueue
		}
	}
	return false
}

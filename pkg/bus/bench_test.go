package bus

import (
	"context"
	"encoding/json"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/cenats"
)

// The benchmarks compare the bus (CloudEvents encoding, schema validation,
// tracing, heartbeats, dead-letter handling) with raw nats.go publishing and
// consuming the same bytes on the same embedded server. Ratios, not absolute
// numbers, are what to compare: see docs/benchmarks.md.

const (
	benchPublishers  = 8
	benchConcurrency = 4
	benchPrefetch    = 256
)

func benchSpec(name string) ConsumerSpec {
	return ConsumerSpec{Name: name, Stream: StreamHookCommands, AckWait: 30 * time.Second, Concurrency: benchConcurrency, Prefetch: benchPrefetch}
}

// publishAll publishes n messages from benchPublishers goroutines.
func publishAll(b *testing.B, n int, publish func(i int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range benchPublishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := publish(i); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func BenchmarkThroughput(b *testing.B) {
	b.Run("raw", func(b *testing.B) {
		env := newTestEnv(b)
		ctx := context.Background()
		cons, err := env.js.CreateOrUpdateConsumer(ctx, StreamHookCommands, jetstream.ConsumerConfig{
			Durable: "bench-raw", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: 4 * benchPrefetch,
		})
		if err != nil {
			b.Fatal(err)
		}
		// Raw publishes pre-encoded bytes: the baseline is the transport alone.
		msgs := make([]*nats.Msg, b.N)
		for i := range msgs {
			if msgs[i], err = cenats.EncodeEvent(ctx, hookRequested("run-bench")); err != nil {
				b.Fatal(err)
			}
		}
		var got atomic.Int64
		done := make(chan struct{})
		b.ResetTimer()
		cc, err := cons.Consume(func(m jetstream.Msg) {
			_ = m.Ack()
			if got.Add(1) == int64(b.N) {
				close(done)
			}
		}, jetstream.PullMaxMessages(benchPrefetch))
		if err != nil {
			b.Fatal(err)
		}
		defer cc.Stop()
		publishAll(b, b.N, func(i int) error {
			_, err := env.js.PublishMsg(ctx, msgs[i])
			return err
		})
		<-done
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
	// raw-app is what an application would write on nats.go alone: the
	// same headers set by hand, json.Marshal on publish, json.Unmarshal on
	// consume; no schema, tracing, heartbeats or dead letters.
	b.Run("raw-app", func(b *testing.B) {
		env := newTestEnv(b)
		ctx := context.Background()
		cons, err := env.js.CreateOrUpdateConsumer(ctx, StreamHookCommands, jetstream.ConsumerConfig{
			Durable: "bench-raw-app", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: 4 * benchPrefetch,
		})
		if err != nil {
			b.Fatal(err)
		}
		var got atomic.Int64
		done := make(chan struct{})
		b.ResetTimer()
		cc, err := cons.Consume(func(m jetstream.Msg) {
			var p events.HookRequested
			if err := json.Unmarshal(m.Data(), &p); err != nil {
				b.Error(err)
			}
			_ = m.Ack()
			if got.Add(1) == int64(b.N) {
				close(done)
			}
		}, jetstream.PullMaxMessages(benchPrefetch))
		if err != nil {
			b.Fatal(err)
		}
		defer cc.Stop()
		publishAll(b, b.N, func(i int) error {
			_, err := env.js.PublishMsg(ctx, handMadeMsg(hookRequested("run-bench")))
			return err
		})
		<-done
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
	b.Run("bus", func(b *testing.B) {
		env := newTestEnv(b)
		ctx := context.Background()
		var got atomic.Int64
		done := make(chan struct{})
		b.ResetTimer()
		stop := env.consume(b, benchSpec("bench-bus"), func(ctx context.Context, ev events.Event) ([]events.Event, error) {
			if got.Add(1) == int64(b.N) {
				close(done)
			}
			return nil, nil
		})
		publishAll(b, b.N, func(i int) error {
			_, err := env.bus.Publish(ctx, hookRequested("run-bench"))
			return err
		})
		<-done
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		stop()
	})
}

// handMadeMsg is a binary-mode CloudEvent built without any library.
func handMadeMsg(ev events.Event) *nats.Msg {
	data, _ := json.Marshal(ev.Data)
	m := nats.NewMsg("tidemark.cmd.hook.requested.v1")
	m.Header.Set("ce-specversion", "1.0")
	m.Header.Set("ce-id", ev.ID)
	m.Header.Set("ce-source", ev.Source)
	m.Header.Set("ce-type", string(ev.Type()))
	m.Header.Set("ce-subject", ev.Subject)
	m.Header.Set("ce-time", ev.Time.Format(time.RFC3339Nano))
	m.Header.Set("ce-correlationid", ev.CorrelationID)
	m.Header.Set("content-type", "application/json")
	m.Header.Set(nats.MsgIdHdr, ev.ID)
	m.Data = data
	return m
}

// BenchmarkRoundTrip measures one event at a time from publish to handler.
func BenchmarkRoundTrip(b *testing.B) {
	report := func(b *testing.B, lat []time.Duration) {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-µs")
	}
	b.Run("raw", func(b *testing.B) {
		env := newTestEnv(b)
		ctx := context.Background()
		cons, err := env.js.CreateOrUpdateConsumer(ctx, StreamHookCommands, jetstream.ConsumerConfig{
			Durable: "rt-raw", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second,
		})
		if err != nil {
			b.Fatal(err)
		}
		arrived := make(chan struct{}, 1)
		cc, err := cons.Consume(func(m jetstream.Msg) {
			_ = m.Ack()
			arrived <- struct{}{}
		})
		if err != nil {
			b.Fatal(err)
		}
		defer cc.Stop()
		msgs := make([]*nats.Msg, b.N)
		for i := range msgs {
			if msgs[i], err = cenats.EncodeEvent(ctx, hookRequested("run-rt")); err != nil {
				b.Fatal(err)
			}
		}
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := range b.N {
			start := time.Now()
			if _, err := env.js.PublishMsg(ctx, msgs[i]); err != nil {
				b.Fatal(err)
			}
			<-arrived
			lat = append(lat, time.Since(start))
		}
		b.StopTimer()
		report(b, lat)
	})
	b.Run("bus", func(b *testing.B) {
		env := newTestEnv(b)
		ctx := context.Background()
		arrived := make(chan struct{}, 1)
		stop := env.consume(b, ConsumerSpec{Name: "rt-bus", Stream: StreamHookCommands, AckWait: 30 * time.Second}, func(ctx context.Context, ev events.Event) ([]events.Event, error) {
			arrived <- struct{}{}
			return nil, nil
		})
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for range b.N {
			start := time.Now()
			if _, err := env.bus.Publish(ctx, hookRequested("run-rt")); err != nil {
				b.Fatal(err)
			}
			<-arrived
			lat = append(lat, time.Since(start))
		}
		b.StopTimer()
		report(b, lat)
		stop()
	})
}

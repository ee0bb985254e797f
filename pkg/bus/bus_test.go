package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/cenats"
	"github.com/tidemark-dev/tidemark/pkg/natsserver"
)

// testEnv is a real NATS server with JetStream on a temporary directory, and
// a bus with Tidemark's topology on it.
type testEnv struct {
	srv *natsserver.Server
	nc  *nats.Conn
	js  jetstream.JetStream
	bus *Bus
}

func newTestEnv(t testing.TB, opts ...Option) *testEnv {
	t.Helper()
	srv, err := natsserver.Start(natsserver.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	b, err := New(nc, append([]Option{WithSource("tidemark/test")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.EnsureTopology(context.Background()); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &testEnv{srv: srv, nc: nc, js: js, bus: b}
}

// consume runs Consume in the background and returns a stop function that
// waits for it to return.
func (e *testEnv) consume(t testing.TB, spec ConsumerSpec, h Handler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.bus.Consume(ctx, spec, h) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Consume returned %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("Consume did not return after its context was cancelled")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// deadLetters reads every dead letter stored so far.
func (e *testEnv) deadLetters(t testing.TB) []events.DeadLettered {
	t.Helper()
	ctx := context.Background()
	s, err := e.js.Stream(ctx, StreamDeadLetter)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []events.DeadLettered
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		ev, err := cenats.Decode(ctx, &nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data})
		if err != nil {
			t.Fatalf("dead letter %d does not decode: %v", seq, err)
		}
		dl, ok := events.As[events.DeadLettered](ev)
		if !ok {
			t.Fatalf("dead letter %d holds %s", seq, ev.Type())
		}
		out = append(out, dl)
	}
	return out
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func hookRequested(run string) events.Event {
	ev := events.New("tidemark/test", run, events.HookRequested{
		RunID:          events.RunID(run),
		Application:    "shop/postgres",
		Step:           "quiesce",
		Kind:           "sql",
		Spec:           json.RawMessage(`{"statement":"SELECT 1"}`),
		Timeout:        events.Duration(30 * time.Second),
		IdempotencyKey: run + "/quiesce",
	}, time.Now())
	ev.CorrelationID = run
	return ev
}

func hookSpec(name string) ConsumerSpec {
	return ConsumerSpec{
		Name:          name,
		Stream:        StreamHookCommands,
		AckWait:       2 * time.Second,
		MaxDeliver:    3,
		Backoff:       []time.Duration{50 * time.Millisecond},
		ShutdownGrace: 2 * time.Second,
	}
}

func TestEveryEventTypeRoundTripsThroughNATS(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	for _, d := range events.All() {
		t.Run(string(d.Type), func(t *testing.T) {
			examples, err := events.Examples(d.Type)
			if err != nil || len(examples) == 0 {
				t.Fatalf("no examples for %s: %v", d.Type, err)
			}
			for _, p := range examples {
				sent := events.New("tidemark/test", "shop/postgres", p, time.Date(2026, 11, 22, 21, 4, 5, 123456789, time.UTC))
				sent.CorrelationID = "run-42"
				sent.CausationID = "0193a6f2-7c1e-7b3a-9d2e-4f5a6b7c8d9e"
				ack, err := env.bus.Publish(ctx, sent)
				if err != nil {
					t.Fatal(err)
				}
				stream, err := env.js.Stream(ctx, ack.Stream)
				if err != nil {
					t.Fatal(err)
				}
				stored, err := stream.GetMsg(ctx, ack.Sequence)
				if err != nil {
					t.Fatal(err)
				}
				if want, _ := events.SubjectOf(sent); stored.Subject != want {
					t.Errorf("stored on %s, want %s", stored.Subject, want)
				}
				for h, want := range map[string]string{
					"ce-specversion": "1.0", "ce-id": sent.ID, "ce-type": string(d.Type),
					"ce-source": "tidemark/test", "ce-subject": "shop/postgres", "content-type": "application/json",
					"ce-correlationid": "run-42", "ce-causationid": sent.CausationID, nats.MsgIdHdr: sent.ID,
				} {
					if got := stored.Header.Get(h); got != want {
						t.Errorf("header %s = %q, want %q", h, got, want)
					}
				}
				got, err := cenats.Decode(ctx, &nats.Msg{Subject: stored.Subject, Header: stored.Header, Data: stored.Data})
				if err != nil {
					t.Fatal(err)
				}
				if !got.Time.Equal(sent.Time) {
					t.Errorf("time %v, want %v", got.Time, sent.Time)
				}
				got.Time = sent.Time
				gotData, _ := json.Marshal(got.Data)
				sentData, _ := json.Marshal(sent.Data)
				if !jsonEqual(gotData, sentData) || reflect.TypeOf(got.Data) != reflect.TypeOf(sent.Data) {
					t.Errorf("payload changed:\n got  %s\n sent %s", gotData, sentData)
				}
				got.Data, sent.Data = nil, nil
				if !reflect.DeepEqual(got, sent) {
					t.Errorf("round trip changed the event:\n got  %+v\n sent %+v", got, sent)
				}
			}
		})
	}
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func TestDuplicatePublishIsDropped(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	ev := hookRequested("run-dup")
	first, err := env.bus.Publish(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	second, err := env.bus.Publish(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	if first.Duplicate || !second.Duplicate {
		t.Fatalf("first duplicate=%v second duplicate=%v, want false then true", first.Duplicate, second.Duplicate)
	}
	s, _ := env.js.Stream(ctx, StreamHookCommands)
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages, want 1", info.State.Msgs)
	}
}

func TestHandlerErrorIsRetriedWithBackoffThenDeadLettered(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	var mu sync.Mutex
	var attempts []time.Time
	var served []string
	env.consume(t, hookSpec("retry"), func(ctx context.Context, ev events.Event) ([]events.Event, error) {
		mu.Lock()
		defer mu.Unlock()
		if ev.Subject == "run-bad" {
			attempts = append(attempts, time.Now())
			return nil, errors.New("database refused the connection")
		}
		served = append(served, ev.Subject)
		return nil, nil
	})
	bad := hookRequested("run-bad")
	if _, err := env.bus.Publish(ctx, bad); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a dead letter", func() bool { return len(env.deadLetters(t)) == 1 })
	mu.Lock()
	if len(attempts) != 3 {
		t.Errorf("handler ran %d times, want MaxDeliver=3", len(attempts))
	}
	for i := 1; i < len(attempts); i++ {
		if gap := attempts[i].Sub(attempts[i-1]); gap < 40*time.Millisecond {
			t.Errorf("redelivery %d came after %s, before the 50ms backoff", i, gap)
		}
	}
	mu.Unlock()
	dl := env.deadLetters(t)[0]
	if !strings.Contains(dl.Reason, "database refused the connection") || !strings.Contains(dl.Reason, "3 deliveries") {
		t.Errorf("reason %q lacks the error or the delivery count", dl.Reason)
	}
	if dl.Consumer != "retry" || dl.Stream != StreamHookCommands || dl.Deliveries != 3 {
		t.Errorf("dead letter origin = %s/%s after %d deliveries", dl.Stream, dl.Consumer, dl.Deliveries)
	}
	orig, err := cenats.Decode(ctx, &nats.Msg{Subject: dl.Subject, Header: nats.Header(dl.Headers), Data: dl.Data})
	if err != nil {
		t.Fatalf("the dead letter does not keep the original message: %v", err)
	}
	if orig.ID != bad.ID || orig.CorrelationID != "run-bad" {
		t.Errorf("dead letter kept id %s correlation %s", orig.ID, orig.CorrelationID)
	}

	// The consumer keeps serving after a poison message.
	if _, err := env.bus.Publish(ctx, hookRequested("run-good")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the next message", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(served) == 1 && served[0] == "run-good"
	})
}

func TestPermanentErrorAndPanicGoToDeadLetter(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	var calls atomic.Int32
	env.consume(t, hookSpec("permanent"), func(ctx context.Context, ev events.Event) ([]events.Event, error) {
		calls.Add(1)
		if ev.Subject == "run-panic" {
			panic("nil map in handler")
		}
		return nil, Permanentf("step kind %q is not supported", "teleport")
	})
	if _, err := env.bus.Publish(ctx, hookRequested("run-permanent")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a dead letter", func() bool { return len(env.deadLetters(t)) == 1 })
	if n := calls.Load(); n != 1 {
		t.Errorf("a permanent error was retried: %d calls", n)
	}
	if r := env.deadLetters(t)[0].Reason; !strings.Contains(r, "permanent error") || !strings.Contains(r, "teleport") {
		t.Errorf("reason = %q", r)
	}
	if _, err := env.bus.Publish(ctx, hookRequested("run-panic")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the panicking message in dead letter", func() bool { return len(env.deadLetters(t)) == 2 })
	if r := env.deadLetters(t)[1].Reason; !strings.Contains(r, "panicked: nil map in handler") {
		t.Errorf("reason = %q", r)
	}
}

func TestMalformedMessagesGoToDeadLetterWithReason(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	var handled atomic.Int32
	env.consume(t, hookSpec("malformed"), func(ctx context.Context, ev events.Event) ([]events.Event, error) {
		handled.Add(1)
		return nil, nil
	})
	valid, err := cenats.EncodeEvent(ctx, hookRequested("run-ok"))
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(name string, f func(m *nats.Msg)) *nats.Msg {
		m := nats.NewMsg(valid.Subject)
		for k, v := range valid.Header {
			m.Header[k] = append([]string(nil), v...)
		}
		m.Data = append([]byte(nil), valid.Data...)
		f(m)
		m.Header.Set(nats.MsgIdHdr, name)
		return m
	}
	cases := []struct {
		name, wantReason string
		msg              *nats.Msg
	}{
		{"no-headers", "missing attribute specversion", &nats.Msg{Subject: valid.Subject, Data: valid.Data}},
		{"invalid-json", "invalid JSON", mutate("invalid-json", func(m *nats.Msg) { m.Data = []byte(`{"runId": "run-ok",`) })},
		{"unknown-type", "unknown type", mutate("unknown-type", func(m *nats.Msg) { m.Header.Set("ce-type", "io.tidemark.hook.teleported.v1") })},
		{"schema", "schema violation data/timeout", mutate("schema", func(m *nats.Msg) {
			m.Data = []byte(strings.Replace(string(valid.Data), `"timeout":"30s"`, `"timeout":"30"`, 1))
		})},
		{"missing-field", "schema violation", mutate("missing-field", func(m *nats.Msg) { m.Data = []byte(`{"runId":"run-ok"}`) })},
		{"specversion", "unsupported specversion", mutate("specversion", func(m *nats.Msg) { m.Header.Set("ce-specversion", "0.3") })},
		{"no-id", "missing attribute id", mutate("no-id", func(m *nats.Msg) { m.Header.Del("ce-id") })},
		{"bad-time", "ce-time", mutate("bad-time", func(m *nats.Msg) { m.Header.Set("ce-time", "yesterday") })},
	}
	for _, c := range cases {
		if _, err := env.js.PublishMsg(ctx, c.msg); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	waitFor(t, "every malformed message in dead letter", func() bool { return len(env.deadLetters(t)) == len(cases) })
	dls := env.deadLetters(t)
	for i, c := range cases {
		if !strings.Contains(dls[i].Reason, c.wantReason) {
			t.Errorf("%s: reason %q does not say %q", c.name, dls[i].Reason, c.wantReason)
		}
		if dls[i].Deliveries != 1 {
			t.Errorf("%s: a malformed message was delivered %d times; retrying cannot fix it", c.name, dls[i].Deliveries)
		}
	}
	if n := handled.Load(); n != 0 {
		t.Fatalf("the handler saw %d malformed messages", n)
	}
	if _, err := env.js.PublishMsg(ctx, valid); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the valid message after the malformed ones", func() bool { return handled.Load() == 1 })
}

func TestLongHandlerIsHeartbeatedAndDeliveredOnce(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	var calls atomic.Int32
	spec := hookSpec("long")
	spec.AckWait = 300 * time.Millisecond
	finished := make(chan struct{})
	env.consume(t, spec, func(ctx context.Context, ev events.Event) ([]events.Event, error) {
		if calls.Add(1) == 1 {
			defer close(finished)
		}
		time.Sleep(3 * spec.AckWait)
		return nil, nil
	})
	if _, err := env.bus.Publish(ctx, hookRequested("run-long")); err != nil {
		t.Fatal(err)
	}
	<-finished
	// Long enough for a redelivery to show up had the heartbeat failed.
	time.Sleep(3 * spec.AckWait)
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want exactly once", n)
	}
	s, _ := env.js.Stream(ctx, StreamHookCommands)
	info, _ := s.Info(ctx)
	if info.State.Msgs != 0 {
		t.Fatalf("work queue still holds %d messages after the handler finished", info.State.Msgs)
	}
}

func TestStoppedMidHandlerIsRedeliveredOnRestart(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	spec := hookSpec("restart")
	spec.ShutdownGrace = 200 * time.Millisecond
	started := make(chan struct{})
	stop := env.consume(t, spec, func(ctx context.Context, ev events.Event) ([]events.Event, error) {
		close(started)
		<-ctx.Done() // a handler that cannot finish before shutdown
		return nil, ctx.Err()
	})
	sent := hookRequested("run-restart")
	if _, err := env.bus.Publish(ctx, sent); err != nil {
		t.Fatal(err)
	}
	<-started
	stop()

	got := make(chan events.Event, 1)
	env.consume(t, spec, func(ctx context.Context, ev events.Event) ([]events.Event, error) {
		got <- ev
		return nil, nil
	})
	select {
	case ev := <-got:
		if ev.ID != sent.ID {
			t.Fatalf("restarted consumer got %s, want %s", ev.ID, sent.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the message was not redelivered after the restart")
	}
	if n := len(env.deadLetters(t)); n != 0 {
		t.Fatalf("shutdown dead-lettered %d messages", n)
	}
}

func TestAbandonedMessageIsDeadLetteredAfterMaxDeliveries(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	spec := hookSpec("abandoned")
	spec.AckWait = 200 * time.Millisecond
	spec.MaxDeliver = 2
	// Two workers take the message and die without a word.
	cons, err := env.js.CreateOrUpdateConsumer(ctx, spec.Stream, jetstream.ConsumerConfig{
		Durable: spec.Name, AckPolicy: jetstream.AckExplicitPolicy, AckWait: spec.AckWait, MaxDeliver: spec.MaxDeliver,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.bus.Publish(ctx, hookRequested("run-abandoned")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < spec.MaxDeliver; i++ {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for range batch.Messages() {
			n++
		}
		if n != 1 {
			t.Fatalf("crashing worker %d got %d messages", i, n)
		}
	}
	var calls atomic.Int32
	env.consume(t, spec, func(ctx context.Context, ev events.Event) ([]events.Event, error) {
		calls.Add(1)
		return nil, nil
	})
	waitFor(t, "the abandoned message in dead letter", func() bool { return len(env.deadLetters(t)) == 1 })
	dl := env.deadLetters(t)[0]
	if !strings.Contains(dl.Reason, "never acknowledged") {
		t.Errorf("reason = %q", dl.Reason)
	}
	s, _ := env.js.Stream(ctx, StreamHookCommands)
	waitFor(t, "the command to leave the work queue", func() bool {
		info, _ := s.Info(ctx)
		return info.State.Msgs == 0
	})
	if calls.Load() != 0 {
		t.Fatalf("handler ran on a message past MaxDeliver")
	}
}

func TestHandlerResultsCarryCorrelationAndCausation(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	env.consume(t, hookSpec("results"), func(ctx context.Context, ev events.Event) ([]events.Event, error) {
		req, _ := events.As[events.HookRequested](ev)
		return []events.Event{{Subject: ev.Subject, Data: events.HookSucceeded{
			RunID: req.RunID, Step: req.Step, StartedAt: time.Now().UTC(), FinishedAt: time.Now().UTC(),
		}}}, nil
	})
	sent := hookRequested("run-results")
	if _, err := env.bus.Publish(ctx, sent); err != nil {
		t.Fatal(err)
	}
	s, _ := env.js.Stream(ctx, StreamEvents)
	var m *jetstream.RawStreamMsg
	waitFor(t, "the handler's result", func() bool {
		var err error
		d, _ := events.Lookup(events.HookSucceeded{}.EventType())
		m, err = s.GetLastMsgForSubject(ctx, d.Subject())
		return err == nil
	})
	res, err := cenats.Decode(ctx, &nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data})
	if err != nil {
		t.Fatal(err)
	}
	if res.CorrelationID != "run-results" || res.CausationID != sent.ID {
		t.Fatalf("result correlation=%q causation=%q, want run-results and %s", res.CorrelationID, res.CausationID, sent.ID)
	}
	if res.ID != resultID(sent, 0, res.Type()) {
		t.Fatalf("result id %s is not derived from its cause, so a redelivery would duplicate it", res.ID)
	}
}

func TestTopologyRoutesEveryTypeAndIsIdempotent(t *testing.T) {
	env := newTestEnv(t)
	topo := env.bus.Topology()
	for _, d := range events.All() {
		var matches []StreamSpec
		for _, s := range topo.Streams {
			for _, f := range s.Subjects {
				if subjectMatches(f, d.Subject()) {
					matches = append(matches, s)
				}
			}
		}
		if len(matches) != 1 {
			t.Errorf("%s (%s) is stored by %d streams, want exactly 1", d.Type, d.Subject(), len(matches))
			continue
		}
		wantWQ := d.Kind == events.Command
		if got := matches[0].Retention == WorkQueue; got != wantWQ {
			t.Errorf("%s is a %s but lands in %s (work queue: %v)", d.Type, d.Kind, matches[0].Name, got)
		}
	}
	ctx := context.Background()
	if err := env.bus.EnsureTopology(ctx); err != nil {
		t.Fatalf("second EnsureTopology: %v", err)
	}
	if err := env.bus.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	if err := env.js.DeleteStream(ctx, StreamVolumeCommands); err != nil {
		t.Fatal(err)
	}
	if err := env.bus.Ready(ctx); err == nil || !strings.Contains(err.Error(), StreamVolumeCommands) {
		t.Fatalf("Ready with a stream missing = %v, want an error naming %s", err, StreamVolumeCommands)
	}
}

func TestSubjectMatches(t *testing.T) {
	for _, c := range []struct {
		filter, subject string
		want            bool
	}{
		{"tidemark.cmd.hook.>", "tidemark.cmd.hook.requested.v1", true},
		{"tidemark.cmd.hook.>", "tidemark.cmd.hook", false},
		{"tidemark.cmd.hook.>", "tidemark.cmd.hookx.requested.v1", false},
		{"tidemark.*.hook.requested.v1", "tidemark.cmd.hook.requested.v1", true},
		{"tidemark.evt", "tidemark.evt", true},
		{"tidemark.evt", "tidemark.evt.x", false},
	} {
		if got := subjectMatches(c.filter, c.subject); got != c.want {
			t.Errorf("subjectMatches(%q, %q) = %v", c.filter, c.subject, got)
		}
	}
}

func TestConsumerSpecValidateNamesTheField(t *testing.T) {
	for field, spec := range map[string]ConsumerSpec{
		"Name":       {Stream: "S"},
		"Stream":     {Name: "n"},
		"AckWait":    {Name: "n", Stream: "S", AckWait: time.Millisecond},
		"MaxDeliver": {Name: "n", Stream: "S", MaxDeliver: -1},
	} {
		err := spec.withDefaults().Validate()
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: Validate() = %v, want an error naming %s", field, err, field)
		}
	}
}

func ExamplePermanent() {
	err := Permanent(fmt.Errorf("blueprint %q not found", "mongo"))
	fmt.Println(IsPermanent(fmt.Errorf("wrapped: %w", err)))
	// Output: true
}

// A consumer named after one instance, with InactiveThreshold, is removed
// by the server once nobody pulls from it; one without stays.
func TestInactiveInstanceConsumerIsRemoved(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	handler := func(context.Context, events.Event) ([]events.Event, error) { return nil, nil }
	gone := hookSpec("release-dead-instance")
	gone.InactiveThreshold = 500 * time.Millisecond
	d, _ := events.Lookup(events.HookReleaseRequested{}.EventType())
	gone.FilterSubjects = []string{d.Subject() + ".dead-instance"} // a work queue allows one unfiltered consumer
	stop := env.consume(t, gone, handler)
	kept := hookSpec("shared")
	kept.FilterSubjects = []string{d.Subject() + ".live-instance"}
	stopKept := env.consume(t, kept, handler)
	for _, name := range []string{gone.Name, kept.Name} {
		for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
			_, err := env.js.Consumer(ctx, StreamHookCommands, name)
			if err == nil {
				break
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("consumer %s was never made: %v", name, err)
			}
		}
	}
	stop()
	stopKept()
	stoppedAt := time.Now()
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := env.js.Consumer(ctx, StreamHookCommands, gone.Name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			t.Logf("consumer %s removed %v after its last pull", gone.Name, time.Since(stoppedAt).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer %s still there 15s after its last pull (InactiveThreshold 500ms): %v", gone.Name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := env.js.Consumer(ctx, StreamHookCommands, kept.Name); err != nil {
		t.Fatalf("consumer %s without InactiveThreshold: %v, want it kept", kept.Name, err)
	}
}

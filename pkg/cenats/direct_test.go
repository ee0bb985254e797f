package cenats

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tidemark-dev/tidemark/events"
)

// The direct paths (direct.go) must write and read exactly what the sdk-go
// event path does, or step aside for it.

// exampleEvents returns an event for every example payload of every type,
// with attributes varied in every way ToCloudEvent and sdk-go care about.
func exampleEvents(t testing.TB) []events.Event {
	t.Helper()
	loc := time.FixedZone("CET", 3600)
	var out []events.Event
	for _, d := range events.All() {
		exs, err := events.Examples(d.Type)
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range exs {
			base := events.Event{
				ID: fmt.Sprintf("0193a6f2-7c1e-7b3a-9d2e-%012d", i), Source: "tidemark/test",
				Subject: "shop/postgres", Time: time.Date(2026, 11, 22, 21, 4, 5, 250_000_000, time.UTC),
				CorrelationID: "run-1", Data: p,
			}
			out = append(out, base)
			for _, mut := range []func(*events.Event){
				func(e *events.Event) { e.Subject, e.CorrelationID = "", "" },
				func(e *events.Event) { e.CausationID = "cause-1" },
				func(e *events.Event) { e.Time = time.Date(2026, 1, 2, 3, 4, 5, 6, loc) },
				func(e *events.Event) { e.Time = time.Date(2026, 1, 2, 3, 4, 5, 0, time.Local) },
				func(e *events.Event) { e.Time = time.Time{} },
				func(e *events.Event) { e.Source = "https://tidemark.io/services/hookrunner?x=1#f" },
				func(e *events.Event) { e.Source = "urn:tidemark:test" },
				func(e *events.Event) { e.Source = "a b/ü" },
				func(e *events.Event) { e.Source = "%zz" },
				func(e *events.Event) { e.Source = " " },
				func(e *events.Event) { e.Source = "" },
				func(e *events.Event) { e.ID = "" },
				func(e *events.Event) { e.ID = " padded " },
				func(e *events.Event) { e.ID = "with space" },
				func(e *events.Event) { e.Subject = " padded" },
				func(e *events.Event) { e.Subject = "   " },
				func(e *events.Event) { e.CorrelationID = " odd value " },
			} {
				ev := base
				mut(&ev)
				out = append(out, ev)
			}
		}
	}
	return out
}

func sameMessage(t *testing.T, what string, direct, ref *nats.Msg) {
	t.Helper()
	if direct.Subject != ref.Subject || !bytes.Equal(direct.Data, ref.Data) || !reflect.DeepEqual(direct.Header, ref.Header) {
		t.Fatalf("%s: direct encoding differs from sdk-go's:\n  direct: %s %v %s\n  sdk-go: %s %v %s",
			what, direct.Subject, direct.Header, direct.Data, ref.Subject, ref.Header, ref.Data)
	}
}

func TestDirectEncodeMatchesSDK(t *testing.T) {
	ctx := context.Background()
	direct := 0
	for _, ev := range exampleEvents(t) {
		subject, err := events.SubjectOf(ev)
		if err != nil {
			t.Fatal(err)
		}
		what := fmt.Sprintf("%s id=%q source=%q subject=%q time=%v", ev.Type(), ev.ID, ev.Source, ev.Subject, ev.Time)
		ref, refErr := encodeSDK(ctx, ev, subject)
		msg, ok := encodeDirect(ctx, &ev, subject)
		if ok {
			direct++
			if refErr != nil {
				t.Fatalf("%s: encoded directly, but sdk-go refuses it: %v", what, refErr)
			}
			sameMessage(t, what, msg, ref)
		}
		// EncodeEvent as a whole: the same message, or the same error.
		got, err := EncodeEvent(ctx, ev)
		switch {
		case (err == nil) != (refErr == nil) || (err != nil && err.Error() != refErr.Error()):
			t.Fatalf("%s: EncodeEvent error %v, sdk-go path %v", what, err, refErr)
		case err == nil:
			sameMessage(t, what, got, ref)
		}
	}
	if direct == 0 {
		t.Fatal("no event took the direct path")
	}
}

// TestDirectEncodeTakesPlainEvents: what services publish goes direct.
func TestDirectEncodeTakesPlainEvents(t *testing.T) {
	for _, d := range events.All() {
		exs, _ := events.Examples(d.Type)
		for _, p := range exs {
			ev := events.New("tidemark/hookrunner", "shop/postgres", p, time.Now())
			ev.CorrelationID, ev.CausationID = "run-1", "0193a6f2-7c1e-7b3a-9d2e-4f5a6b7c8d9e"
			subject, _ := events.SubjectOf(ev)
			if _, ok := encodeDirect(context.Background(), &ev, subject); !ok {
				t.Errorf("%s: a plain event does not take the direct path", d.Type)
			}
		}
	}
}

func TestDirectEncodeLeavesInvalidPayloadsToSDK(t *testing.T) {
	ev := events.New("tidemark/test", "shop/postgres", events.BackupRequested{Application: ""}, time.Now())
	if _, ok := encodeDirect(context.Background(), &ev, "x"); ok {
		t.Fatal("an invalid payload took the direct path")
	}
	_, err := EncodeEvent(context.Background(), ev)
	if err == nil || !errors.Is(err, events.ErrInvalidEvent) || !strings.Contains(err.Error(), "/application") {
		t.Fatalf("EncodeEvent = %v, want ToCloudEvent's error naming /application", err)
	}
}

// messageVariants returns msg and copies of it changed in the ways a
// foreign producer, or JetStream's message-get API, may change headers.
func messageVariants(msg *nats.Msg) []*nats.Msg {
	clone := func(edit func(h nats.Header), data []byte) *nats.Msg {
		m := &nats.Msg{Subject: msg.Subject, Header: nats.Header{}, Data: data}
		for k, v := range msg.Header {
			m.Header[k] = append([]string(nil), v...)
		}
		edit(m.Header)
		return m
	}
	set := func(k, v string) func(nats.Header) { return func(h nats.Header) { h[k] = []string{v} } }
	del := func(k string) func(nats.Header) { return func(h nats.Header) { delete(h, k) } }
	out := []*nats.Msg{msg}
	for _, edit := range []func(nats.Header){
		func(nats.Header) {},
		func(h nats.Header) { // canonical case, as JetStream's get API returns them
			for k, v := range h {
				delete(h, k)
				h[strings.ToUpper(k[:1])+k[1:]] = v
			}
		},
		func(h nats.Header) { h["Ce-Id"] = []string{"other"} },
		func(h nats.Header) { h["ce-id"] = []string{"first", "second"} },
		set("ce-id", " padded "), set("ce-id", ""), del("ce-id"),
		set("ce-source", "%zz"), set("ce-source", "a b"), set("ce-source", "https://x/y"), del("ce-source"),
		set("ce-type", "io.tidemark.nope.v1"), set("ce-type", " io.tidemark.hook.requested.v1"), del("ce-type"),
		set("ce-time", "yesterday"), set("ce-time", "0001-01-01T00:00:00Z"), set("ce-time", "2026-11-22T22:04:05.5+01:00"), del("ce-time"),
		set("ce-subject", " s "), set("ce-subject", ""), del("ce-subject"),
		set("content-type", "application/json; charset=utf-8"), set("content-type", "text/plain"), set("content-type", " application/json"), del("content-type"),
		set("ce-dataschema", "https://tidemark.io/schemas/x.json"), set("ce-foo", "bar"), set("ce-Bad_Name", "x"),
		set("ce-correlationid", ""), set("ce-causationid", "c"), del("ce-correlationid"),
		set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
		set("Nats-Msg-Id", "x"),
	} {
		out = append(out, clone(edit, msg.Data))
	}
	for _, data := range [][]byte{nil, []byte(`{`), []byte(`{}`), []byte(`"x"`), []byte(`{"a":1}`)} {
		out = append(out, clone(func(nats.Header) {}, data))
	}
	return out
}

func sameDecoding(t *testing.T, msg *nats.Msg) {
	t.Helper()
	ctx := context.Background()
	ev, ok, err := decodeDirect(ctx, msg)
	if !ok {
		return
	}
	ref, refErr := decodeSDK(ctx, msg)
	if !sameError(err, refErr) {
		t.Fatalf("direct decoding error %v, sdk-go path %v\n  headers %v\n  data %q", err, refErr, msg.Header, msg.Data)
	}
	if err == nil && !reflect.DeepEqual(ev, ref) {
		t.Fatalf("direct decoding differs from sdk-go's:\n  direct: %+v\n  sdk-go: %+v\n  headers %v", ev, ref, msg.Header)
	}
}

func TestDirectDecodeMatchesSDK(t *testing.T) {
	ctx := context.Background()
	direct := 0
	for _, ev := range exampleEvents(t) {
		subject, _ := events.SubjectOf(ev)
		msg, err := encodeSDK(ctx, ev, subject)
		if err != nil {
			continue
		}
		if _, ok, _ := decodeDirect(ctx, msg); !ok {
			t.Errorf("%s as sdk-go encodes it does not take the direct path: %v", ev.Type(), msg.Header)
		}
		for _, m := range messageVariants(msg) {
			if _, ok, _ := decodeDirect(ctx, m); ok {
				direct++
			}
			sameDecoding(t, m)
			// Decode as a whole agrees with the sdk-go path, error for error
			// (which is random when a header comes in two spellings).
			got, err := Decode(ctx, m)
			if m.Header.Get(HeaderSpecVersion) != "" && !twoSpellings(m.Header) {
				ref, refErr := decodeSDK(ctx, m)
				if !sameError(err, refErr) || !reflect.DeepEqual(got, ref) {
					t.Fatalf("Decode = %+v, %v; sdk-go path = %+v, %v\n  headers %v", got, err, ref, refErr, m.Header)
				}
			}
		}
	}
	if direct == 0 {
		t.Fatal("no message took the direct path")
	}
}

// sameError compares decoding errors. The reference validator lists
// several additional properties in map order, so a schema violation is
// compared by its problem and field.
func sameError(a, b error) bool {
	var da, db *events.DecodeError
	if errors.As(a, &da) && errors.As(b, &db) && da.Problem == events.ProblemSchemaViolation {
		return da.Problem == db.Problem && da.Attribute == db.Attribute
	}
	return reflect.DeepEqual(a, b)
}

func twoSpellings(h nats.Header) bool {
	seen := map[string]bool{}
	for k := range h {
		if seen[strings.ToLower(k)] {
			return true
		}
		seen[strings.ToLower(k)] = true
	}
	return false
}

func FuzzDirectDecodeMatchesSDK(f *testing.F) {
	msg, err := EncodeEvent(context.Background(), sample())
	if err != nil {
		f.Fatal(err)
	}
	var b strings.Builder
	for k, v := range msg.Header {
		b.WriteString(k + ":" + strings.Join(v, ",") + "\n")
	}
	f.Add(b.String(), msg.Data)
	hook, _ := json.Marshal(events.HookFailed{RunID: "r", Step: "s", Error: "e"})
	f.Add("ce-specversion:1.0\nce-id:1\nce-source:/x\nce-type:io.tidemark.hook.failed.v1\nce-time:2026-11-22T21:04:05Z\n", hook)
	f.Fuzz(func(t *testing.T, headers string, data []byte) {
		m := nats.NewMsg("tidemark.fuzz")
		for _, line := range strings.Split(headers, "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				m.Header.Add(k, v)
			}
		}
		m.Data = data
		if header(m, HeaderSpecVersion) != "1.0" {
			return
		}
		sameDecoding(t, m)
	})
}

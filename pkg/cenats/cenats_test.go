package cenats

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tidemark-dev/tidemark/events"
)

func sample() events.Event {
	ev := events.New("tidemark/test", "shop/postgres", events.BackupRequested{Application: "shop/postgres"}, time.Date(2026, 11, 22, 21, 0, 0, 0, time.UTC))
	ev.CorrelationID = "run-1"
	return ev
}

func TestBinaryModeHeaders(t *testing.T) {
	msg, err := EncodeEvent(context.Background(), sample())
	if err != nil {
		t.Fatal(err)
	}
	if msg.Subject != "tidemark.cmd.backup.requested.v1" {
		t.Errorf("subject %s", msg.Subject)
	}
	if msg.Header.Get(nats.MsgIdHdr) != msg.Header.Get(HeaderID) || msg.Header.Get(HeaderID) == "" {
		t.Errorf("Nats-Msg-Id %q must equal ce-id %q", msg.Header.Get(nats.MsgIdHdr), msg.Header.Get(HeaderID))
	}
	if strings.Contains(string(msg.Data), "specversion") {
		t.Errorf("body holds attributes, so this is structured mode: %s", msg.Data)
	}
	var body map[string]any
	if err := json.Unmarshal(msg.Data, &body); err != nil || body["application"] != "shop/postgres" {
		t.Errorf("body %s is not the payload", msg.Data)
	}
}

// Some NATS paths (JetStream's message-get API) canonicalise header names
// to Ce-Specversion; decoding must not depend on their case.
func TestDecodeIgnoresHeaderCase(t *testing.T) {
	msg, err := EncodeEvent(context.Background(), sample())
	if err != nil {
		t.Fatal(err)
	}
	upper := nats.NewMsg(msg.Subject)
	for k, v := range msg.Header {
		upper.Header[strings.ToUpper(k[:1])+k[1:]] = v
	}
	upper.Data = msg.Data
	ev, err := Decode(context.Background(), upper)
	if err != nil {
		t.Fatal(err)
	}
	if ev.CorrelationID != "run-1" || ev.Subject != "shop/postgres" {
		t.Fatalf("decoded %+v", ev)
	}
}

func TestDecodeAcceptsStructuredMode(t *testing.T) {
	ce, err := sample().ToCloudEvent()
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(ce)
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg("tidemark.cmd.backup.requested.v1")
	msg.Header.Set("content-type", "application/cloudevents+json")
	msg.Data = body
	ev, err := Decode(context.Background(), msg)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := events.As[events.BackupRequested](ev); !ok || p.Application != "shop/postgres" {
		t.Fatalf("decoded %+v", ev)
	}
}

func FuzzDecode(f *testing.F) {
	msg, err := EncodeEvent(context.Background(), sample())
	if err != nil {
		f.Fatal(err)
	}
	enc := func(h nats.Header) string {
		var b strings.Builder
		for k, v := range h {
			b.WriteString(k + ":" + strings.Join(v, ",") + "\n")
		}
		return b.String()
	}
	f.Add(enc(msg.Header), msg.Data)
	f.Add("ce-specversion:1.0\nce-type:io.tidemark.hook.failed.v1\n", []byte(`{"runId":"r"}`))
	f.Add("content-type:application/cloudevents+json\n", []byte(`{"specversion":"1.0"}`))
	f.Fuzz(func(t *testing.T, headers string, data []byte) {
		m := nats.NewMsg("tidemark.fuzz")
		for _, line := range strings.Split(headers, "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok {
				m.Header.Add(k, v)
			}
		}
		m.Data = data
		ev, err := Decode(context.Background(), m)
		if err != nil {
			if !events.IsDecodeError(err) {
				t.Fatalf("decode failure is not a DecodeError: %T %v", err, err)
			}
			return
		}
		// Whatever decodes must encode again and decode to the same event.
		again, err := EncodeEvent(context.Background(), ev)
		if err != nil {
			t.Fatalf("decoded event does not encode: %v", err)
		}
		back, err := Decode(context.Background(), again)
		if err != nil {
			t.Fatalf("re-encoded event does not decode: %v", err)
		}
		if back.ID != ev.ID || back.Type() != ev.Type() || !back.Time.Equal(ev.Time) {
			t.Fatalf("round trip changed %+v into %+v", ev, back)
		}
	})
}

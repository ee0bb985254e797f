package events

import (
	"encoding/json"
	"testing"
)

func BenchmarkValidatePayload(b *testing.B) {
	ex, err := Examples(HookRequested{}.EventType())
	if err != nil {
		b.Fatal(err)
	}
	data, _ := json.Marshal(ex[0])
	b.ReportAllocs()
	for b.Loop() {
		if err := ValidatePayload(HookRequested{}.EventType(), data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodePayload(b *testing.B) {
	ex, err := Examples(HookRequested{}.EventType())
	if err != nil {
		b.Fatal(err)
	}
	data, _ := json.Marshal(ex[0])
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodePayload(HookRequested{}.EventType(), data); err != nil {
			b.Fatal(err)
		}
	}
}

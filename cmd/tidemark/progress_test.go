package main

import (
	"strings"
	"testing"
	"time"
)

// A long transfer shows its rate and time left, drawn every two seconds at
// most, and always at the end.
func TestTransferMeter(t *testing.T) {
	m := newTransferMeter()
	t0 := time.Date(2026, 11, 23, 2, 0, 0, 0, time.UTC)
	const total = 100 << 20
	if got := m.line(t0, "data", 0, total, 0, 10); !strings.Contains(got, "0%") || strings.Contains(got, "ETA") {
		t.Errorf("first report %q: want 0%% and no rate yet", got)
	}
	if got := m.line(t0.Add(time.Second), "data", 10<<20, total, 1, 10); got != "" {
		t.Errorf("a report 1 s after the last drawn one was drawn: %q", got)
	}
	got := m.line(t0.Add(2*time.Second), "data", 20<<20, total, 2, 10)
	if !strings.Contains(got, "20%") || !strings.Contains(got, "10.0 MiB/s") || !strings.Contains(got, "ETA 8s") {
		t.Errorf("report at 2 s = %q, want 20%%, 10.0 MiB/s, ETA 8s", got)
	}
	if got := m.line(t0.Add(2500*time.Millisecond), "data", total, total, 10, 10); !strings.Contains(got, "100%") || strings.Contains(got, "ETA") {
		t.Errorf("final report %q: want drawn at 100%% without an ETA", got)
	}
	if got := m.line(t0.Add(2500*time.Millisecond), "logs", 5, 10, 1, 2); got == "" {
		t.Error("another volume's first report was swallowed")
	}
}

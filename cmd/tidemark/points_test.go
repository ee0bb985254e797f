package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestPointsListAndShowWhatTheCatalogRecorded(t *testing.T) {
	p := startTidemark(t, "serve", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--log-format", "json")
	natsURL := p.logField(t, "embedded NATS started", "url")
	p.logField(t, "tidemark serving", "http")
	ctx := context.Background()
	for _, e := range []struct{ typ, data string }{
		{"io.tidemark.volume.exported.v1", `{"runId":"run-9","volume":"data","sourceKind":"snapshot","manifestId":"k1","files":10,"bytes":3145728,"bytesUploaded":0,"startedAt":"2026-11-22T21:00:00Z","finishedAt":"2026-11-22T21:01:00Z"}`},
		{"io.tidemark.backup.completed.v1", `{"runId":"run-9","application":"shop/postgres","restorePointId":"rp-9","startedAt":"2026-11-22T21:00:00Z","finishedAt":"2026-11-22T21:02:00Z","freezeWindow":"2s","bytesRead":3145728,"bytesUploaded":0}`},
	} {
		if out, err := runTidemark(t, ctx, "events", "publish", e.typ, "--nats-url", natsURL, "--subject", "shop/postgres", "--correlation-id", "run-9", "--data", e.data); err != nil {
			t.Fatalf("publish %s: %v\n%s", e.typ, err, out)
		}
	}
	var out string
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		out, err = runTidemark(t, ctx, "points", "list", "--nats-url", natsURL, "-o", "json")
		if err != nil {
			t.Fatalf("points list: %v\n%s", err, out)
		}
		if strings.Contains(out, "rp-9") || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	var points []map[string]any
	if err := json.Unmarshal([]byte(out), &points); err != nil || len(points) != 1 || points[0]["id"] != "rp-9" {
		t.Fatalf("points list -o json printed %s (%v)", out, err)
	}
	text, err := runTidemark(t, ctx, "points", "list", "--nats-url", natsURL, "--app", "shop/postgres")
	if err != nil || !strings.Contains(text, "rp-9") || !strings.Contains(text, "3.0 MiB") || !strings.Contains(text, "crash") {
		t.Fatalf("points list printed %q, %v", text, err)
	}
	show, err := runTidemark(t, ctx, "points", "show", "rp-9", "--nats-url", natsURL)
	if err != nil || !strings.Contains(show, `"manifestId": "k1"`) {
		t.Fatalf("points show printed %q, %v", show, err)
	}
	if _, err := runTidemark(t, ctx, "points", "show", "rp-404", "--nats-url", natsURL); err == nil || !strings.Contains(err.Error(), "restore point not found") {
		t.Fatalf("showing a missing point: %v", err)
	}
}

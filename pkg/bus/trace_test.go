package bus

import (
	"context"
	"testing"

	"github.com/tidemark-dev/tidemark/events"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func TestConsumerSpanIsAChildOfTheProducerSpan(t *testing.T) {
	exporter := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	env := newTestEnv(t, WithTracerProvider(tp))

	handlerSpan := make(chan trace.SpanContext, 1)
	env.consume(t, hookSpec("traced"), func(ctx context.Context, ev events.Event) ([]events.Event, error) {
		handlerSpan <- trace.SpanContextFromContext(ctx)
		return nil, nil
	})
	ctx, root := tp.Tracer("test").Start(context.Background(), "backup run")
	if _, err := env.bus.Publish(ctx, hookRequested("run-traced")); err != nil {
		t.Fatal(err)
	}
	root.End()
	got := <-handlerSpan
	if got.TraceID() != root.SpanContext().TraceID() {
		t.Fatalf("handler runs in trace %s, producer in %s", got.TraceID(), root.SpanContext().TraceID())
	}
	waitFor(t, "the process span to end", func() bool {
		for _, s := range exporter.GetSpans() {
			if s.Name == "process io.tidemark.hook.requested.v1" {
				return true
			}
		}
		return false
	})
	var publish, process tracetest.SpanStub
	for _, s := range exporter.GetSpans() {
		switch s.Name {
		case "publish io.tidemark.hook.requested.v1":
			publish = s
		case "process io.tidemark.hook.requested.v1":
			process = s
		}
	}
	if publish.SpanKind != trace.SpanKindProducer || process.SpanKind != trace.SpanKindConsumer {
		t.Errorf("span kinds publish=%v process=%v", publish.SpanKind, process.SpanKind)
	}
	if process.Parent.SpanID() != publish.SpanContext.SpanID() {
		t.Fatalf("process span's parent is %s, want the publish span %s", process.Parent.SpanID(), publish.SpanContext.SpanID())
	}
}

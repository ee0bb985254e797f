package bus

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	published    *prometheus.CounterVec
	duplicates   *prometheus.CounterVec
	handled      *prometheus.CounterVec
	handlerTime  *prometheus.HistogramVec
	deadLettered *prometheus.CounterVec
}

func newMetrics(r prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tidemark_bus_published_total", Help: "Events published and acknowledged by JetStream, by type.",
		}, []string{"type"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tidemark_bus_duplicates_total", Help: "Publishes JetStream dropped as duplicates (same ce-id), by type.",
		}, []string{"type"}),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tidemark_bus_handled_total", Help: "Messages handled by a consumer, by outcome (ack, retry, deadletter, shutdown).",
		}, []string{"consumer", "outcome"}),
		handlerTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tidemark_bus_handler_seconds", Help: "Time a handler took, by consumer.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"consumer"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tidemark_bus_deadlettered_total", Help: "Messages set aside in the dead-letter stream, by consumer.",
		}, []string{"consumer"}),
	}
	if r == nil {
		return m, nil
	}
	var err error
	if m.published, err = register(r, m.published); err != nil {
		return nil, err
	}
	if m.duplicates, err = register(r, m.duplicates); err != nil {
		return nil, err
	}
	if m.handled, err = register(r, m.handled); err != nil {
		return nil, err
	}
	if m.handlerTime, err = register(r, m.handlerTime); err != nil {
		return nil, err
	}
	if m.deadLettered, err = register(r, m.deadLettered); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered under
// the same name so several buses in one process share their counters.
func register[C prometheus.Collector](r prometheus.Registerer, c C) (C, error) {
	if err := r.Register(c); err != nil {
		var already prometheus.AlreadyRegisteredError
		if errors.As(err, &already) {
			if existing, ok := already.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

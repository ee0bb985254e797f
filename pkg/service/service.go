// Package service is how Tidemark's services plug into one binary: each
// registers a constructor under its name, and `tidemark serve --services`
// builds and runs any subset of them against shared infrastructure.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
)

// Service is one Tidemark service. Run blocks until ctx is done or the
// service fails; on ctx done it stops taking work, settles what it holds
// and returns nil.
type Service interface {
	Run(ctx context.Context) error
}

// Deps is the infrastructure every service may use. Services take the
// narrow interfaces they need from it.
type Deps struct {
	Bus     *bus.Bus
	Logger  *slog.Logger
	DataDir string
	Metrics prometheus.Registerer
	// InstanceID names this process among its peers (commands that must
	// reach this process, such as lock releases, are routed by it).
	InstanceID string
	// AppsDir holds the Application files of the local platform.
	AppsDir string
	// SnapshotMaxAge is how old a leftover snapshot may be before the
	// snapshotter's startup sweep deletes it (zero: its default).
	SnapshotMaxAge time.Duration
	// Coordinator tunes the coordinator's clocks (zero: its defaults).
	Coordinator CoordinatorTuning
	// Platform is where applications run: PlatformLocal (also when empty)
	// or PlatformKube, with Kube set.
	Platform string
	// Kube is the Kubernetes platform, when Platform is PlatformKube.
	Kube *kube.Platform
	// MoverConcurrency is how many volumes a data mover moves at once
	// (zero: its default).
	MoverConcurrency int
	// Mover shapes the data mover's mover pods on Kubernetes (image,
	// resources, placement); the data mover adds the repository's
	// settings and credentials. An empty Image means the data mover's own.
	Mover kube.MoverOptions
	// MoverLimit bounds the mover pods one data mover process has at once
	// on Kubernetes (zero: no bound).
	MoverLimit int
}

// Platforms `tidemark serve --platform` offers.
const (
	PlatformLocal = "local"
	PlatformKube  = "kube"
)

// OnKube reports whether the services should use the Kubernetes platform.
func (d Deps) OnKube() bool { return d.Platform == PlatformKube }

// CoordinatorTuning bounds how long the coordinator waits for answers.
type CoordinatorTuning struct {
	// AnswerGrace is added to a step's own timeout before the step counts
	// as timed out (its answer lost, or its service gone).
	AnswerGrace time.Duration
	// InverseTimeout bounds each attempt of an inverse step.
	InverseTimeout time.Duration
	// ExportTimeout bounds each volume export.
	ExportTimeout time.Duration
}

// Factory builds a service from its dependencies.
type Factory func(Deps) (Service, error)

// Planned lists the services of Tidemark's design; a name here that is not
// registered is one this build does not have yet.
var Planned = []string{"scheduler", "coordinator", "hookrunner", "snapshotter", "datamover", "catalog"}

var (
	mu       sync.Mutex
	registry = map[string]Factory{}
)

// Register makes a service available to `tidemark serve`. It is called from
// the service package's init.
func Register(name string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := registry[name]; dup {
		panic("service registered twice: " + name)
	}
	registry[name] = f
}

// Registered returns the names of every registered service, sorted.
func Registered() []string {
	mu.Lock()
	defer mu.Unlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Resolve turns a --services list into registered names; "all" means
// every registered service.
func Resolve(requested []string) ([]string, error) {
	known := Registered()
	var out []string
	for _, r := range requested {
		switch {
		case r == "all":
			out = append(out, known...)
		case r == "none":
			// Only the infrastructure: an embedded NATS server for other
			// processes, and the health endpoints.
		case slices.Contains(known, r):
			out = append(out, r)
		case slices.Contains(Planned, r):
			return nil, fmt.Errorf("service %q is part of Tidemark's design but not built into this version yet (available: %s)", r, describe(known))
		default:
			return nil, fmt.Errorf("unknown service %q (available: %s)", r, describe(known))
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func describe(names []string) string {
	if len(names) == 0 {
		return "none yet"
	}
	return fmt.Sprint(names)
}

// Build constructs the named services.
func Build(names []string, deps Deps) (map[string]Service, error) {
	mu.Lock()
	defer mu.Unlock()
	out := map[string]Service{}
	for _, n := range names {
		f, ok := registry[n]
		if !ok {
			return nil, fmt.Errorf("service %q is not registered", n)
		}
		s, err := f(deps)
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", n, err)
		}
		out[n] = s
	}
	return out, nil
}

// RunAll runs every service until ctx is done or one fails; a failure stops
// the others. It returns when all have returned; with no services, when ctx
// is done.
func RunAll(ctx context.Context, services map[string]Service, log *slog.Logger) error {
	if len(services) == 0 {
		<-ctx.Done()
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(services))
	for name, s := range services {
		go func() {
			log.Info("service starting", "service", name)
			err := s.Run(ctx)
			if err != nil && !errors.Is(err, context.Canceled) {
				log.Error("service failed", "service", name, "err", err)
				cancel()
				errs <- fmt.Errorf("service %s: %w", name, err)
				return
			}
			log.Info("service stopped", "service", name)
			errs <- nil
		}()
	}
	var all []error
	for range services {
		if err := <-errs; err != nil {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}

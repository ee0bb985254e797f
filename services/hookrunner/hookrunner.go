// Package hookrunner runs rendered blueprint steps against applications and
// reports each result as an event. It holds session-bound locks (FLUSH
// TABLES WITH READ LOCK, pg_backup_start) across step boundaries on a live
// connection until the matching release arrives, and releases them itself
// when no release comes before the hold deadline (the dead man's switch).
package hookrunner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/application"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/platform"
)

// Name is the service's name in `tidemark serve --services`.
const Name = "hookrunner"

// ReleaseConsumerInactive is how long an instance's release consumer
// outlives the instance.
const ReleaseConsumerInactive = time.Hour

// DefaultHoldFor bounds a held lock when the command names no holdFor.
const DefaultHoldFor = 60 * time.Second

// Config configures a hookrunner.
type Config struct {
	// InstanceID names this instance; releases are routed to it. It must be
	// stable for as long as it holds sessions.
	InstanceID string
	Apps       application.Source
	Exec       platform.Executor
	// Steps runs the step kinds a platform adds to blueprints (scale and
	// apply on Kubernetes). Nil: those kinds fail, naming the fix
	// (`tidemark serve --platform kube`).
	Steps platform.StepRunner
	// Namespace returns an application's namespace: where steps act when
	// their spec names none, and where an exec target given as a bare pod
	// name is. Nil on the local platform, which has no namespaces.
	Namespace func(application string) (string, error)
	// Concurrency is how many steps run at once.
	Concurrency int
	// ReleaseTimeout bounds running release statements.
	ReleaseTimeout time.Duration
	// HoldHeartbeat is how often a held lock is reported (hook.progress).
	HoldHeartbeat time.Duration
	// LivenessTTL is how long this instance counts as alive after it last
	// said so, every LivenessInterval; another instance then answers for
	// the locks it held (liveness.go).
	LivenessTTL, LivenessInterval time.Duration
	// ArtifactWait bounds how long a restore's dump step waits for its
	// artifact to start arriving from the data mover (which may be busy
	// with other work items first). Default 30 minutes.
	ArtifactWait time.Duration
	Logger       *slog.Logger
	Now          func() time.Time
}

// Bus is what the hookrunner needs of the bus.
type Bus interface {
	bus.Publisher
	bus.Consumer
	bus.KeyValues
	bus.ObjectStores
	bus.Pipes
}

// Service is a hookrunner instance.
type Service struct {
	cfg      Config
	bus      Bus
	kv       bus.KV
	results  *bus.Results
	releases *bus.Results

	mu    sync.Mutex
	holds map[holdKey]*hold
}

var instanceIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// New returns a hookrunner.
func New(cfg Config, b Bus) (*Service, error) {
	if !instanceIDPattern.MatchString(cfg.InstanceID) {
		return nil, fmt.Errorf("hookrunner: instance id %q must be letters, digits, _ or - (it becomes a NATS subject token)", cfg.InstanceID)
	}
	if cfg.Apps == nil || cfg.Exec == nil {
		return nil, errors.New("hookrunner: Apps and Exec are required")
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	if cfg.ReleaseTimeout <= 0 {
		cfg.ReleaseTimeout = 30 * time.Second
	}
	if cfg.HoldHeartbeat <= 0 {
		cfg.HoldHeartbeat = 5 * time.Second
	}
	if cfg.ArtifactWait <= 0 {
		cfg.ArtifactWait = 30 * time.Minute
	}
	if cfg.LivenessTTL <= 0 {
		cfg.LivenessTTL = DefaultLivenessTTL
	}
	if cfg.LivenessInterval <= 0 {
		cfg.LivenessInterval = DefaultLivenessInterval
	}
	if cfg.LivenessInterval >= cfg.LivenessTTL {
		return nil, fmt.Errorf("hookrunner: liveness interval %s must be shorter than its TTL %s", cfg.LivenessInterval, cfg.LivenessTTL)
	}
	if cfg.Namespace != nil {
		cfg.Exec = inNamespace{next: cfg.Exec, namespace: cfg.Namespace}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Service{cfg: cfg, bus: b, holds: map[holdKey]*hold{}}, nil
}

func (s *Service) requestConsumer() bus.ConsumerSpec {
	d, _ := events.Lookup(events.HookRequested{}.EventType())
	return bus.ConsumerSpec{
		Name:           "hookrunner",
		Stream:         bus.StreamHookCommands,
		FilterSubjects: []string{d.Subject()},
		AckWait:        30 * time.Second,
		MaxDeliver:     5,
		Concurrency:    s.cfg.Concurrency,
	}
}

func (s *Service) releaseConsumer() bus.ConsumerSpec {
	d, _ := events.Lookup(events.HookReleaseRequested{}.EventType())
	return bus.ConsumerSpec{
		Name:           "hookrunner-release-" + s.cfg.InstanceID,
		Stream:         bus.StreamHookCommands,
		FilterSubjects: []string{d.Subject() + "." + s.cfg.InstanceID},
		AckWait:        30 * time.Second,
		MaxDeliver:     5,
		Concurrency:    s.cfg.Concurrency,
		// On Kubernetes every pod is a new instance: without this, each
		// pod ever run would leave its consumer behind. Its holds are
		// answered for by the others (liveness.go) long before.
		InactiveThreshold: ReleaseConsumerInactive,
	}
}

// Run consumes step and release commands until ctx is done, then releases
// every lock it still holds: a lock must never outlive its holder's intent.
func (s *Service) Run(ctx context.Context) error {
	kv, err := s.bus.KeyValue(ctx, bus.BucketHooks)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	s.kv = kv
	s.results = bus.NewResults(kv, "result")
	s.releases = bus.NewResults(kv, "release")
	if err := s.beat(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("hookrunner: recording this instance alive: %w", err)
	}
	if err := s.sweepOrphans(ctx, true); err != nil {
		s.cfg.Logger.Warn("looking for locks of lost hookrunners", "err", err)
	}
	liveCtx, stopLiveness := context.WithCancel(context.WithoutCancel(ctx))
	liveDone := make(chan struct{})
	go func() { defer close(liveDone); s.keepAlive(liveCtx) }()
	defer func() { stopLiveness(); <-liveDone }()
	errs := make(chan error, 2)
	go func() { errs <- s.bus.Consume(ctx, s.requestConsumer(), s.handleRequest) }()
	go func() { errs <- s.bus.Consume(ctx, s.releaseConsumer(), s.handleRelease) }()
	err = errors.Join(<-errs, <-errs)
	s.releaseAll("shutdown")
	return err
}

// handleRequest runs one step. A step that fails is a result (hook.failed),
// not a handler error: only trouble with Tidemark's own infrastructure is
// retried by redelivery.
func (s *Service) handleRequest(ctx context.Context, ev events.Event) ([]events.Event, error) {
	req, ok := events.As[events.HookRequested](ev)
	if !ok {
		return nil, bus.Permanentf("hookrunner: unexpected %s", ev.Type())
	}
	if p, done, err := s.results.Load(ctx, req.IdempotencyKey); err != nil {
		return nil, err
	} else if done {
		s.cfg.Logger.Info("step already ran; repeating its result", "run", req.RunID, "step", req.Step)
		return []events.Event{{Subject: ev.Subject, Data: p}}, nil
	}
	started := s.cfg.Now().UTC()
	result := s.runStep(ctx, req, started)
	if ctx.Err() != nil {
		// Shutting down mid-step: let the command be redelivered rather
		// than record a failure the step did not earn.
		if h := s.takeHold(holdKey{req.RunID, req.Step}); h != nil {
			h.session.Close()
		}
		return nil, ctx.Err()
	}
	if err := s.results.Store(ctx, req.IdempotencyKey, result); err != nil {
		return nil, fmt.Errorf("storing the result of %s/%s: %w", req.RunID, req.Step, err)
	}
	return []events.Event{{Subject: ev.Subject, Data: result}}, nil
}

func failed(req events.HookRequested, permanent bool, format string, args ...any) events.HookFailed {
	return events.HookFailed{RunID: req.RunID, Step: req.Step, Error: fmt.Sprintf(format, args...), Permanent: permanent}
}

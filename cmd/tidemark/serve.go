package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"

	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/natsserver"
	"github.com/tidemark-dev/tidemark/pkg/service"
	_ "github.com/tidemark-dev/tidemark/services/catalog" // registers the service
	_ "github.com/tidemark-dev/tidemark/services/coordinator"
	_ "github.com/tidemark-dev/tidemark/services/datamover"
	_ "github.com/tidemark-dev/tidemark/services/hookrunner" // registers the service
	_ "github.com/tidemark-dev/tidemark/services/snapshotter"
	// Also registers the Kubernetes step kinds (scale, apply), so blueprints using them lint.
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
)

type natsOptions struct {
	url, creds, tlsCA, tlsCert, tlsKey string
}

func (o *natsOptions) register(cmd *cobra.Command, defaultURL, urlHelp string) {
	f := cmd.Flags()
	f.StringVar(&o.url, "nats-url", defaultURL, urlHelp)
	f.StringVar(&o.creds, "nats-creds", "", "NATS credentials file (JWT and NKey seed)")
	f.StringVar(&o.tlsCA, "nats-tls-ca", "", "CA bundle to verify the NATS servers")
	f.StringVar(&o.tlsCert, "nats-tls-cert", "", "client certificate for NATS (with --nats-tls-key)")
	f.StringVar(&o.tlsKey, "nats-tls-key", "", "client key for NATS (with --nats-tls-cert)")
}

func (o *natsOptions) dialConfig(name string) bus.DialConfig {
	return bus.DialConfig{URL: o.url, CredsFile: o.creds, TLSCAFile: o.tlsCA, TLSCertFile: o.tlsCert, TLSKeyFile: o.tlsKey, Name: name}
}

type serveOptions struct {
	services         []string
	dataDir          string
	listen           string
	natsListen       string
	nats             natsOptions
	replicas         int
	eventsRetention  time.Duration
	shutdownTimeout  time.Duration
	instanceID       string
	appsDir          string
	snapshotMaxAge   time.Duration
	coordinator      service.CoordinatorTuning
	platform         string
	moverConcurrency int
	mover            moverFlags // mover pods on --platform kube (mover.go)
}

func defaultDataDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "tidemark")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "tidemark")
	}
	return filepath.Join(os.TempDir(), "tidemark")
}

func newServeCommand(g *globalOptions) *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run Tidemark services (all of them, on an embedded NATS server, by default)",
		Long: `Run Tidemark services in this process.

Without --nats-url, an embedded NATS server with JetStream keeps its files under
--data-dir and listens on --nats-listen, so other tidemark processes (and
"tidemark events tail") can join it. With --nats-url, the services join an
external NATS cluster instead; that is how they scale out: run
"tidemark serve --services datamover" on as many machines as you like.

HTTP endpoints on --listen: /healthz (the process is alive), /readyz (NATS is
connected and every stream exists), /metrics (Prometheus).

SIGINT or SIGTERM stops taking work, lets in-flight work finish for up to
--shutdown-timeout, returns anything unfinished to NATS for redelivery, and
exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := g.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if err := o.validate(); err != nil {
				return usageError{err}
			}
			return o.run(cmd.Context(), log)
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.services, "services", []string{"all"}, "services to run: all, none (only the embedded NATS server), or a comma-separated list of "+strings.Join(service.Planned, ", "))
	f.StringVar(&o.dataDir, "data-dir", defaultDataDir(), "directory for Tidemark's state (the embedded NATS server's streams live in <data-dir>/nats)")
	f.StringVar(&o.listen, "listen", "127.0.0.1:8480", "HTTP address for /healthz, /readyz and /metrics")
	f.StringVar(&o.natsListen, "nats-listen", "127.0.0.1:4222", `address the embedded NATS server listens on for other processes; "" for in-process only`)
	o.nats.register(cmd, "", "external NATS server URLs, comma-separated; empty runs an embedded server")
	f.IntVar(&o.replicas, "stream-replicas", 1, "replicas of each stream and bucket (3 or 5 on a NATS cluster)")
	f.DurationVar(&o.eventsRetention, "events-retention", 30*24*time.Hour, "how long the audit log keeps events")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long in-flight work may finish after SIGTERM")
	f.StringVar(&o.instanceID, "instance-id", defaultInstanceID(), "this process's id among its peers (letters, digits, _ and -); lock releases are routed by it, so keep it stable")
	f.DurationVar(&o.snapshotMaxAge, "snapshot-max-age", 24*time.Hour, "leftover snapshots older than this are deleted when the snapshotter starts; keep it longer than your longest export")
	f.StringVar(&o.platform, "platform", service.PlatformLocal, `where applications run: "local" (processes and directories on this host) or "kube" (the cluster of $KUBECONFIG, ~/.kube/config, or in-cluster)`)
	f.IntVar(&o.moverConcurrency, "datamover-concurrency", 2, "data mover: volumes (work items) this process moves at once; run more processes to scale out further")
	o.mover.register(f)
	f.StringVar(&o.appsDir, "apps-dir", "", "directory of Application files for the local platform (default <data-dir>/apps)")
	f.DurationVar(&o.coordinator.AnswerGrace, "step-answer-grace", 5*time.Second, "coordinator: how long past a step's own timeout to wait for its answer before counting it lost")
	f.DurationVar(&o.coordinator.InverseTimeout, "inverse-timeout", 30*time.Second, "coordinator: bound on each attempt of an inverse step (unlock, release)")
	f.DurationVar(&o.coordinator.ExportTimeout, "export-timeout", 12*time.Hour, "coordinator: bound on each volume export")
	return cmd
}

func (o *serveOptions) validate() error {
	if _, err := service.Resolve(o.services); err != nil {
		return fmt.Errorf("--services: %w", err)
	}
	if _, _, err := net.SplitHostPort(o.listen); err != nil {
		return fmt.Errorf("--listen %q: %v (want host:port, such as 127.0.0.1:8480)", o.listen, err)
	}
	if o.nats.url == "" && o.natsListen != "" {
		if _, _, err := net.SplitHostPort(o.natsListen); err != nil {
			return fmt.Errorf("--nats-listen %q: %v (want host:port, such as 127.0.0.1:4222, or \"\")", o.natsListen, err)
		}
	}
	if o.nats.url != "" {
		if err := o.nats.dialConfig("").Validate(); err != nil {
			return err
		}
	}
	if o.dataDir == "" {
		return errors.New("--data-dir is empty")
	}
	if o.platform != service.PlatformLocal && o.platform != service.PlatformKube {
		return fmt.Errorf("--platform %q: want local or kube", o.platform)
	}
	if o.moverConcurrency < 1 || o.moverConcurrency > 64 {
		return fmt.Errorf("--datamover-concurrency %d: want 1 to 64 volumes at once per process (run more processes for more)", o.moverConcurrency)
	}
	if _, _, err := o.mover.options(); err != nil {
		return err
	}
	if o.snapshotMaxAge < time.Hour {
		return fmt.Errorf("--snapshot-max-age %s: keep leftover snapshots at least 1h, longer than any export", o.snapshotMaxAge)
	}
	if !instanceIDPattern.MatchString(o.instanceID) {
		return fmt.Errorf("--instance-id %q: use letters, digits, _ and - only", o.instanceID)
	}
	if o.replicas != 1 && o.replicas != 3 && o.replicas != 5 {
		return fmt.Errorf("--stream-replicas %d: want 1, 3 or 5", o.replicas)
	}
	if o.eventsRetention < time.Hour {
		return fmt.Errorf("--events-retention %s: keep the audit log for at least 1h", o.eventsRetention)
	}
	if o.shutdownTimeout <= 0 {
		return fmt.Errorf("--shutdown-timeout %s: must be positive", o.shutdownTimeout)
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"--step-answer-grace", o.coordinator.AnswerGrace}, {"--inverse-timeout", o.coordinator.InverseTimeout}, {"--export-timeout", o.coordinator.ExportTimeout}} {
		if d.v <= 0 {
			return fmt.Errorf("%s %s: must be positive", d.flag, d.v)
		}
	}
	return nil
}

func (o *serveOptions) run(ctx context.Context, log *slog.Logger) error {
	names, _ := service.Resolve(o.services)
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))

	// Infrastructure starts first and stops last: NATS, the bus, HTTP, then
	// the services.
	nc, stopNATS, err := o.connect(ctx, log)
	if err != nil {
		return err
	}
	defer stopNATS()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	b, err := bus.New(nc,
		bus.WithSource("tidemark/"+hostname()),
		bus.WithLogger(log),
		bus.WithRegisterer(reg),
		bus.WithTopology(bus.DefaultTopology(bus.TopologyOptions{Replicas: o.replicas, EventsMaxAge: o.eventsRetention})),
	)
	if err != nil {
		return err
	}
	if err := b.EnsureTopology(ctx); err != nil {
		if ctx.Err() != nil {
			log.Info("interrupted during start-up; nothing was running yet")
			return nil
		}
		return err
	}

	var servicesUp atomic.Bool
	httpSrv, httpAddr, err := startHTTP(o.listen, b, &servicesUp, reg, log)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = httpSrv.Shutdown(sctx)
	}()

	appsDir := o.appsDir
	if appsDir == "" {
		appsDir = filepath.Join(o.dataDir, "apps")
	}
	deps := service.Deps{Bus: b, Logger: log, DataDir: o.dataDir, Metrics: reg, InstanceID: o.instanceID, AppsDir: appsDir, SnapshotMaxAge: o.snapshotMaxAge, Coordinator: o.coordinator, Platform: o.platform, MoverConcurrency: o.moverConcurrency}
	deps.Mover, deps.MoverLimit, _ = o.mover.options() // validated above
	if o.platform == service.PlatformKube {
		if deps.Kube, err = kube.NewFromEnvironment(); err != nil {
			return fmt.Errorf("--platform kube: %w", err)
		}
		log.Info("kubernetes platform", "host", deps.Kube.Clients().Config.Host)
	}
	svcs, err := service.Build(names, deps)
	if err != nil {
		return err
	}
	if len(svcs) == 0 {
		log.Warn("no services built into this version yet; serving NATS, the topology and health endpoints only")
	}
	log.Info("tidemark serving", "services", names, "http", httpAddr, "dataDir", o.dataDir)
	servicesUp.Store(true)

	runCtx, stopServices := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServices()
	done := make(chan error, 1)
	go func() { done <- service.RunAll(runCtx, svcs, log) }()

	select {
	case err := <-done:
		if err != nil {
			return err
		}
	case <-ctx.Done():
		log.Info("shutting down: no new work; in-flight work may finish", "timeout", o.shutdownTimeout)
		servicesUp.Store(false)
		stopServices()
		select {
		case err := <-done:
			if err != nil {
				return err
			}
		case <-time.After(o.shutdownTimeout):
			return fmt.Errorf("services did not stop within --shutdown-timeout %s", o.shutdownTimeout)
		}
	}
	log.Info("tidemark stopped cleanly")
	return nil
}

// connect returns a NATS connection and a function that drains it (so every
// ack reaches the server) and stops the embedded server, if any.
func (o *serveOptions) connect(ctx context.Context, log *slog.Logger) (*nats.Conn, func(), error) {
	if o.nats.url != "" {
		// On Kubernetes every service starts at once, before NATS has an
		// address: keep trying (until stopped) rather than exit and be
		// restarted by the kubelet with a growing back-off.
		var nc *nats.Conn
		var err error
		for wait := 500 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
			if nc, err = bus.Dial(o.nats.dialConfig("tidemark serve")); err == nil {
				break
			}
			var netErr net.Error
			if !errors.Is(err, nats.ErrNoServers) && !errors.As(err, &netErr) {
				return nil, nil, err // bad credentials or TLS files: retrying will not help
			}
			log.Warn("NATS not reachable yet; retrying", "url", o.nats.url, "in", wait, "err", err)
			select {
			case <-ctx.Done():
				return nil, nil, err
			case <-time.After(wait):
			}
		}
		log.Info("joined external NATS", "servers", nc.Servers())
		return nc, func() { drain(nc, log) }, nil
	}
	storeDir := filepath.Join(o.dataDir, "nats")
	srv, err := natsserver.Start(natsserver.Config{StoreDir: storeDir, Listen: o.natsListen})
	if err != nil {
		return nil, nil, err
	}
	nc, err := srv.Connect()
	if err != nil {
		srv.Shutdown()
		return nil, nil, err
	}
	log.Info("embedded NATS started", "url", srv.ClientURL(), "store", storeDir)
	return nc, func() {
		drain(nc, log)
		srv.Shutdown()
	}, nil
}

func drain(nc *nats.Conn, log *slog.Logger) {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		log.Warn("NATS drain timed out")
		nc.Close()
	}
}

func startHTTP(addr string, b *bus.Bus, servicesUp *atomic.Bool, reg *prometheus.Registry, log *slog.Logger) (*http.Server, string, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := b.Ready(r.Context()); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if !servicesUp.Load() {
			http.Error(w, "not ready: services are starting or stopping", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("--listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "err", err)
		}
	}()
	return srv, ln.Addr().String(), nil
}

var instanceIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// defaultInstanceID is the host name made safe for a NATS subject token.
func defaultInstanceID() string {
	id := regexp.MustCompile(`[^A-Za-z0-9_-]`).ReplaceAllString(hostname(), "-")
	if id == "" {
		return "tidemark"
	}
	return id
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "unknown"
	}
	return h
}

package datamover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/pkg/platform/local"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/pkg/service"
)

// Environment variables read by the registered service (the same for
// every process that opens the repository; see pkg/repository, which also
// has the TIDEMARK_REPOSITORY_S3_* variables of an S3 repository).
const (
	// EnvPassword holds the repository password itself.
	EnvPassword = repository.EnvPassword
	// EnvPasswordFile names a file holding the repository password.
	EnvPasswordFile = repository.EnvPasswordFile
	// EnvPath overrides where the filesystem repository is
	// (<data-dir>/repository by default).
	EnvPath = repository.EnvPath
)

func init() {
	service.Register(Name, func(d service.Deps) (service.Service, error) {
		log := d.Logger.With("service", Name)
		dataDir, err := filepath.Abs(d.DataDir)
		if err != nil {
			return nil, err
		}
		rcfg, err := repository.FromEnvironment(dataDir, true, log)
		if err != nil {
			return nil, err
		}
		rcfg.CacheDir = filepath.Join(dataDir, "cache", "repository")
		if d.OnKube() {
			return onKube(d, rcfg, log)
		}
		snaps, err := local.NewSnapshotter(filepath.Join(dataDir, "snapshots"), log)
		if err != nil {
			return nil, err
		}
		return &managed{
			repo: rcfg,
			cfg:  Config{Resolver: LocalResolver(snaps), Logger: log, Concurrency: d.MoverConcurrency},
			bus:  d.Bus,
		}, nil
	})
}

// onKube is the data mover on Kubernetes: volumes move in mover pods
// (PodMover), at most d.MoverLimit at once in this process; dumps still
// move here. Each pod holds one of this process's work items while it
// runs, so it takes as many items at once as it may run pods (or
// --datamover-concurrency, if that is more).
func onKube(d service.Deps, rcfg repository.Config, log *slog.Logger) (service.Service, error) {
	if d.Kube == nil {
		return nil, errors.New("--platform kube without a Kubernetes platform")
	}
	opts := d.Mover
	opts.Env, opts.Credentials = MoverRepository(rcfg)
	if rcfg.S3 == nil {
		log.Warn("the repository is a directory: mover pods open it at the same path, which they reach only where it is the same storage on every node; use an S3 repository on Kubernetes (docs/kubernetes.md, mover pods)",
			"repository", rcfg.Path)
	}
	pm := &PodMover{
		Platform: kube.New(d.Kube.Clients(), kube.WithMoverLimit(d.MoverLimit)),
		Options:  opts,
		Logger:   log,
	}
	return &managed{
		repo:  rcfg,
		cfg:   Config{Volumes: pm, Logger: log, Concurrency: max(d.MoverConcurrency, d.MoverLimit)},
		bus:   d.Bus,
		pods:  pm,
		sweep: d.Bus,
	}, nil
}

// Files of a mover pod's credentials Secret (kube.MoverCredentialsPath).
const (
	credentialPassword    = "password"
	credentialS3AccessKey = "s3-access-key"
	credentialS3SecretKey = "s3-secret-key"
	credentialS3CA        = "s3-ca.pem"
)

// MoverRepository turns the repository this process opened into what a
// mover pod needs to open it: settings as environment values, and the
// password and keys as files of the pod's Secret, named by the
// TIDEMARK_REPOSITORY_*_FILE variables. However this process got them
// (a variable, a file, generated), they reach the pod the same way.
func MoverRepository(cfg repository.Config) (env map[string]string, credentials map[string][]byte) {
	file := func(name string) string { return kube.MoverCredentialsPath + "/" + name }
	env = map[string]string{repository.EnvPasswordFile: file(credentialPassword)}
	credentials = map[string][]byte{credentialPassword: []byte(cfg.Password)}
	if c := cfg.Tuning.Compression; c != "" {
		env[repository.EnvCompression] = c
	}
	s3 := cfg.S3
	if s3 == nil {
		env[repository.EnvPath] = cfg.Path
		return env, credentials
	}
	env[repository.EnvS3Bucket] = s3.Bucket
	for k, v := range map[string]string{repository.EnvS3Endpoint: s3.Endpoint, repository.EnvS3Prefix: s3.Prefix, repository.EnvS3Region: s3.Region} {
		if v != "" {
			env[k] = v
		}
	}
	if s3.DisableTLS {
		env[repository.EnvS3DisableTLS] = "true"
	}
	if s3.AccessKeyID != "" {
		credentials[credentialS3AccessKey] = []byte(s3.AccessKeyID)
		credentials[credentialS3SecretKey] = []byte(s3.SecretAccessKey)
		env[repository.EnvS3AccessKey+"_FILE"] = file(credentialS3AccessKey)
		env[repository.EnvS3SecretKey+"_FILE"] = file(credentialS3SecretKey)
	}
	if len(s3.RootCA) > 0 {
		credentials[credentialS3CA] = s3.RootCA
		env[repository.EnvS3CAFile] = file(credentialS3CA)
	}
	return env, credentials
}

// managed opens the repository when the service starts and closes it when
// the service stops.
type managed struct {
	repo repository.Config
	cfg  Config
	bus  Bus
	// pods, on Kubernetes, runs the mover pods; its image is found when
	// the service starts, and sweep consumes the facts that end runs.
	pods  *PodMover
	sweep bus.Consumer
	// retryOpen is how soon a repository that failed to open is tried
	// again (defaultRetryOpen when zero).
	retryOpen time.Duration
}

// defaultRetryOpen spares a repository that cannot be opened (an S3
// server that is down) an attempt for every queued command.
const defaultRetryOpen = time.Second

func (m *managed) Run(ctx context.Context) error {
	if m.cfg.Logger == nil {
		m.cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &openOnUse{cfg: m.repo, retryAfter: m.retryOpen}
	if r.retryAfter <= 0 {
		r.retryAfter = defaultRetryOpen
	}
	if _, err := r.get(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		// Keep consuming: every command then fails with this reason in
		// its failure event, where the run that needed it shows it, and
		// the repository is tried again for each (an S3 server that was
		// down is picked up once it is back).
		m.cfg.Logger.Error("the data mover cannot open the repository; every export and import fails with this reason until it is fixed",
			"repository", m.repo.Location(), "err", err)
	}
	defer func() {
		if err := r.Close(context.WithoutCancel(ctx)); err != nil {
			m.cfg.Logger.Warn("closing the repository", "err", err)
		}
	}()
	cfg := m.cfg
	cfg.Repository = r
	s, err := New(cfg, m.bus)
	if err != nil {
		return err
	}
	if m.pods == nil {
		return s.Run(ctx)
	}
	if m.pods.Options.Image == "" {
		img, policy, err := m.pods.Platform.OwnImage(ctx, "tidemark")
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("--mover-image is not set, and the image of this data mover cannot be read to use it: %w", err)
		}
		m.pods.Options.Image, m.pods.Options.ImagePullPolicy = img, policy
	}
	m.cfg.Logger.Info("data mover on Kubernetes: volumes move in mover pods", "image", m.pods.Options.Image, "concurrency", cfg.Concurrency)
	// Either failing stops the other: the service then fails as a whole.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 2)
	for _, run := range []func(context.Context) error{s.Run, func(ctx context.Context) error { return m.pods.SweepEndedRuns(ctx, m.sweep) }} {
		go func() {
			err := run(ctx)
			if err != nil {
				cancel()
			}
			errs <- err
		}()
	}
	return errors.Join(<-errs, <-errs)
}

// openOnUse is a Repository opened on first use, and again on a later use
// after opening failed: at once if retryAfter has passed since, else that
// failure is the answer. A wrong password or an invalid configuration is
// the answer for good: they come from this process's settings.
type openOnUse struct {
	cfg        repository.Config
	retryAfter time.Duration

	mu       sync.Mutex
	r        *repository.Repository
	err      error
	failedAt time.Time
}

func (o *openOnUse) get(ctx context.Context) (*repository.Repository, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.r != nil {
		return o.r, nil
	}
	if o.err != nil && (errors.Is(o.err, repository.ErrWrongPassword) || errors.Is(o.err, repository.ErrInvalidConfig) ||
		time.Since(o.failedAt) < o.retryAfter) {
		return nil, o.err
	}
	r, err := repository.Open(ctx, o.cfg)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		o.err, o.failedAt = fmt.Errorf("opening the repository: %w", err), time.Now()
		return nil, o.err
	}
	o.r, o.err = r, nil
	return r, nil
}

// Close closes the repository if it was opened.
func (o *openOnUse) Close(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.r == nil {
		return nil
	}
	err := o.r.Close(ctx)
	o.r = nil
	return err
}

func (o *openOnUse) ExportDir(ctx context.Context, req repository.ExportRequest) (repository.ExportResult, error) {
	r, err := o.get(ctx)
	if err != nil {
		return repository.ExportResult{}, err
	}
	return r.ExportDir(ctx, req)
}

func (o *openOnUse) ImportDir(ctx context.Context, manifestID, targetDir string, progress func(repository.Progress)) (repository.ImportResult, error) {
	r, err := o.get(ctx)
	if err != nil {
		return repository.ImportResult{}, err
	}
	return r.ImportDir(ctx, manifestID, targetDir, progress)
}

func (o *openOnUse) ExportStream(ctx context.Context, req repository.StreamRequest) (repository.ExportResult, error) {
	r, err := o.get(ctx)
	if err != nil {
		return repository.ExportResult{}, err
	}
	return r.ExportStream(ctx, req)
}

func (o *openOnUse) ImportStream(ctx context.Context, manifestID string, w io.Writer, progress func(repository.Progress)) (repository.ImportResult, error) {
	r, err := o.get(ctx)
	if err != nil {
		return repository.ImportResult{}, err
	}
	return r.ImportStream(ctx, manifestID, w, progress)
}

func (o *openOnUse) CheckSnapshot(ctx context.Context, manifestID string) (repository.ImportResult, error) {
	r, err := o.get(ctx)
	if err != nil {
		return repository.ImportResult{}, err
	}
	return r.CheckSnapshot(ctx, manifestID)
}

// Password returns the repository password; see repository.Password.
func Password(value, file, generated string, log *slog.Logger) (string, error) {
	return repository.Password(value, file, generated, log)
}

// LocalResolver finds snapshots taken by the local platform's snapshotter.
func LocalResolver(s *local.Snapshotter) Resolver {
	return func(ctx context.Context, id events.SnapshotID) (string, error) {
		snaps, err := s.List(ctx)
		if err != nil {
			return "", err
		}
		for _, sn := range snaps {
			if sn.ID != id {
				continue
			}
			if sn.Incomplete {
				return "", fmt.Errorf("%w: snapshot %s is incomplete", repository.ErrInvalidRequest, id)
			}
			return sn.Path, nil
		}
		return "", fmt.Errorf("%w: snapshot %s not found under %s", ErrSnapshotNotFound, id, s.Root)
	}
}

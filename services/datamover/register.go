package datamover

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform/local"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/pkg/service"
)

// Environment variables read by the registered service (the same for
// every process that opens the repository; see pkg/repository).
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
		snaps, err := local.NewSnapshotter(filepath.Join(dataDir, "snapshots"), log)
		if err != nil {
			return nil, err
		}
		return &managed{
			repo: rcfg,
			cfg:  Config{Resolver: LocalResolver(snaps), Logger: log},
			bus:  d.Bus,
		}, nil
	})
}

// managed opens the repository when the service starts and closes it when
// the service stops.
type managed struct {
	repo repository.Config
	cfg  Config
	bus  Bus
}

func (m *managed) Run(ctx context.Context) error {
	r, err := repository.Open(ctx, m.repo)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("datamover: %w", err)
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
	return s.Run(ctx)
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

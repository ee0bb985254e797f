package catalog

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/pkg/service"
)

func init() {
	service.Register(Name, func(d service.Deps) (service.Service, error) {
		log := d.Logger.With("service", Name)
		dataDir, err := filepath.Abs(d.DataDir)
		if err != nil {
			return nil, err
		}
		// The retention policy is the user's to write: without the file,
		// every restore point is kept.
		path, required := os.Getenv(EnvRetentionFile), true
		if path == "" {
			path, required = filepath.Join(dataDir, RetentionFile), false
		}
		ret, err := LoadRetention(path, required)
		if err != nil {
			return nil, err
		}
		rcfg, err := repository.FromEnvironment(dataDir, true, log)
		if err != nil {
			return nil, err
		}
		// Its own cache and connection file: the data movers of this
		// process are another kopia client of the same repository.
		rcfg.CacheDir = filepath.Join(dataDir, "cache", "catalog-repository")
		return &managed{
			repo: rcfg,
			cfg:  Config{Retention: ret, InstanceID: d.InstanceID, Logger: log},
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
		return fmt.Errorf("catalog: %w", err)
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

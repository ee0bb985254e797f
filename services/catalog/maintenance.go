package catalog

import (
	"context"
	"errors"
	"time"

	"github.com/tidemark-dev/tidemark/pkg/repository"
)

func (s *Service) maintenanceLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.MaintenanceInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_, err := s.Maintain(ctx, repository.MaintenanceAuto)
		if err != nil && !errors.Is(err, ErrMaintenanceBusy) && ctx.Err() == nil {
			s.cfg.Logger.Warn("repository maintenance", "err", err)
		}
	}
}

// Maintain runs kopia maintenance on the repository (MaintenanceAuto: what
// kopia's schedule says is due). It never runs twice at once: a second
// call in this process, or a call in another catalog instance (they share
// a lease in the catalog's bucket), returns ErrMaintenanceBusy at once.
// kopia itself adds a lock beside its connection file, and runs
// maintenance only as its owner, which is Tidemark's fixed identity
// (repository.Owner).
func (s *Service) Maintain(ctx context.Context, mode repository.MaintenanceMode) (repository.MaintenanceResult, error) {
	select {
	case <-s.ready:
	case <-ctx.Done():
		return repository.MaintenanceResult{}, ctx.Err()
	}
	if !s.maintaining.TryLock() {
		return repository.MaintenanceResult{}, ErrMaintenanceBusy
	}
	defer s.maintaining.Unlock()
	var res repository.MaintenanceResult
	ran, err := s.maintenance.run(ctx, func(ctx context.Context) error {
		if s.maintainHook != nil {
			s.maintainHook(ctx)
		}
		var err error
		res, err = s.cfg.Repository.Maintain(ctx, mode)
		return err
	})
	if err != nil {
		return res, err
	}
	if !ran {
		return res, ErrMaintenanceBusy
	}
	if res.Ran != "" {
		s.cfg.Logger.Info("repository maintenance done", "mode", res.Ran, "duration", res.FinishedAt.Sub(res.StartedAt).Round(time.Millisecond))
	}
	return res, nil
}

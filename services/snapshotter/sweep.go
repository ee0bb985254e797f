package snapshotter

import (
	"context"
	"errors"
	"fmt"

	"github.com/tidemark-dev/tidemark/pkg/platform"
)

// Sweep deletes the snapshots nobody will ask to delete any more: those
// older than MaxAge (their run crashed or forgot them) and incomplete ones
// (their taker crashed mid-snapshot). Run calls it once at start, before
// taking any command, so no snapshot in progress can be mistaken for a
// leftover. It emits no events, only an INFO log per deleted snapshot with
// its run, and returns what it deleted.
func (s *Service) Sweep(ctx context.Context) ([]platform.Snapshot, error) {
	all, err := s.cfg.Snapshotter.List(ctx)
	if err != nil {
		return nil, err
	}
	cutoff := s.cfg.Now().Add(-s.cfg.MaxAge)
	var deleted []platform.Snapshot
	var errs []error
	for _, sn := range all {
		var reason string
		switch {
		case sn.Incomplete:
			reason = "left incomplete by a crash mid-snapshot"
		case sn.CreatedAt.Before(cutoff):
			reason = fmt.Sprintf("older than %s", s.cfg.MaxAge)
		default:
			continue
		}
		if err := s.cfg.Snapshotter.Delete(ctx, sn.ID); err != nil {
			errs = append(errs, fmt.Errorf("snapshot %s of run %s: %w", sn.ID, sn.RunID, err))
			continue
		}
		s.cfg.Logger.Info("swept a leftover snapshot", "run", sn.RunID, "snapshot", sn.ID, "volume", sn.Volume,
			"created", sn.CreatedAt, "reason", reason)
		deleted = append(deleted, sn)
	}
	return deleted, errors.Join(errs...)
}

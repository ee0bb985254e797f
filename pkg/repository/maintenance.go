package repository

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/maintenance"
	"github.com/kopia/kopia/snapshot/snapshotgc"
)

// MaintenanceMode says which kopia maintenance to run.
type MaintenanceMode string

const (
	// MaintenanceAuto runs whichever cycle is due by the repository's
	// maintenance schedule (quick hourly and full daily, unless changed
	// with `kopia maintenance set`), or nothing.
	MaintenanceAuto MaintenanceMode = "auto"
	// MaintenanceQuick compacts indexes and rewrites small packs now.
	MaintenanceQuick MaintenanceMode = "quick"
	// MaintenanceFull also collects the garbage of deleted snapshots now
	// (after kopia's safety margins).
	MaintenanceFull MaintenanceMode = "full"
)

// Owner is the kopia identity that owns the repository's maintenance:
// every Tidemark client connects as it.
const Owner = Username + "@" + Username

// MaintenanceResult says what a Maintain call did.
type MaintenanceResult struct {
	// Ran is the cycle that ran: MaintenanceQuick, MaintenanceFull, or ""
	// when none was due, or another client of this repository handle's
	// cache directory was already running one.
	Ran        MaintenanceMode
	StartedAt  time.Time
	FinishedAt time.Time
}

// Maintain runs kopia maintenance as Owner. kopia itself refuses to run it
// twice at once through the same connection (a lock file beside the
// connection's config); excluding other processes is the caller's job
// (the catalog holds a lease in NATS for it).
func (r *Repository) Maintain(ctx context.Context, mode MaintenanceMode) (MaintenanceResult, error) {
	var kmode maintenance.Mode
	switch mode {
	case MaintenanceAuto, "":
		kmode = maintenance.ModeAuto
	case MaintenanceQuick:
		kmode = maintenance.ModeQuick
	case MaintenanceFull:
		kmode = maintenance.ModeFull
	default:
		return MaintenanceResult{}, fmt.Errorf("%w: maintenance mode %q: want auto, quick or full", ErrInvalidRequest, mode)
	}
	dr, ok := r.rep.(repo.DirectRepository)
	if !ok {
		return MaintenanceResult{}, fmt.Errorf("%w: this repository connection cannot run maintenance", ErrInvalidRequest)
	}
	res := MaintenanceResult{StartedAt: time.Now()}
	safety := maintenance.SafetyFull
	err := repo.DirectWriteSession(ctx, dr, repo.WriteSessionOptions{Purpose: "tidemark maintenance"}, func(ctx context.Context, w repo.DirectRepositoryWriter) error {
		// What kopia's snapshotmaintenance.Run does, keeping the mode
		// that actually ran.
		return maintenance.RunExclusive(ctx, w, kmode, false, func(ctx context.Context, rp maintenance.RunParameters) error {
			res.Ran = MaintenanceQuick
			if rp.Mode == maintenance.ModeFull {
				res.Ran = MaintenanceFull
				if err := snapshotgc.Run(ctx, w, true, safety, rp.MaintenanceStartTime); err != nil {
					return fmt.Errorf("snapshot garbage collection: %w", err)
				}
			}
			return maintenance.Run(ctx, rp, safety)
		})
	})
	res.FinishedAt = time.Now()
	var notOwned maintenance.NotOwnedError
	if errors.As(err, &notOwned) {
		return res, fmt.Errorf("%w: the owner is %q, not Tidemark's %q; make Tidemark the owner with `kopia maintenance set --owner=%s`",
			ErrMaintenanceNotOwned, notOwned.Owner, Owner, Owner)
	}
	if err != nil {
		return res, fmt.Errorf("%s maintenance of %s: %w", mode, r.cfg.Location(), r.explain(err))
	}
	return res, nil
}

// MaintenanceRuns returns how many times each maintenance task has run on
// the repository, by kopia's schedule (for status and tests).
func (r *Repository) MaintenanceRuns(ctx context.Context) (map[string]int, error) {
	dr, ok := r.rep.(repo.DirectRepository)
	if !ok {
		return nil, fmt.Errorf("%w: this repository connection cannot read the maintenance schedule", ErrInvalidRequest)
	}
	s, err := maintenance.GetSchedule(ctx, dr)
	if err != nil {
		return nil, fmt.Errorf("reading the maintenance schedule: %w", err)
	}
	out := map[string]int{}
	for task, runs := range s.Runs {
		out[string(task)] = len(runs)
	}
	return out, nil
}

// ensureMaintenanceOwner makes Owner the maintenance owner of a repository
// that has none yet (a new one: kopia's library, unlike its CLI, sets no
// maintenance parameters). An owner set by someone else is left alone;
// Maintain then says how to hand it over.
func (r *Repository) ensureMaintenanceOwner(ctx context.Context) error {
	has, err := maintenance.HasParams(ctx, r.rep)
	if err != nil {
		return fmt.Errorf("reading the maintenance parameters of %s: %w", r.cfg.Location(), err)
	}
	if has {
		return nil
	}
	err = repo.WriteSession(ctx, r.rep, repo.WriteSessionOptions{Purpose: "tidemark maintenance owner"}, func(ctx context.Context, w repo.RepositoryWriter) error {
		p := maintenance.DefaultParams()
		p.Owner = Owner
		return maintenance.SetParams(ctx, w, &p)
	})
	if err != nil {
		return fmt.Errorf("setting the maintenance owner of %s: %w", r.cfg.Location(), err)
	}
	return nil
}

package catalog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/pkg/retention"
)

// pokeHousekeeping asks for a housekeeping pass soon (after a new point).
func (s *Service) pokeHousekeeping() {
	select {
	case s.poke <- struct{}{}:
	default: // one is already pending
	}
}

func (s *Service) housekeepingLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.Retention.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.poke:
		}
		if _, err := s.Housekeep(ctx); err != nil && ctx.Err() == nil {
			s.cfg.Logger.Warn("catalog housekeeping", "err", err)
		}
	}
}

// HousekeepingReport says what a housekeeping pass did.
type HousekeepingReport struct {
	// Ran is false when another catalog instance was doing it.
	Ran bool
	// Synced are points whose records were written to the repository late.
	Synced []events.RestorePointID
	// Removed are points deleted (expired, or a retried deletion).
	Removed []events.RestorePointID
	// Failed are points whose deletion failed; they stay listed as
	// deleting and are retried next time.
	Failed []events.RestorePointID
}

// Housekeep runs one housekeeping pass, unless another catalog instance is
// running one: it writes the repository records that could not be written
// when their points were recorded, retries unfinished deletions, and
// expires what the retention policies no longer keep.
func (s *Service) Housekeep(ctx context.Context) (HousekeepingReport, error) {
	select {
	case <-s.ready:
	case <-ctx.Done():
		return HousekeepingReport{}, ctx.Err()
	}
	var rep HousekeepingReport
	ran, err := s.housekeeping.run(ctx, func(ctx context.Context) error {
		var errs []error
		if err := s.syncRecords(ctx, &rep); err != nil {
			errs = append(errs, err)
		}
		if err := s.applyRetention(ctx, &rep); err != nil {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	rep.Ran = ran
	return rep, err
}

// syncRecords writes the records of points noted as unsynced.
func (s *Service) syncRecords(ctx context.Context, rep *HousekeepingReport) error {
	ids, err := s.store.unsynced(ctx)
	if err != nil {
		return fmt.Errorf("listing points not yet in the repository: %w", err)
	}
	var errs []error
	for _, id := range ids {
		p, err := s.store.Get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			errs = append(errs, s.store.clearUnsynced(ctx, id))
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if p.Status != StatusAvailable {
			errs = append(errs, s.store.clearUnsynced(ctx, id))
			continue
		}
		if err := s.writeRecord(ctx, p); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Synced = append(rep.Synced, id)
	}
	return errors.Join(errs...)
}

// writeRecord writes p's record into the repository and clears its note.
func (s *Service) writeRecord(ctx context.Context, p RestorePoint) error {
	raw, err := marshal(p)
	if err != nil {
		return err
	}
	if err := s.cfg.Repository.PutRecord(ctx, RecordKind, string(p.ID), map[string]string{repository.TagApp: p.Application}, raw); err != nil {
		s.cfg.Logger.Warn("the restore point is recorded, but its record is not in the repository yet; retried at the next housekeeping",
			"id", p.ID, "application", p.Application, "retry", s.cfg.Retention.Interval, "err", err)
		return err
	}
	return s.store.clearUnsynced(ctx, p.ID)
}

// applyRetention retries unfinished deletions, then expires, application by
// application, the available points its policy does not keep.
func (s *Service) applyRetention(ctx context.Context, rep *HousekeepingReport) error {
	points, err := s.store.List(ctx, "")
	if err != nil {
		return fmt.Errorf("listing restore points: %w", err)
	}
	var errs []error
	remove := func(p RestorePoint, d Deletion) {
		deleted, err := removePoint(ctx, s.store, s.cfg.Repository, s.bus, p, d)
		if err != nil {
			rep.Failed = append(rep.Failed, p.ID)
			errs = append(errs, err)
			return
		}
		rep.Removed = append(rep.Removed, p.ID)
		s.cfg.Logger.Info("restore point removed", "id", p.ID, "application", p.Application, "by", d.By, "reason", d.Reason, "snapshots", len(deleted))
	}
	byApp := map[string][]retention.Point{}
	index := map[string]RestorePoint{}
	for _, p := range points {
		switch p.Status {
		case StatusDeleting:
			d := Deletion{By: DeletedByRetention, Reason: "deletion retried"}
			if p.Deletion != nil {
				d = *p.Deletion
			}
			remove(p, d)
		case StatusAvailable:
			byApp[p.Application] = append(byApp[p.Application], retention.Point{ID: string(p.ID), Time: p.CreatedAt})
			index[string(p.ID)] = p
		}
	}
	for app, pts := range byApp {
		policy, ok := s.cfg.Retention.PolicyFor(app)
		if !ok {
			continue
		}
		decision, err := retention.Apply(policy, pts, s.cfg.Retention.Location)
		if err != nil {
			errs = append(errs, fmt.Errorf("retention of %s: %w", app, err))
			continue
		}
		for _, e := range decision.Expire {
			reason := fmt.Sprintf("retention policy of %s (%s) keeps %d newer restore points", app, describePolicy(policy), len(decision.Keep))
			if _, own := s.cfg.Retention.Applications[app]; !own {
				reason = fmt.Sprintf("default retention policy (%s) keeps %d newer restore points of %s", describePolicy(policy), len(decision.Keep), app)
			}
			remove(index[e.ID], Deletion{By: DeletedByRetention, Reason: reason, Since: time.Now().UTC()})
		}
	}
	return errors.Join(errs...)
}

package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/services/catalog"
)

// startRestore turns a restore request into a run. Everything that can be
// checked before anything is changed is checked here; a request that fails
// a check still gets a run, failed at once with the reason, so `runs list`
// and `restore --wait` show why.
func (s *Service) startRestore(ctx context.Context, ev events.Event, req events.RestoreRequested) error {
	now := s.cfg.Now()
	id := events.RunID(uuid.NewSHA1(runIDNamespace, []byte(ev.ID)).String())
	if _, err := s.runs.Entry(ctx, runKey(id)); err == nil {
		return s.update(ctx, id, true, func(*saga) {})
	} else if !errors.Is(err, bus.ErrKeyNotFound) {
		return err
	}
	r := &Run{
		ID: id, Kind: KindRestore, RestorePointID: req.RestorePointID, Time: now.UTC().Truncate(time.Second),
		CreatedAt: now.UTC(), UpdatedAt: now.UTC(), Restore: &RestorePlan{Target: req.Target, Replace: req.Force || req.Target.Mode == "production"},
	}
	bp, reason, err := s.planRestore(ctx, r, req)
	if err != nil {
		return err
	}
	if reason == "" && req.Target.Mode == "production" {
		// Nothing else may run against the application while its volumes
		// are replaced: no backup, no second restore.
		running, err := s.claimApplication(ctx, r.Application, id)
		if err != nil {
			return err
		}
		if running != "" {
			reason = fmt.Sprintf("run %s of %s is still going; a restore to production does not wait and was refused (nothing was changed)", running, r.Application)
		}
	}
	sg := &saga{r: r, bp: bp, now: now, cfg: &s.cfg, holders: s.holderLookup(ctx), snapshots: s.snapshotLookup(ctx), cause: ev.ID}
	if reason != "" {
		r.Status, r.Stage = StatusFailed, StageDone
		r.Cause = reason
		r.FinishedAt = &now
		r.log(now, "refused before anything was changed: %s", reason)
		sg.emit(string(id)+"/failed", events.RestoreFailed{RunID: id, RestorePointID: req.RestorePointID, Application: r.Application, Reason: reason})
		s.cfg.Logger.Warn("restore refused", "run", id, "point", req.RestorePointID, "reason", reason)
	} else {
		if err := s.takeLease(ctx, id); err != nil {
			return err
		}
		s.own(id)
		sg.start()
	}
	if reason != "" {
		// Nothing to persist first: the refusal changed nothing. Its id is
		// deterministic, so a redelivered request publishes no second copy.
		if err := s.publish(ctx, sg.out); err != nil {
			return err
		}
		sg.out = nil
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	rev, err := s.runs.Create(ctx, runKey(id), raw)
	if errors.Is(err, bus.ErrConflict) {
		return nil
	}
	if err != nil {
		return err
	}
	if !r.Status.Terminal() {
		s.cache.Store(id, bus.Entry{Key: runKey(id), Value: raw, Revision: rev})
	}
	if err := s.publish(ctx, sg.out); err != nil {
		return err
	}
	s.schedule(r)
	return nil
}

// planRestore fills in the run from the restore point and the backup run
// that made it. reason is set when the request cannot be carried out.
func (s *Service) planRestore(ctx context.Context, r *Run, req events.RestoreRequested) (*blueprint.Blueprint, string, error) {
	catKV, err := s.bus.KeyValue(ctx, bus.BucketCatalog)
	if err != nil {
		return nil, "", err
	}
	point, err := catalog.NewStore(catKV).Get(ctx, req.RestorePointID)
	if err != nil {
		if errors.Is(err, catalog.ErrNotFound) {
			return nil, fmt.Sprintf("restore point %s does not exist (see `tidemark points list`)", req.RestorePointID), nil
		}
		return nil, "", err
	}
	r.Application = point.Application
	if point.Status != "" && point.Status != catalog.StatusAvailable {
		return nil, fmt.Sprintf("restore point %s is %s and cannot be restored", point.ID, point.Status), nil
	}
	// The blueprint the backup ran with, so the restore matches what was
	// captured; the application's current one if that run is gone.
	var bp *blueprint.Blueprint
	if backup, err := s.load(ctx, point.RunID); err == nil {
		r.Blueprint, r.BlueprintSource, r.App = backup.Blueprint, backup.BlueprintSource, backup.App
		r.Restore.BackupTime = backup.Time
		if bp, err = s.blueprints.get(r); err != nil {
			return nil, fmt.Sprintf("the blueprint of the backup run no longer parses: %v", err), nil
		}
	} else {
		app, err := s.cfg.Apps.Application(point.Application)
		if err != nil {
			return nil, fmt.Sprintf("the backup run of point %s is gone and application %s cannot be read: %v", point.ID, point.Application, err), nil
		}
		source, parsed, err := s.blueprints.load(app.Spec.Blueprint, s.cfg.BlueprintDir)
		if err != nil {
			return nil, err.Error(), nil
		}
		info, err := appInfo(app, parsed)
		if err != nil {
			return nil, err.Error(), nil
		}
		bp, r.Blueprint, r.BlueprintSource, r.App = parsed, parsed.Metadata.Name, source, info
		r.Restore.BackupTime = point.CreatedAt
	}
	if len(bp.Action(blueprint.ActionRestore)) == 0 {
		return bp, fmt.Sprintf("blueprint %s has no restore action", r.Blueprint), nil
	}
	r.Restore.BackupSteps = point.StepOutputs
	var names []string
	for _, a := range point.Artifacts {
		names = append(names, a.Name)
	}
	for _, o := range req.Only {
		if !slices.Contains(names, o) {
			return bp, fmt.Sprintf("--only %s: restore point %s has no volume or dump of that name (it has: %s)", o, point.ID, strings.Join(names, ", ")), nil
		}
	}
	if len(req.Params) > 0 {
		// The request's parameters win over the application's.
		merged := map[string]string{}
		for k, v := range r.App.Params {
			merged[k] = v
		}
		for k, v := range req.Params {
			merged[k] = v
		}
		params, err := bp.ParamValues(merged)
		if err != nil {
			return bp, fmt.Sprintf("--param: %v", err), nil
		}
		r.App.Params = params
	}
	hasVolumes := false
	for _, a := range point.Artifacts {
		if a.Kind == "volume" && (len(req.Only) == 0 || slices.Contains(req.Only, a.Name)) {
			hasVolumes = true
		}
	}
	switch req.Target.Mode {
	case "new":
		if !hasVolumes && req.Target.Name == "" {
			// Only dumps: the blueprint's restore steps say where they go
			// (its parameters, such as the database).
			break
		}
		if !filepath.IsAbs(req.Target.Name) {
			return bp, fmt.Sprintf("target %q: a restore to new on the local platform needs an absolute directory to restore into", req.Target.Name), nil
		}
		if entries, err := os.ReadDir(req.Target.Name); err == nil && len(entries) > 0 && !req.Force {
			return bp, fmt.Sprintf("target %s is not empty; restore into a new or empty directory, or pass --force to replace the volumes' directories in it (their previous contents are kept beside them); nothing was changed", req.Target.Name), nil
		}
	case "production":
		if req.Target.Name != "" {
			return bp, fmt.Sprintf("target %q: a restore to production goes back where the application's volumes are; give no target (or restore to new with --to new --target DIR)", req.Target.Name), nil
		}
		for _, a := range point.Artifacts {
			if a.Kind != "volume" || (len(req.Only) > 0 && !slices.Contains(req.Only, a.Name)) {
				continue
			}
			p := r.App.Volumes[a.Name]
			if p == "" {
				return bp, fmt.Sprintf("volume %s: application %s no longer has a volume of that name, so a restore to production has nowhere to put it (restore to new instead, or add it to the Application's spec.volumes)", a.Name, r.Application), nil
			}
			if !filepath.IsAbs(p) {
				return bp, fmt.Sprintf("volume %s: %q is not an absolute directory on the local platform", a.Name, p), nil
			}
		}
	default:
		return bp, fmt.Sprintf("target mode %q: want new or production", req.Target.Mode), nil
	}
	for _, a := range point.Artifacts {
		if len(req.Only) > 0 && !slices.Contains(req.Only, a.Name) {
			continue
		}
		ra := RestoreArtifact{Name: a.Name, Kind: a.Kind, ManifestID: a.ManifestID, Files: a.Files, Bytes: a.Bytes}
		if a.Kind == "volume" {
			ra.Location = filepath.Join(req.Target.Name, a.Name)
			if req.Target.Mode == "production" {
				ra.Location = r.App.Volumes[a.Name]
			}
		}
		r.Restore.Artifacts = append(r.Restore.Artifacts, ra)
	}
	return bp, "", nil
}

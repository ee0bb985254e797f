package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"sigs.k8s.io/yaml"

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
	bp, plan, reason, err := s.planRestore(ctx, r, req)
	if err != nil {
		return err
	}
	if reason == "" && req.Target.Mode == "production" {
		// Nothing else may run against the application while its volumes
		// are replaced: no backup, no second restore.
		running, claim, err := s.claimApplication(ctx, r.Application, id)
		if err != nil {
			return err
		}
		r.ClaimRevision = claim
		if running != "" {
			reason = fmt.Sprintf("run %s of %s is still going; a restore to production does not wait and was refused (nothing was changed)", running, r.Application)
		}
	}
	prepared, preparedLine := false, ""
	if reason == "" && plan != nil && plan.Prepare != nil {
		// After every check, before the run's first command: the imports
		// need what it makes (the PVCs of a restore into a namespace).
		prepared = true
		line, err := plan.Prepare(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			// Redelivered, the request finds what this made as its own.
			return err
		case err != nil:
			reason = err.Error()
			if r.ClaimRevision != 0 {
				s.releaseApplication(ctx, r)
			}
		default:
			preparedLine = line
		}
	}
	sg := &saga{r: r, bp: bp, now: now, cfg: &s.cfg, holders: s.holderLookup(ctx), snapshots: s.snapshotLookup(ctx), cause: ev.ID}
	if reason != "" {
		r.Status, r.Stage = StatusFailed, StageDone
		r.Cause = reason
		r.FinishedAt = &now
		if prepared {
			r.log(now, "failed while preparing the target: %s", reason)
		} else {
			r.log(now, "refused before anything was changed: %s", reason)
		}
		sg.emit(string(id)+"/failed", events.RestoreFailed{RunID: id, RestorePointID: req.RestorePointID, Application: r.Application, Reason: reason})
		s.cfg.Logger.Warn("restore refused", "run", id, "point", req.RestorePointID, "reason", reason)
	} else {
		if err := s.takeLease(ctx, id); err != nil {
			return err
		}
		s.own(id)
		sg.start()
		if preparedLine != "" {
			r.log(now, "%s", preparedLine)
		}
	}
	if reason != "" {
		// Nothing to persist first: a refused run sends no command. Its id
		// is deterministic, so a redelivered request publishes no second
		// copy.
		if err := s.publish(ctx, sg.out); err != nil {
			return err
		}
		sg.out = nil
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	// Held until the first commands are out: their answers are handled
	// under the same lock, so none of them works on r while it is read here.
	mu := s.lock(id)
	mu.Lock()
	defer mu.Unlock()
	rev, err := s.runs.Create(ctx, runKey(id), raw)
	if errors.Is(err, bus.ErrConflict) {
		return nil
	}
	if err != nil {
		return err
	}
	s.schedule(r)
	if !r.Status.Terminal() {
		// From here r belongs to the run's transitions (see startBackup).
		s.cache.Store(id, cachedRun{entry: bus.Entry{Key: runKey(id), Value: raw, Revision: rev}, run: r})
	}
	return s.publish(ctx, sg.out)
}

// planRestore fills in the run from the restore point and the backup run
// that made it, and asks the platform (RestoreTargets) where its volumes
// go. reason is set when the request cannot be carried out; plan is set
// when it can.
func (s *Service) planRestore(ctx context.Context, r *Run, req events.RestoreRequested) (*blueprint.Blueprint, *TargetPlan, string, error) {
	catKV, err := s.bus.KeyValue(ctx, bus.BucketCatalog)
	if err != nil {
		return nil, nil, "", err
	}
	point, err := catalog.NewStore(catKV).Get(ctx, req.RestorePointID)
	if err != nil {
		if errors.Is(err, catalog.ErrNotFound) {
			return nil, nil, fmt.Sprintf("restore point %s does not exist (see `tidemark points list`)", req.RestorePointID), nil
		}
		return nil, nil, "", err
	}
	r.Application = point.Application
	if point.Status != "" && point.Status != catalog.StatusAvailable {
		return nil, nil, fmt.Sprintf("restore point %s is %s and cannot be restored", point.ID, point.Status), nil
	}
	// The blueprint the backup ran with, so the restore matches what was
	// captured; the application's current one if that run is gone.
	var bp *blueprint.Blueprint
	if backup, err := s.load(ctx, point.RunID); err == nil {
		r.Blueprint, r.BlueprintDigest, r.BlueprintSource, r.App = backup.Blueprint, backup.BlueprintDigest, backup.BlueprintSource, backup.App
		r.Restore.BackupTime = backup.Time
		if bp, err = s.runBlueprint(ctx, r); errors.Is(err, errBlueprintUnavailable) {
			return nil, nil, "", err
		} else if err != nil {
			return nil, nil, fmt.Sprintf("the blueprint of the backup run no longer parses: %v", err), nil
		}
	} else {
		app, err := s.cfg.Apps.Application(point.Application)
		if err != nil {
			return nil, nil, fmt.Sprintf("the backup run of point %s is gone and application %s cannot be read: %v", point.ID, point.Application, err), nil
		}
		source, parsed, err := s.blueprints.load(app.Spec.Blueprint, s.cfg.BlueprintDir)
		if err != nil {
			return nil, nil, err.Error(), nil
		}
		info, err := appInfo(app, parsed)
		if err != nil {
			return nil, nil, err.Error(), nil
		}
		digest, err := s.storeBlueprint(ctx, source)
		if err != nil {
			return nil, nil, "", err
		}
		bp, r.Blueprint, r.BlueprintDigest, r.App = parsed, parsed.Metadata.Name, digest, info
		r.Restore.BackupTime = point.CreatedAt
	}
	if len(bp.Action(blueprint.ActionRestore)) == 0 {
		return bp, nil, fmt.Sprintf("blueprint %s has no restore action", r.Blueprint), nil
	}
	r.Restore.BackupSteps = point.StepOutputs
	var names []string
	var manifests *catalog.Artifact
	for _, a := range point.Artifacts {
		if isPlatformArtifact(a.Name) {
			manifests = &a
			continue
		}
		names = append(names, a.Name)
	}
	for _, o := range req.Only {
		if isPlatformArtifact(o) {
			return bp, nil, fmt.Sprintf("--only %s: that is the application's objects, which a restore to new brings back with its volumes (and a restore to production leaves as they are); --only names volumes and dumps (this point has: %s)", o, strings.Join(names, ", ")), nil
		}
		if !slices.Contains(names, o) {
			return bp, nil, fmt.Sprintf("--only %s: restore point %s has no volume or dump of that name (it has: %s)", o, point.ID, strings.Join(names, ", ")), nil
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
			return bp, nil, fmt.Sprintf("--param: %v", err), nil
		}
		r.App.Params = params
	}
	selected := func(a catalog.Artifact) bool {
		return !isPlatformArtifact(a.Name) && (len(req.Only) == 0 || slices.Contains(req.Only, a.Name))
	}
	var volumes []string
	for _, a := range point.Artifacts {
		if a.Kind == "volume" && selected(a) {
			volumes = append(volumes, a.Name)
		}
	}
	plan, reason, err := s.restoreTargets().PlanTarget(ctx, TargetRequest{
		Run: r.ID, Mode: req.Target.Mode, Target: req.Target.Name, Force: req.Force,
		Application: r.Application, App: r.App, Volumes: volumes, Manifests: manifests,
		ReadArtifact: func(ctx context.Context, a catalog.Artifact) ([]byte, error) { return s.readArtifact(ctx, r.ID, a) },
	})
	if err != nil || reason != "" {
		return bp, nil, reason, err
	}
	if plan == nil {
		plan = &TargetPlan{}
	}
	for _, a := range point.Artifacts {
		if !selected(a) {
			continue
		}
		ra := RestoreArtifact{Name: a.Name, Kind: a.Kind, ManifestID: a.ManifestID, Files: a.Files, Bytes: a.Bytes}
		if a.Kind == "volume" {
			ra.Location = plan.Locations[a.Name]
		}
		r.Restore.Artifacts = append(r.Restore.Artifacts, ra)
	}
	if plan.Application != "" {
		r.Application = plan.Application
	}
	if plan.App != nil {
		r.App = *plan.App
	}
	if len(plan.Start) > 0 {
		if bp, err = s.withStartSteps(ctx, r, plan.Start); errors.Is(err, errBlueprintUnavailable) {
			return nil, nil, "", err
		} else if err != nil {
			return bp, nil, fmt.Sprintf("blueprint %s: the steps that start the restored application cannot be added to its restore action: %v", r.Blueprint, err), nil
		}
	}
	return bp, plan, "", nil
}

// withStartSteps gives r a blueprint that is its own with steps added to
// the restore action right after the volumes are imported (the snapshot
// step; the end when it has none), and returns it parsed. The run then
// shows them as its own steps, and any coordinator that takes it over
// renders the same ones.
func (s *Service) withStartSteps(ctx context.Context, r *Run, steps []map[string]any) (*blueprint.Blueprint, error) {
	source, err := s.runBlueprintSource(ctx, r)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(source, &doc); err != nil {
		return nil, err
	}
	spec, _ := doc["spec"].(map[string]any)
	actions, _ := spec["actions"].(map[string]any)
	restore, ok := actions[blueprint.ActionRestore].([]any)
	if !ok {
		return nil, errors.New("its spec.actions.restore is not a list of steps")
	}
	at := len(restore)
	for i, st := range restore {
		if m, ok := st.(map[string]any); ok && m["kind"] == blueprint.KindSnapshot {
			at = i + 1
			break
		}
	}
	added := make([]any, 0, len(restore)+len(steps))
	added = append(added, restore[:at]...)
	for _, st := range steps {
		added = append(added, st)
	}
	actions[blueprint.ActionRestore] = append(added, restore[at:]...)
	derived, err := yaml.Marshal(doc)
	if err != nil {
		return nil, err
	}
	bp, err := s.blueprints.parse(r.Blueprint, derived)
	if err != nil {
		return nil, err
	}
	digest, err := s.storeBlueprint(ctx, derived)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errBlueprintUnavailable, err)
	}
	r.BlueprintDigest, r.BlueprintSource = digest, nil
	return bp, nil
}

// runBlueprintSource returns the source of the blueprint r renders from.
func (s *Service) runBlueprintSource(ctx context.Context, r *Run) ([]byte, error) {
	if len(r.BlueprintSource) > 0 {
		return r.BlueprintSource, nil
	}
	if src, ok := s.sources.get(r.BlueprintDigest); ok {
		return src, nil
	}
	raw, err := s.runs.Get(ctx, blueprintKey(r.BlueprintDigest))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errBlueprintUnavailable, err)
	}
	return raw, nil
}

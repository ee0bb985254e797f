package coordinator

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/services/catalog"
)

// RestoreTargets is the platform's part of planning a restore: whether
// the target can take it, and where each volume is imported. The saga is
// the same on every platform; only what this answers differs (a
// directory per volume on the local platform; a PVC, namespace/name, on
// Kubernetes, where a restore to new also brings the application's
// objects into the target namespace).
//
// The coordinator uses Config.Apps when it implements RestoreTargets (the
// Kubernetes platform's application source does), else localTargets.
type RestoreTargets interface {
	// PlanTarget checks req's target and says where each volume goes. It
	// changes nothing: a request that cannot be carried out returns the
	// reason, in words that name the fix; err is for failures a retry can
	// fix (the bus, the API server).
	PlanTarget(ctx context.Context, req TargetRequest) (plan *TargetPlan, reason string, err error)
}

// TargetRequest is one restore's target, as planning knows it.
type TargetRequest struct {
	Run events.RunID
	// Mode is new or production; Target is the new target's name (a
	// directory, a namespace), empty in production.
	Mode, Target string
	// Force lets a restore to new go into a target that holds something.
	Force bool
	// Application is the restore point's application, and App what its
	// backup fixed of it (the request's parameters merged in).
	Application string
	App         AppInfo
	// Volumes are the point's volumes being restored (after --only).
	Volumes []string
	// Manifests is the point's captured objects (Kubernetes), nil when it
	// has none.
	Manifests *catalog.Artifact
	// ReadArtifact reads an artifact of the point from the repository,
	// through a data mover.
	ReadArtifact func(ctx context.Context, a catalog.Artifact) ([]byte, error)
}

// TargetPlan is how a restore reaches its target.
type TargetPlan struct {
	// Locations are each volume's import target, by volume name.
	Locations map[string]string
	// Application and App, when set, replace the run's: the restore acts
	// on a copy of the application at the target (on Kubernetes, a
	// restore to new acts on the copy in the target namespace), so that
	// steps naming no namespace, and exec targets named by pod alone, act
	// on the copy, never on the original.
	Application string
	App         *AppInfo
	// Start are steps (in blueprint form) run right after the volumes are
	// imported, before the blueprint's own later restore steps: they start
	// what Prepare created stopped.
	Start []map[string]any
	// Prepare readies the target for the imports. It runs once the
	// restore is accepted, before its first command, and returns a line
	// for the run's history. nil: nothing to do.
	Prepare func(ctx context.Context) (string, error)
}

// platformArtifacts are artifacts a platform stores with a restore point
// for its own use (the Kubernetes objects a backup captured). A restore
// reads them through its RestoreTargets (TargetRequest.Manifests); they
// are not volumes or dumps a run imports.
var platformArtifacts = []string{kube.ManifestArtifact}

func isPlatformArtifact(name string) bool { return slices.Contains(platformArtifacts, name) }

// restoreTargets is the platform that plans this coordinator's restores.
func (s *Service) restoreTargets() RestoreTargets {
	if t, ok := s.cfg.Apps.(RestoreTargets); ok {
		return t
	}
	return localTargets{}
}

// localTargets plans restores on the local platform: every volume is a
// directory, restored to new into <target>/<volume>, or in production
// over the directory the Application file names.
type localTargets struct{}

var _ RestoreTargets = localTargets{}

func (localTargets) PlanTarget(_ context.Context, req TargetRequest) (*TargetPlan, string, error) {
	plan := &TargetPlan{Locations: map[string]string{}}
	switch req.Mode {
	case "new":
		if len(req.Volumes) == 0 && req.Target == "" {
			// Only dumps: the blueprint's restore steps say where they go
			// (its parameters, such as the database).
			return plan, "", nil
		}
		if !filepath.IsAbs(req.Target) {
			return nil, fmt.Sprintf("target %q: a restore to new on the local platform needs an absolute directory to restore into (tidemark restore makes a path such as ./restored absolute; a bare name is a namespace, on Kubernetes)", req.Target), nil
		}
		if entries, err := os.ReadDir(req.Target); err == nil && len(entries) > 0 && !req.Force {
			return nil, fmt.Sprintf("target %s is not empty; restore into a new or empty directory, or pass --force to replace the volumes' directories in it (their previous contents are kept beside them); nothing was changed", req.Target), nil
		}
		for _, v := range req.Volumes {
			plan.Locations[v] = filepath.Join(req.Target, v)
		}
	case "production":
		if req.Target != "" {
			return nil, fmt.Sprintf("target %q: a restore to production goes back where the application's volumes are; give no target (or restore to new with --to new --target DIR)", req.Target), nil
		}
		for _, v := range req.Volumes {
			p := req.App.Volumes[v]
			if p == "" {
				return nil, fmt.Sprintf("volume %s: application %s no longer has a volume of that name, so a restore to production has nowhere to put it (restore to new instead, or add it to the Application's spec.volumes)", v, req.Application), nil
			}
			if !filepath.IsAbs(p) {
				return nil, fmt.Sprintf("volume %s: %q is not an absolute directory on the local platform", v, p), nil
			}
			plan.Locations[v] = p
		}
	default:
		return nil, fmt.Sprintf("target mode %q: want new or production", req.Mode), nil
	}
	return plan, "", nil
}

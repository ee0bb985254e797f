package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/tidemark-dev/tidemark/pkg/application"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
)

// kubeApps is the coordinator's platform on Kubernetes: applications are
// found in the cluster (kube.Applications), a backup captures the
// application's objects (captureManifests), and restores are planned into
// PVCs and namespaces.
type kubeApps struct {
	*kube.Applications
}

var (
	_ application.Source = (*kubeApps)(nil)
	_ RestoreTargets     = (*kubeApps)(nil)
	_ manifestCapturer   = (*kubeApps)(nil)
)

// heldStartTimeout bounds each step that starts a workload a restore to new
// held: its pods must come up on the restored volumes (image pulls, a
// database's recovery).
const heldStartTimeout = "15m"

// CaptureManifests implements manifestCapturer.
func (k *kubeApps) CaptureManifests(ctx context.Context, application string) ([]byte, error) {
	return k.Capture(ctx, application)
}

// PlanTarget implements RestoreTargets. An import's target is a PVC,
// namespace/name: in production the application's own; in a restore to
// new the PVC of the same name in the target namespace, created there,
// with the rest of the application's objects, from what the backup
// captured.
func (k *kubeApps) PlanTarget(ctx context.Context, req TargetRequest) (*TargetPlan, string, error) {
	switch req.Mode {
	case "production":
		return k.planProduction(ctx, req)
	case "new":
		return k.planNew(ctx, req)
	}
	return nil, fmt.Sprintf("target mode %q: want new or production", req.Mode), nil
}

func (k *kubeApps) planProduction(ctx context.Context, req TargetRequest) (*TargetPlan, string, error) {
	if req.Target != "" {
		return nil, fmt.Sprintf("target %q: a restore to production goes back into the application's own PVCs; give no target (or restore into another namespace with --to new --target NAMESPACE)", req.Target), nil
	}
	plan := &TargetPlan{Locations: map[string]string{}}
	for _, v := range req.Volumes {
		ns, pvc, ok := kube.ParsePVCRef(req.App.Volumes[v])
		if !ok {
			return nil, fmt.Sprintf("volume %s: application %s has no PVC of that name, so a restore to production has nowhere to put it (restore into another namespace instead: --to new --target NAMESPACE)", v, req.Application), nil
		}
		exists, err := k.Platform.PVCExists(ctx, ns, pvc)
		if err != nil {
			return nil, "", err
		}
		if !exists {
			return nil, fmt.Sprintf("volume %s: PVC %s/%s no longer exists (or is being deleted), so a restore to production has nowhere to put it; restore into another namespace instead (--to new --target NAMESPACE), or create the PVC again; nothing was changed", v, ns, pvc), nil
		}
		plan.Locations[v] = ns + "/" + pvc
	}
	return plan, "", nil
}

func (k *kubeApps) planNew(ctx context.Context, req TargetRequest) (*TargetPlan, string, error) {
	if req.Target == "" {
		if len(req.Volumes) == 0 {
			// Only dumps: the blueprint's restore steps say where they go.
			return &TargetPlan{}, "", nil
		}
		return nil, "a restore to new on Kubernetes needs a target namespace (--target NAMESPACE): the application's objects and volumes are restored into it, and it is created if missing", nil
	}
	copyName, err := kube.AppNameIn(req.Application, req.Target)
	if err != nil {
		return nil, fmt.Sprintf("target %q: a restore to new on Kubernetes goes into a namespace, named as a DNS label such as shop-restored: %v", req.Target, err), nil
	}
	if req.Target == req.App.Namespace {
		return nil, fmt.Sprintf("target %s is the application's own namespace: a restore to new goes into another one (to overwrite the application in place, restore --to production)", req.Target), nil
	}
	if req.Manifests == nil {
		return nil, fmt.Sprintf("restore point has no Kubernetes objects stored with it (%s), so there is nothing to create in namespace %s and no PVC to import its volumes into; restore it --to production, or restore a point of a newer backup; nothing was changed", kube.ManifestArtifact, req.Target), nil
	}
	bundle, err := req.ReadArtifact(ctx, *req.Manifests)
	if err != nil {
		if ctx.Err() != nil {
			return nil, "", err
		}
		return nil, fmt.Sprintf("the point's Kubernetes objects (%s) cannot be read from the repository, so nothing was changed: %v", kube.ManifestArtifact, err), nil
	}
	nr, err := kube.PlanNamespaceRestore(bundle, req.App.Namespace, req.Target, string(req.Run), req.Force)
	if err != nil {
		return nil, fmt.Sprintf("the point's Kubernetes objects cannot be restored into namespace %s: %v", req.Target, err), nil
	}
	plan := &TargetPlan{Locations: map[string]string{}, Application: copyName}
	for _, v := range req.Volumes {
		_, pvc, ok := kube.ParsePVCRef(req.App.Volumes[v])
		if !ok {
			pvc = v // on Kubernetes a volume is named by its PVC
		}
		if !slices.Contains(nr.Claims, pvc) {
			return nil, fmt.Sprintf("volume %s: the objects stored with the point have no PVC %s to restore it into (they have: %s); restore it --to production, or leave it out with --only", v, pvc, strings.Join(nr.Claims, ", ")), nil
		}
		plan.Locations[v] = req.Target + "/" + pvc
	}
	existing, err := k.Platform.ExistingObjects(ctx, nr)
	if errors.Is(err, kube.ErrInvalidSpec) {
		return nil, err.Error(), nil
	}
	if err != nil {
		return nil, "", err
	}
	if len(existing) > 0 && !req.Force {
		return nil, fmt.Sprintf("namespace %s already holds %s the restore would create (%s); restore into another namespace, or pass --force to update them to the point's and replace their volumes' contents (the previous contents are kept in each volume, in .tidemark-previous-<run>); nothing was changed",
			req.Target, plural(len(existing), "object"), strings.Join(existing, ", ")), nil
	}
	app, err := appInNamespace(req.App, copyName, req.Target)
	if err != nil {
		return nil, "", err
	}
	plan.App = &app
	names := map[string]bool{}
	var held []string
	for _, w := range nr.Held {
		held = append(held, fmt.Sprintf("%s (%d)", w.Workload(), w.Replicas))
		if w.Replicas == 0 {
			continue // captured stopped: it stays so
		}
		name := stepName("tidemark-start-"+strings.ToLower(w.Kind)+"-"+w.Name, names)
		plan.Start = append(plan.Start, map[string]any{
			"name": name, "kind": kube.KindScale, "timeout": heldStartTimeout,
			"scale": map[string]any{"namespace": req.Target, "workload": w.Workload(), "replicas": w.Replicas},
		})
	}
	plan.Prepare = func(ctx context.Context) (string, error) {
		rep, err := k.Platform.RestoreNamespace(ctx, nr)
		if err != nil {
			return "", fmt.Errorf("restoring the point's objects into namespace %s failed: %w; what was created is left there for inspection (the workloads at 0 replicas): delete the namespace (kubectl delete namespace %s), or restore again with --force to finish", req.Target, err, req.Target)
		}
		line := fmt.Sprintf("restored the point's objects into namespace %s: %d created, %d updated, %d left as they were",
			req.Target, rep.Count(kube.RestoreCreated), rep.Count(kube.RestoreUpdated), rep.Count(kube.RestoreSkipped))
		if len(held) > 0 {
			line += "; held at 0 replicas until the volumes are imported: " + strings.Join(held, ", ")
		}
		return line, nil
	}
	return plan, "", nil
}

// appInNamespace is what a run sees of the copy of an application
// restored into namespace ns, called name: its template context moved
// there. Volumes stay the original's: the saga refuses a restore to new
// whose steps name them.
func appInNamespace(a AppInfo, name, ns string) (AppInfo, error) {
	out := a
	out.Name, out.Namespace = name, ns
	if a.Platform == nil {
		return out, nil
	}
	// A deep copy: the run's original context must not change.
	raw, err := json.Marshal(a.Platform)
	if err != nil {
		return AppInfo{}, err
	}
	var pc application.PlatformContext
	if err := json.Unmarshal(raw, &pc); err != nil {
		return AppInfo{}, err
	}
	if pc.StatefulSet != nil {
		pc.StatefulSet.Namespace = ns
	}
	if pc.Deployment != nil {
		pc.Deployment.Namespace = ns
	}
	if md, ok := pc.Object["metadata"].(map[string]any); ok {
		if _, namespaced := md["namespace"]; namespaced {
			md["namespace"] = ns
		}
	}
	out.Platform = &pc
	return out, nil
}

var notStepName = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// stepName makes s a step name no other step of taken has.
func stepName(s string, taken map[string]bool) string {
	s = notStepName.ReplaceAllString(s, "-")
	name := s
	for i := 2; taken[name]; i++ {
		name = fmt.Sprintf("%s-%d", s, i)
	}
	taken[name] = true
	return name
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

package coordinator

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/tidemark-dev/tidemark/blueprints"
	"github.com/tidemark-dev/tidemark/pkg/application"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

// ErrNoBlueprint is returned for a blueprint reference that names neither a
// readable file nor a bundled blueprint.
var ErrNoBlueprint = errors.New("blueprint not found")

// loadBlueprint resolves a blueprint reference: a path to a YAML file
// (absolute, or relative to baseDir, the directory of the Application files),
// else the name of a bundled blueprint. It returns the file's bytes, which
// the run keeps so all its steps render from the same blueprint.
func (c *blueprintCache) load(ref, baseDir string) ([]byte, *blueprint.Blueprint, error) {
	if ref == "" {
		return nil, nil, fmt.Errorf("%w: no blueprint named: bind one to the application (spec.blueprint in its Application file; on Kubernetes, the annotation tidemark.io/blueprint on its workload or custom resource) or name one in the request (tidemark backup --blueprint)", ErrNoBlueprint)
	}
	if name, data, ok := application.EmbeddedBlueprint(ref); ok {
		// A platform read it from its own store (a Blueprint object).
		bp, err := c.parse(name, data)
		if err != nil {
			return nil, nil, err
		}
		return data, bp, nil
	}
	var data []byte
	var file string
	if strings.HasSuffix(ref, ".yaml") || strings.HasSuffix(ref, ".yml") || strings.ContainsRune(ref, os.PathSeparator) {
		file = ref
		if !filepath.IsAbs(file) && baseDir != "" {
			file = filepath.Join(baseDir, file)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrNoBlueprint, err)
		}
		data = b
	} else {
		file = ref + "/blueprint.yaml"
		b, err := fs.ReadFile(blueprints.FS, file)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %q is neither a file nor a bundled blueprint (bundled: %s)", ErrNoBlueprint, ref, strings.Join(bundledNames(), ", "))
		}
		data = b
	}
	bp, err := c.parse(file, data)
	if err != nil {
		return nil, nil, err
	}
	return data, bp, nil
}

func parseBlueprint(file string, data []byte) (*blueprint.Blueprint, error) {
	bp, err := blueprint.Parse(file, data)
	if err != nil {
		return nil, err
	}
	if err := blueprint.Lint(bp).Err(); err != nil {
		return nil, fmt.Errorf("blueprint %s does not pass lint (run `tidemark blueprint lint %s`):\n%w", file, file, err)
	}
	if len(bp.Action(blueprint.ActionBackup)) == 0 {
		return nil, fmt.Errorf("blueprint %s has no backup action", file)
	}
	return bp, nil
}

func bundledNames() []string {
	entries, _ := fs.ReadDir(blueprints.FS, ".")
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names
}

// appInfo fixes what the run needs of the application.
func appInfo(app *application.Application, bp *blueprint.Blueprint) (AppInfo, error) {
	params, err := bp.ParamValues(app.Spec.Params)
	if err != nil {
		return AppInfo{}, fmt.Errorf("application %s: spec.params: %w", app.Metadata.Name, err)
	}
	if app.Resolved != nil {
		return resolvedAppInfo(app, params)
	}
	ns := ""
	if i := strings.IndexByte(app.Metadata.Name, '/'); i > 0 {
		ns = app.Metadata.Name[:i]
	}
	return AppInfo{
		Name:      app.Metadata.Name,
		Namespace: ns,
		Volumes:   app.Spec.Volumes,
		Params:    params,
		// On the local platform every exec step runs on this host.
		Targets: []string{"localhost"},
	}, nil
}

// blueprintCache keeps parsed blueprints by their source: parsing on every
// event would cost more than the rest of a transition, and thousands of runs
// share a handful of blueprints. A parsed blueprint is never modified.
type blueprintCache struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]*blueprint.Blueprint
}

func (c *blueprintCache) get(r *Run) (*blueprint.Blueprint, error) {
	return c.parse(r.Blueprint, r.BlueprintSource)
}

func (c *blueprintCache) parse(file string, source []byte) (*blueprint.Blueprint, error) {
	key := sha256.Sum256(append([]byte(file+"\x00"), source...))
	c.mu.Lock()
	bp, ok := c.m[key]
	c.mu.Unlock()
	if ok {
		return bp, nil
	}
	bp, err := parseBlueprint(file, source)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) > 1000 {
		c.m = map[[sha256.Size]byte]*blueprint.Blueprint{}
	}
	c.m[key] = bp
	return bp, nil
}

// templateContext is what the run's templates see now.
func (r *Run) templateContext(bp *blueprint.Blueprint) blueprint.TemplateContext {
	steps := make(map[string]blueprint.StepResult)
	for _, t := range r.Tasks {
		if t.Role == RoleStep && t.State == TaskSucceeded {
			steps[t.Name] = blueprint.StepResult{Output: t.Outputs}
		}
	}
	var backup *blueprint.BackupRecord
	var restore *blueprint.RestoreInfo
	volumes := r.App.Volumes
	if r.Restore != nil {
		restore = &blueprint.RestoreInfo{Mode: r.Restore.Target.Mode, Target: r.Restore.Target.Name}
		backup = &blueprint.BackupRecord{Steps: map[string]blueprint.StepResult{}, Time: r.Restore.BackupTime}
		for step, out := range r.Restore.BackupSteps {
			backup.Steps[step] = blueprint.StepResult{Output: out}
		}
		// A restore's steps work on the restored volumes.
		volumes = map[string]string{}
		for _, a := range r.Restore.Artifacts {
			if a.Location != "" {
				volumes[a.Name] = a.Location
			}
		}
	}
	pc, params := r.App.platformContext()
	switch {
	case pc.Volumes != nil && r.Restore == nil:
		volumes = pc.Volumes
	case pc.Volumes != nil:
		// Where the platform names volumes itself (Kubernetes: a PVC, in
		// .Namespace), a restored volume keeps its name: the restore went
		// into the PVC of that name, the application's or the copy's.
		volumes = map[string]string{}
		for _, a := range r.Restore.Artifacts {
			if v, ok := pc.Volumes[a.Name]; ok && a.Location != "" {
				volumes[a.Name] = v
			}
		}
	}
	return blueprint.TemplateContext{
		Backup:      backup,
		Restore:     restore,
		App:         blueprint.App{Name: r.App.Name, Namespace: r.App.Namespace, Volumes: volumes},
		Namespace:   r.App.Namespace,
		Targets:     r.App.Targets,
		StatefulSet: pc.StatefulSet,
		Deployment:  pc.Deployment,
		Object:      pc.Object,
		Steps:       steps,
		Secrets:     blueprint.SecretPlaceholders(bp),
		Params:      params,
		Time:        r.Time,
	}
}

package hookrunner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"github.com/tidemark-dev/tidemark/pkg/platform"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
)

// ErrNeedsKubernetes: a step of a kind only the Kubernetes platform runs
// reached a hookrunner serving the local platform.
var ErrNeedsKubernetes = errors.New("step kind needs the Kubernetes platform")

// kubernetesOnly is the step runner of a hookrunner on the local platform.
// The kinds the Kubernetes platform adds are registered with package
// blueprint wherever it is linked in, so a blueprint using them lints and
// renders here too; the step must then fail at once, naming the fix, not as
// a kind nobody heard of.
type kubernetesOnly struct{}

func (kubernetesOnly) Kinds() []string { return []string{kube.KindScale, kube.KindApply} }

func (kubernetesOnly) RunStep(_ context.Context, req platform.StepRequest) (map[string]string, error) {
	return nil, fmt.Errorf("%w: %s steps are not supported on the local platform (they act on Kubernetes objects); run the hookrunner with `tidemark serve --platform kube`", ErrNeedsKubernetes, req.Kind)
}

func (s *Service) platformSteps() platform.StepRunner {
	if s.cfg.Steps != nil {
		return s.cfg.Steps
	}
	return kubernetesOnly{}
}

// secretMarker starts every secret placeholder (blueprint.SecretPlaceholder).
var secretMarker = []byte(strings.TrimSuffix(blueprint.SecretPlaceholder(""), "}"))

// runPlatformStep runs a step of a kind the platform adds (scale, apply).
func (s *Service) runPlatformStep(ctx context.Context, steps platform.StepRunner, req events.HookRequested, started time.Time) events.Payload {
	if bytes.Contains(req.Spec, secretMarker) {
		// Whatever such a step creates or changes is stored in the cluster,
		// readable by anyone who may read the object.
		return failed(req, true, "step %s: %s steps take no secrets: one would be stored in the object the step writes; reference a Kubernetes Secret from the object instead", req.Step, req.Kind)
	}
	sr := platform.StepRequest{Kind: req.Kind, Spec: req.Spec}
	if s.cfg.Namespace != nil {
		ns, err := s.cfg.Namespace(req.Application)
		if err != nil {
			return failed(req, true, "step %s: the application's namespace: %v", req.Step, err)
		}
		sr.Namespace = ns
	}
	out, err := steps.RunStep(ctx, sr)
	if err != nil {
		// A step that failed after it acted (a scale step whose wait timed
		// out) returns its outputs too: what it changed, from which the
		// coordinator renders the inverse that undoes it.
		acted := ""
		if len(out) > 0 {
			acted = " (it had already acted: " + formatOutputs(out) + ")"
			s.cfg.Logger.Warn("a step failed after it changed the application", "run", req.RunID, "step", req.Step, "kind", req.Kind, "outputs", out)
		}
		f := failed(req, ctx.Err() == nil && permanentStepError(err), "step %s: %v%s", req.Step, err, acted)
		f.Outputs = nonEmpty(out)
		return f
	}
	return events.HookSucceeded{RunID: req.RunID, Step: req.Step, Outputs: nonEmpty(out), StartedAt: started, FinishedAt: s.cfg.Now().UTC()}
}

// permanentStepError says whether running the step again cannot help: the
// spec is wrong, what it names does not exist, the platform cannot run it,
// or an operator reported failure.
func permanentStepError(err error) bool {
	for _, e := range []error{ErrNeedsKubernetes, kube.ErrInvalidSpec, kube.ErrNotFound, kube.ErrConditionFailed, kube.ErrInvalidAppName} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func formatOutputs(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(k + "=" + m[k])
	}
	return b.String()
}

type applicationKey struct{}

// withApplication carries the step's application to the Executor, whose
// interface has no other way in.
func withApplication(ctx context.Context, app string) context.Context {
	return context.WithValue(ctx, applicationKey{}, app)
}

// inNamespace puts an exec target given as a bare pod name into its
// application's namespace: templates name pods bare (.Targets,
// .StatefulSet.Pods) and one hookrunner serves every namespace. It wraps
// the Executor, so exec, dump and wait steps all get it.
type inNamespace struct {
	next      platform.Executor
	namespace func(application string) (string, error)
}

func (e inNamespace) Exec(ctx context.Context, req platform.ExecRequest) (platform.ExecResult, error) {
	app, _ := ctx.Value(applicationKey{}).(string)
	if t := req.Spec.Target; t != "" && !strings.Contains(t, "/") && app != "" {
		ns, err := e.namespace(app)
		if err != nil {
			return platform.ExecResult{}, fmt.Errorf("exec.target %q: the application's namespace: %w", t, err)
		}
		req.Spec.Target = ns + "/" + t
	}
	return e.next.Exec(ctx, req)
}

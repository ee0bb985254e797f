package hookrunner

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/application"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"github.com/tidemark-dev/tidemark/pkg/platform"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/tests/bustest"
)

// A blueprint with Kubernetes steps lints everywhere (the kinds are
// registered wherever the kube package is linked in), so a local
// hookrunner must turn such a step down saying how to run it.
func TestKubernetesStepKindsOnTheLocalPlatformNameTheFix(t *testing.T) {
	h := start(t)
	h.env.Publish(t, command("run-local", "shop/app", "stop", kube.KindScale, kube.ScaleSpec{Workload: "statefulset/db"}, 0))
	h.env.Publish(t, command("run-local", "shop/app", "backup-cr", kube.KindApply, kube.ApplySpec{Object: map[string]any{"kind": "X"}}, 0))
	for _, step := range []string{"stop", "backup-cr"} {
		ev := h.env.WaitFor(t, 20*time.Second, step+" failure", bustest.Step[events.HookFailed]("run-local", step))
		f, _ := events.As[events.HookFailed](ev)
		if !f.Permanent || !strings.Contains(f.Error, "not supported on the local platform") || !strings.Contains(f.Error, "tidemark serve --platform kube") {
			t.Errorf("%s: %+v, want a permanent failure naming `tidemark serve --platform kube`", step, f)
		}
	}
}

// execRecorder is a TEST-ONLY stand-in for pods/exec (nothing can run a
// command in a pod without a kubelet): it records the requests it gets.
type execRecorder struct {
	mu      sync.Mutex
	targets []string
}

func (e *execRecorder) Exec(_ context.Context, req platform.ExecRequest) (platform.ExecResult, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.targets = append(e.targets, req.Spec.Target)
	return platform.ExecResult{}, nil
}

func (e *execRecorder) seen() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.targets...)
}

// Templates name pods bare ({{ index .Targets 0 }}); one hookrunner serves
// every namespace, so a bare pod is the step's application's.
func TestBarePodTargetsAreInTheApplicationsNamespace(t *testing.T) {
	env := bustest.Start(t)
	rec := &execRecorder{}
	s, err := New(Config{InstanceID: "hr-ns", Apps: application.Dir(t.TempDir()), Exec: rec, Namespace: kube.AppNamespace}, env.Bus)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { stopNow(t, cancel, done) })

	for i, tc := range []struct{ app, target, want string }{
		{"shop/statefulset/db", "db-0", "shop/db-0"},
		{"shop:app=db", "db-1", "shop/db-1"},
		{"shop/db", "other/db-0", "other/db-0"},
	} {
		step := "exec-" + string(rune('a'+i))
		env.Publish(t, command("run-ns", tc.app, step, blueprint.KindExec, blueprint.ExecSpec{Target: tc.target, Command: []string{"true"}}, 0))
		env.WaitFor(t, 20*time.Second, step, bustest.Step[events.HookSucceeded]("run-ns", step))
		if got := rec.seen(); got[len(got)-1] != tc.want {
			t.Errorf("%s, target %s: exec in %q, want %q", tc.app, tc.target, got[len(got)-1], tc.want)
		}
	}
	env.Publish(t, command("run-ns", "Not A Name", "bad", blueprint.KindExec, blueprint.ExecSpec{Target: "db-0", Command: []string{"true"}}, 0))
	ev := env.WaitFor(t, 20*time.Second, "bad", bustest.Step[events.HookFailed]("run-ns", "bad"))
	if f, _ := events.As[events.HookFailed](ev); !strings.Contains(f.Error, `exec.target "db-0"`) || !strings.Contains(f.Error, "invalid application name") {
		t.Errorf("an application name without a namespace: %+v", f)
	}
}

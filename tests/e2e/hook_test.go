//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

// TestHookExecInPod is (b): an exec step published to NATS reaches the
// hookrunner running in the cluster, which runs the command in a busybox
// pod of another namespace through pods/exec with its own ServiceAccount
// (deploy/base/rbac.yaml), and answers hook.succeeded with the key=value
// lines the command printed.
func TestHookExecInPod(t *testing.T) {
	c := tidemark(t)
	start := time.Now()
	ns := c.testNamespace(t, "e2e-hook-")
	ctx := context.Background()
	zero := int64(0)
	_, err := c.core.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "busybox"},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{
				Name: "shell", Image: busyboxImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sleep", "3600"},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.waitPodReady(t, ns, "busybox", 2*time.Minute)
	nb := connectBus(t, c)

	run := runID("hook")
	spec, err := json.Marshal(blueprint.ExecSpec{
		Target:  ns + "/busybox", // namespace/pod on the kube platform
		Command: []string{"sh", "-c", `echo greeting=hello; echo pod=$(hostname); echo "not a key value line"; echo sum=$((40+2))`},
	})
	if err != nil {
		t.Fatal(err)
	}
	cmd := events.New("tidemark/e2e", ns+"/busybox", events.HookRequested{
		RunID: run, Application: ns + "/busybox", Step: "probe", Kind: "exec", Spec: spec,
		Timeout: events.Duration(time.Minute), IdempotencyKey: string(run) + ":probe",
	}, time.Now())
	cmd.CorrelationID = string(run)
	sent := time.Now()
	nb.Publish(t, cmd)
	ev := nb.WaitFor(t, 2*time.Minute, "hook.succeeded or hook.failed of "+string(run), func(ev events.Event) bool {
		if s, ok := events.As[events.HookSucceeded](ev); ok {
			return s.RunID == run
		}
		f, ok := events.As[events.HookFailed](ev)
		return ok && f.RunID == run
	})
	if f, ok := events.As[events.HookFailed](ev); ok {
		t.Fatalf("hook.failed: %+v", f)
	}
	s, _ := events.As[events.HookSucceeded](ev)
	want := map[string]string{"greeting": "hello", "pod": "busybox", "sum": "42"}
	if len(s.Outputs) != len(want) {
		t.Errorf("outputs %v, want %v", s.Outputs, want)
	}
	for k, v := range want {
		if s.Outputs[k] != v {
			t.Errorf("output %s = %q, want %q (outputs %v)", k, s.Outputs[k], v, s.Outputs)
		}
	}
	if ev.CausationID != cmd.ID || ev.CorrelationID != string(run) {
		t.Errorf("hook.succeeded causation %q correlation %q, want %q and %q", ev.CausationID, ev.CorrelationID, cmd.ID, run)
	}
	t.Logf("hook.succeeded %v after the publish (the step itself %v); test %v with namespace and pod setup",
		time.Since(sent).Round(time.Millisecond), s.FinishedAt.Sub(s.StartedAt).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

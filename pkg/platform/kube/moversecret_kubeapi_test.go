//go:build kubeapi

package kube

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/tidemark-dev/tidemark/events"
)

// A mover's credentials are a Secret of its own, owned by its pod and
// deleted with it; a redelivered item adopts the pod already running it,
// and a new attempt replaces an earlier attempt's pod.
func TestMoverCredentialsSecretAndRedelivery(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.boundPVC("data", "nfs.csi.tidemark.test", nil, nil)
	opts := moverOpts
	opts.Env = map[string]string{"TIDEMARK_REPOSITORY_PASSWORD_FILE": MoverCredentialsPath + "/password"}
	opts.Credentials = map[string][]byte{"password": []byte("pw-4e1d0c")}
	run := events.RunID("run-secret")
	req := MoverRequest{Run: run, Volume: "data", Direction: MoverImport, Item: `{"idempotencyKey":"a"}`, Namespace: h.ns, PVC: "data"}

	m, err := h.p.StartMover(ctx, req, opts)
	if err != nil {
		t.Fatal(err)
	}
	sec, err := h.p.c.Core.CoreV1().Secrets(h.ns).Get(ctx, m.Pod.Name, getOpts)
	if err != nil {
		t.Fatal(err)
	}
	if string(sec.Data["password"]) != "pw-4e1d0c" || len(sec.OwnerReferences) != 1 || sec.OwnerReferences[0].UID != m.Pod.UID ||
		sec.Labels[LabelComponent] != ComponentMover {
		t.Errorf("Secret %+v: want the credentials, owned by pod %s, labelled as a mover's", sec.ObjectMeta, m.Pod.UID)
	}
	spec, _ := json.Marshal(m.Pod.Spec)
	if strings.Contains(string(spec), "pw-4e1d0c") {
		t.Error("the pod's spec holds the password")
	}
	c := m.Pod.Spec.Containers[0]
	var mounted bool
	for _, vm := range c.VolumeMounts {
		mounted = mounted || (vm.MountPath == MoverCredentialsPath && vm.ReadOnly)
	}
	if !mounted || c.TerminationMessagePath != MoverResultPath || !slices.Contains(c.SecurityContext.Capabilities.Add, "CHOWN") ||
		m.Pod.Spec.SecurityContext.FSGroup != nil {
		t.Errorf("container %+v: want the Secret mounted read-only, the result path, an import's capabilities, no fsGroup", c)
	}

	// The same item again (its data mover died): the running pod is adopted.
	again, err := h.p.StartMover(ctx, req, opts)
	if err != nil {
		t.Fatal(err)
	}
	if again.Pod.UID != m.Pod.UID {
		t.Errorf("a redelivered item made a new pod (%s, was %s); it must adopt the one running it", again.Pod.UID, m.Pod.UID)
	}
	// Another attempt for the run's volume: the earlier pod is replaced.
	req.Item = `{"idempotencyKey":"b"}`
	next, err := h.p.StartMover(ctx, req, opts)
	if err != nil {
		t.Fatal(err)
	}
	if next.Pod.UID == m.Pod.UID || !slices.Equal(next.Pod.Spec.Containers[0].Args, MoverArgs(req.Item, MoverImport)) {
		t.Errorf("another attempt kept the earlier pod (%s) or its args %q", next.Pod.UID, next.Pod.Spec.Containers[0].Args)
	}
	if sec, err := h.p.c.Core.CoreV1().Secrets(h.ns).Get(ctx, next.Pod.Name, getOpts); err != nil || sec.OwnerReferences[0].UID != next.Pod.UID {
		t.Errorf("the Secret after the new attempt: %v, %v; want it owned by the new pod", sec, err)
	}

	// The run's sweep finds the Secret through its pod.
	if err := h.p.CleanupMovers(ctx, run); err != nil {
		t.Fatal(err)
	}
	if _, err := h.p.c.Core.CoreV1().Secrets(h.ns).Get(ctx, next.Pod.Name, getOpts); !apierrors.IsNotFound(err) {
		t.Errorf("the mover's Secret after CleanupMovers: %v, want NotFound", err)
	}
	if _, err := next.WaitEnd(ctx); err == nil || !strings.Contains(err.Error(), "deleted before it ended") {
		t.Errorf("WaitEnd on a deleted pod: %v", err)
	}
}

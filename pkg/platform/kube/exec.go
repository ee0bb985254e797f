package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/streaming/pkg/httpstream"
	"k8s.io/utils/exec"

	"github.com/tidemark-dev/tidemark/pkg/platform"
)

// Executor runs commands in pods through pods/exec: the WebSocket
// protocol, falling back to SPDY for servers (or proxies) that cannot
// upgrade to it. ExecSpec.Target is "pod" (in Namespace) or
// "namespace/pod"; Container defaults to the pod's first.
//
// Only a kubelet can run a command, so this file is covered by the
// real-cluster tests (issue #8), not by the apiserver-only tests of this
// package. Keep it small.
type Executor struct {
	Platform  *Platform
	Namespace string
}

var _ platform.Executor = (*Executor)(nil)

// Exec implements platform.Executor. Env is passed through env(1) and
// WorkDir through sh(1) in the container, since pods/exec has neither.
func (e *Executor) Exec(ctx context.Context, req platform.ExecRequest) (platform.ExecResult, error) {
	spec := req.Spec
	if len(spec.Command) == 0 {
		return platform.ExecResult{}, fmt.Errorf("%w: exec.command is empty", ErrInvalidSpec)
	}
	ns, pod := e.Namespace, spec.Target
	if n, p, ok := strings.Cut(spec.Target, "/"); ok {
		ns, pod = n, p
	}
	if pod == "" {
		return platform.ExecResult{}, fmt.Errorf("%w: exec.target is empty: name the pod, such as {{ index .StatefulSet.Pods 0 }}", ErrInvalidSpec)
	}
	cmd := spec.Command
	if spec.WorkDir != "" {
		cmd = append([]string{"sh", "-c", `cd "$0" && exec "$@"`, spec.WorkDir}, cmd...)
	}
	if len(spec.Env) > 0 {
		keys := sortedKeys(spec.Env)
		env := []string{"env"}
		for _, k := range keys {
			env = append(env, k+"="+spec.Env[k])
		}
		cmd = append(env, cmd...)
	}
	c := e.Platform.c
	u := c.Core.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: spec.Container, Command: cmd,
			Stdin: req.Stdin != nil, Stdout: true, Stderr: true,
		}, scheme.ParameterCodec).URL()
	ws, err := remotecommand.NewWebSocketExecutor(c.Config, "GET", u.String())
	if err != nil {
		return platform.ExecResult{}, err
	}
	spdy, err := remotecommand.NewSPDYExecutor(c.Config, "POST", u)
	if err != nil {
		return platform.ExecResult{}, err
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return platform.ExecResult{}, err
	}
	var stdout io.Writer
	outTail, errTail := &tailBuffer{max: platform.TailBytes}, &tailBuffer{max: platform.TailBytes}
	stdout = outTail
	if req.Stdout != nil {
		stdout = io.MultiWriter(req.Stdout, outTail)
	}
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: req.Stdin, Stdout: stdout, Stderr: errTail})
	res := platform.ExecResult{StdoutTail: outTail.Bytes(), StderrTail: errTail.Bytes()}
	var exit exec.CodeExitError
	if errors.As(err, &exit) {
		res.ExitCode = exit.Code
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("exec in pod %s/%s: %w", ns, pod, err)
	}
	return res, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= t.max {
		t.b = append(t.b[:0], p[len(p)-t.max:]...)
		return n, nil
	}
	if over := len(t.b) + len(p) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	t.b = append(t.b, p...)
	return n, nil
}

func (t *tailBuffer) Bytes() []byte { return t.b }

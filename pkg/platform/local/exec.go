// Package local is the platform of one host: commands are processes,
// volumes are directories. The embedded demo and most fast tests run on it.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"syscall"
	"time"

	"github.com/tidemark-dev/tidemark/pkg/platform"
)

// Executor runs commands as local processes, each in its own process group
// so a timeout kills the command and everything it started.
type Executor struct {
	// KillGrace is how long a process may take to exit after it is killed
	// before its output pipes are abandoned.
	KillGrace time.Duration
}

var _ platform.Executor = (*Executor)(nil)

// Exec implements platform.Executor.
func (e *Executor) Exec(ctx context.Context, req platform.ExecRequest) (platform.ExecResult, error) {
	if len(req.Spec.Command) == 0 {
		return platform.ExecResult{}, errors.New("exec: command is empty")
	}
	cmd := exec.CommandContext(ctx, req.Spec.Command[0], req.Spec.Command[1:]...)
	cmd.Dir = req.Spec.WorkDir
	cmd.Env = os.Environ()
	keys := make([]string, 0, len(req.Spec.Env))
	for k := range req.Spec.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		cmd.Env = append(cmd.Env, k+"="+req.Spec.Env[k])
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = e.KillGrace
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = 5 * time.Second
	}
	stdout := &tail{max: platform.TailBytes}
	stderr := &tail{max: platform.TailBytes}
	cmd.Stdout = stdout
	if req.Stdout != nil {
		cmd.Stdout = io.MultiWriter(req.Stdout, stdout)
	}
	cmd.Stderr = stderr
	if req.Stdin != nil {
		cmd.Stdin = req.Stdin
	}
	err := cmd.Run()
	res := platform.ExecResult{StdoutTail: stdout.bytes(), StderrTail: stderr.bytes(), ExitCode: cmd.ProcessState.ExitCode()}
	if ctx.Err() != nil {
		return res, fmt.Errorf("exec %s: stopped: %w", req.Spec.Command[0], context.Cause(ctx))
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("exec %s: %w", req.Spec.Command[0], err)
	}
	return res, nil
}

// tail keeps the last max bytes written to it.
type tail struct {
	max int
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tail) bytes() []byte { return append([]byte(nil), t.buf...) }

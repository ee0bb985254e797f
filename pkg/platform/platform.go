// Package platform holds the small interfaces services use to act on the
// place an application runs. Implementations live in subpackages: local
// (processes and directories on one host) and, later, kube.
package platform

import (
	"context"
	"io"

	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

// ExecRequest is one command to run.
type ExecRequest struct {
	Spec blueprint.ExecSpec
	// Stdin, when set, is copied to the command's standard input.
	Stdin io.Reader
	// Stdout, when set, receives the whole standard output (a dump stream);
	// otherwise only a bounded tail is kept in the result.
	Stdout io.Writer
}

// ExecResult is what a finished command left behind. Output is bounded:
// a runaway command cannot exhaust memory.
type ExecResult struct {
	ExitCode int
	// StdoutTail and StderrTail are the last bytes written (see TailBytes).
	StdoutTail []byte
	StderrTail []byte
}

// TailBytes bounds how much of a command's output is kept.
const TailBytes = 64 << 10

// Executor runs commands in an application's environment. An error means
// the command could not run or was stopped (timeout); a command that ran
// and exited non-zero is a result with that ExitCode, not an error.
type Executor interface {
	Exec(ctx context.Context, req ExecRequest) (ExecResult, error)
}

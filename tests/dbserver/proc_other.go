//go:build !linux

package dbserver

import (
	"errors"
	"os/exec"
	"syscall"
	"time"
)

var platformErr = errors.New("dbserver starts database servers on Linux only")

func sysProcAttr(*osUser) *syscall.SysProcAttr { return nil }

func killGroup(cmd *exec.Cmd, _ syscall.Signal) {
	if cmd.Process != nil {
		_ = cmd.Process.Kill()
	}
}

func lockFile(string) (func(), error) { return nil, platformErr }

func postgresCredential() (*osUser, error) { return nil, platformErr }

func waitGroupGone(int, time.Duration) {}

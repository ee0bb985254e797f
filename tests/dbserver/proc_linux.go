//go:build linux

package dbserver

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// platformErr is nil where the harness can run servers.
var platformErr error

// sysProcAttr puts the server in its own process group (so Kill and cleanup
// reach PostgreSQL's backends too), has the kernel SIGKILL it if the test
// binary dies without running its cleanups, and drops to u's account when u
// is non-nil (supplementary groups cleared).
func sysProcAttr(u *osUser) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if u != nil {
		a.Credential = &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: []uint32{}}
	}
	return a
}

// killGroup signals the process group that cmd leads.
func killGroup(cmd *exec.Cmd, sig syscall.Signal) {
	if cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, sig)
}

// lockFile takes an exclusive flock on path, creating it if needed.
func lockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// dedicatedUser is created when the system has no "postgres" account.
const dedicatedUser = "tidemark-db"

var pgUser struct {
	once sync.Once
	u    *osUser
	err  error
}

// postgresCredential returns the non-root account postgres runs as: the
// "postgres" system user that Debian's postgresql-common creates, else a
// dedicated system user "tidemark-db", created (once, under the apt lock)
// with useradd if missing.
func postgresCredential() (*osUser, error) {
	pgUser.once.Do(func() {
		for _, name := range []string{"postgres", dedicatedUser} {
			if u, err := lookupUser(name); err == nil {
				pgUser.u = u
				return
			}
		}
		unlock, err := lockFile(aptLockPath)
		if err != nil {
			pgUser.err = err
			return
		}
		defer unlock()
		if u, err := lookupUser(dedicatedUser); err == nil {
			pgUser.u = u
			return
		}
		useradd := findBinary("useradd")
		if useradd == "" {
			pgUser.err = fmt.Errorf("no %q or %q user, and no useradd to create one", "postgres", dedicatedUser)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, useradd, "--system", "--user-group", "--no-create-home",
			"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", dedicatedUser).CombinedOutput()
		if u, lerr := lookupUser(dedicatedUser); lerr == nil {
			pgUser.u = u
			return
		}
		pgUser.err = fmt.Errorf("useradd %s: %v: %s", dedicatedUser, err, out)
	})
	return pgUser.u, pgUser.err
}

func lookupUser(name string) (*osUser, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, err
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, err
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, err
	}
	if uid == 0 {
		return nil, fmt.Errorf("user %s has uid 0", name)
	}
	return &osUser{name: name, uid: uid, gid: gid}, nil
}

// waitGroupGone waits until no process of the group led by pid is left:
// after a SIGKILL, PostgreSQL's children outlive the postmaster for a moment,
// holding its shared memory, and a restart in that moment fails.
func waitGroupGone(pid int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(-pid, 0); err == syscall.ESRCH {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

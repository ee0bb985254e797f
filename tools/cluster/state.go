package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// state is what `up` did, kept in <dir>/state.json so that `down` undoes
// exactly that and nothing else, even from another process.
type state struct {
	Procs map[string]proc `json:"procs"`
	// IPForward is net.ipv4.ip_forward before the first `up` changed it
	// ("" when we did not change it).
	IPForward string `json:"ipForward,omitempty"`
	// Bridge is the CNI bridge's name; the bridge plugin creates it with
	// the first pod, `down` deletes it.
	Bridge string `json:"bridge,omitempty"`
	// Cgroups are the kubelet's cgroup roots that did not exist before `up`.
	Cgroups []string `json:"cgroups,omitempty"`
	// KubeletChains: the kubelet's iptables chains (KUBE-FIREWALL and the
	// canaries) did not exist before `up`, so `down` removes them.
	KubeletChains bool `json:"kubeletChains,omitempty"`
	// Images maps image references to the digest imported into containerd.
	Images map[string]string `json:"images,omitempty"`
}

// proc identifies a process we started. The start time (clock ticks
// since boot, from /proc/<pid>/stat) guards against pid reuse: `down`
// never signals a process that merely inherited the number.
type proc struct {
	Pid   int      `json:"pid"`
	Start uint64   `json:"start"`
	Args  []string `json:"args"`
	Log   string   `json:"log"`
}

func (s *state) path(dir string) string { return filepath.Join(dir, "state.json") }

func loadState(dir string) (*state, error) {
	s := &state{Procs: map[string]proc{}, Images: map[string]string{}}
	b, err := os.ReadFile(s.path(dir))
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("%s: %w", s.path(dir), err)
	}
	if s.Procs == nil {
		s.Procs = map[string]proc{}
	}
	if s.Images == nil {
		s.Images = map[string]string{}
	}
	return s, nil
}

func (s *state) save(dir string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path(dir) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, s.path(dir))
}

// startTime is field 22 of /proc/<pid>/stat.
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces; it ends at the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	if f[0] == "Z" {
		return 0, errors.New("zombie")
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// alive reports whether p is still the process we started.
func (p proc) alive() bool {
	if p.Pid <= 0 {
		return false
	}
	st, err := startTime(p.Pid)
	return err == nil && st == p.Start
}

// stop sends SIGTERM, then SIGKILL after grace, and waits for the end.
func (p proc) stop(grace time.Duration) error {
	if !p.alive() {
		return nil
	}
	_ = syscall.Kill(p.Pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for p.alive() {
		if time.Now().After(deadline) {
			_ = syscall.Kill(p.Pid, syscall.SIGKILL)
			deadline = time.Now().Add(10 * time.Second)
			for p.alive() && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if p.alive() {
				return fmt.Errorf("pid %d (%s) survived SIGKILL", p.Pid, p.Args[0])
			}
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

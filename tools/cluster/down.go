package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// stopOrder is the reverse of the start order: the kubelet first (so it
// does not restart what we remove), containerd and etcd last.
var stopOrder = []string{
	"kubelet", "csi-provisioner", "csi-snapshotter", "snapshot-controller", "csi-test-driver",
	"coredns", "kube-proxy", "kube-scheduler", "kube-controller-manager",
	"containerd", "kube-apiserver", "etcd",
}

// down stops what up started and undoes its host changes. It goes on
// after an error, so one stuck step does not leave the rest behind, and
// reports every error at the end.
func (c *cluster) down(ctx context.Context) error {
	var errs []error
	note := func(err error) {
		if err != nil {
			logf("%v", err)
			errs = append(errs, err)
		}
	}
	stop := func(name string) {
		p, ok := c.st.Procs[name]
		if !ok {
			return
		}
		if p.alive() {
			logf("stopping %-24s pid %d", name, p.Pid)
		}
		grace := 10 * time.Second
		if name == "kubelet" || name == "containerd" {
			grace = 20 * time.Second
		}
		if err := p.stop(grace); err != nil {
			note(err)
			return
		}
		delete(c.st.Procs, name)
	}

	var proxyBin string
	if p, ok := c.st.Procs["kube-proxy"]; ok && len(p.Args) > 0 {
		proxyBin = p.Args[0]
	}
	stop("kubelet")
	if p, ok := c.st.Procs["containerd"]; ok && p.alive() {
		note(c.removePods(ctx))
	}
	for _, name := range stopOrder[1:] {
		stop(name)
	}
	for name := range c.st.Procs { // anything a newer version of up started
		stop(name)
	}
	note(c.killShims())
	if proxyBin != "" {
		// kube-proxy's own cleanup removes its KUBE-* iptables chains.
		if out, err := exec.Command(proxyBin, "--cleanup").CombinedOutput(); err != nil {
			note(fmt.Errorf("kube-proxy --cleanup: %v: %s", err, strings.TrimSpace(string(out))))
		}
	}
	if c.st.KubeletChains {
		note(removeKubeletChains())
		c.st.KubeletChains = false
	}
	note(unmountUnder(c.dir))
	if c.st.Bridge != "" {
		if _, err := net.InterfaceByName(c.st.Bridge); err == nil {
			if out, err := exec.Command("ip", "link", "delete", c.st.Bridge).CombinedOutput(); err != nil {
				note(fmt.Errorf("deleting bridge %s: %v: %s", c.st.Bridge, err, out))
			}
		}
		c.st.Bridge = ""
	}
	if c.st.IPForward != "" {
		note(os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte(c.st.IPForward+"\n"), 0o644))
		c.st.IPForward = ""
	}
	var kept []string
	for _, g := range c.st.Cgroups {
		if err := removeCgroupTree(g); err != nil {
			note(err)
			kept = append(kept, g)
		}
	}
	c.st.Cgroups = kept
	if len(errs) == 0 {
		// A cluster's data goes with it; the next up starts empty.
		note(os.RemoveAll(c.runDir()))
	}
	note(c.st.save(c.dir))
	return errors.Join(errs...)
}

// removePods stops and removes every pod sandbox through the CRI, as the
// kubelet would: containerd then runs the CNI DEL (IP released, masquerade
// rules removed, network namespace deleted) and ends the shims.
func (c *cluster) removePods(ctx context.Context) error {
	conn, err := grpc.NewClient("unix://"+c.containerdSock(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	rt := cri.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	pods, err := rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("listing pod sandboxes: %w", err)
	}
	var errs []error
	for _, p := range pods.Items {
		if _, err := rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			errs = append(errs, fmt.Errorf("stopping pod %s/%s: %w", p.Metadata.GetNamespace(), p.Metadata.GetName(), err))
			continue
		}
		if _, err := rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			errs = append(errs, fmt.Errorf("removing pod %s/%s: %w", p.Metadata.GetNamespace(), p.Metadata.GetName(), err))
		}
	}
	if len(pods.Items) > 0 {
		logf("removed %d pod sandboxes", len(pods.Items))
	}
	return errors.Join(errs...)
}

// killShims ends containerd-shim processes of our containerd that outlived
// it (they are started detached); they carry our socket in their arguments.
func (c *cluster) killShims() error {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	needle := c.containerdSock()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		if !strings.Contains(string(b), needle) {
			continue
		}
		st, err := startTime(pid)
		if err != nil {
			continue
		}
		logf("stopping leftover %s pid %d", filepath.Base(args[0]), pid)
		if err := (proc{Pid: pid, Start: st, Args: args}).stop(5 * time.Second); err != nil {
			return err
		}
	}
	return nil
}

// unmountUnder unmounts every mount point below dir, deepest first: pod
// volumes, CSI bind mounts, containerd's overlay and shm mounts.
func unmountUnder(dir string) error {
	abs, err := filepath.EvalSymlinks(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for round := 0; round < 5; round++ {
		points, err := mountPointsUnder(abs)
		if err != nil {
			return err
		}
		if len(points) == 0 {
			return nil
		}
		errs = nil
		for _, p := range points {
			if err := syscall.Unmount(p, 0); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
				// Lazy as a last resort: a mount still busy must not keep
				// the host's mount table pointing into a deleted directory.
				if err2 := syscall.Unmount(p, syscall.MNT_DETACH); err2 != nil {
					errs = append(errs, fmt.Errorf("unmounting %s: %v", p, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

func mountPointsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		p := strings.ReplaceAll(fields[4], `\040`, " ")
		if strings.HasPrefix(p, dir+"/") {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, sc.Err()
}

// removeCgroupTree removes an (empty of processes) cgroup directory and
// its children, deepest first; cgroupfs only allows rmdir.
func removeCgroupTree(root string) error {
	if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var dirs []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("removing cgroup %s: %w", dirs[i], err)
		}
	}
	return nil
}

// kubeletChains are the iptables chains the kubelet creates (kube-proxy's
// are removed by kube-proxy --cleanup), by table, with the rules that
// jump to them from built-in chains.
var kubeletChains = []struct {
	table, chain string
	jumps        []string // built-in chains with a "-j chain" rule
}{
	{"filter", "KUBE-FIREWALL", []string{"INPUT", "OUTPUT"}},
	{"filter", "KUBE-KUBELET-CANARY", nil},
	{"nat", "KUBE-KUBELET-CANARY", nil},
	{"mangle", "KUBE-KUBELET-CANARY", nil},
	{"mangle", "KUBE-IPTABLES-HINT", nil},
}

var iptablesCommands = []string{"iptables", "ip6tables"}

// hasKubeChains reports whether any KUBE- chain exists already.
func hasKubeChains() bool {
	for _, cmd := range iptablesCommands {
		out, err := exec.Command(cmd + "-save").Output()
		if err == nil && strings.Contains(string(out), ":KUBE-") {
			return true
		}
	}
	return false
}

func removeKubeletChains() error {
	var errs []error
	for _, cmd := range iptablesCommands {
		if _, err := exec.LookPath(cmd); err != nil {
			continue
		}
		for _, k := range kubeletChains {
			if exec.Command(cmd, "-t", k.table, "-n", "-L", k.chain).Run() != nil {
				continue // not there (or no such table for this family)
			}
			for _, from := range k.jumps {
				for exec.Command(cmd, "-t", k.table, "-D", from, "-j", k.chain).Run() == nil {
				}
			}
			for _, args := range [][]string{{"-F", k.chain}, {"-X", k.chain}} {
				if out, err := exec.Command(cmd, append([]string{"-t", k.table}, args...)...).CombinedOutput(); err != nil {
					errs = append(errs, fmt.Errorf("%s -t %s %s: %v: %s", cmd, k.table, strings.Join(args, " "), err, strings.TrimSpace(string(out))))
				}
			}
		}
	}
	return errors.Join(errs...)
}

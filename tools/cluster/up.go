package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	kubetest "github.com/tidemark-dev/tidemark/tests/kube"
)

// hostPackages are what the node needs from Debian.
var hostPackages = []string{
	"containerd", "runc", "containernetworking-plugins", "busybox-static",
	"iptables", "debootstrap", "socat", "conntrack",
}

// binaries are the paths of every program the cluster runs.
type binaries struct {
	kubetest.ClusterAssets
	CSIDriver, Pause, NATS, Tidemark string
}

func (c *cluster) up(ctx context.Context) error {
	t0 := time.Now()
	phase := func(what string, since time.Time) {
		logf("%-28s %6.1fs (total %.1fs)", what, time.Since(since).Seconds(), time.Since(t0).Seconds())
	}
	t := time.Now()
	if err := installPackages(); err != nil {
		return err
	}
	phase("host packages", t)

	t = time.Now()
	bins, err := c.buildBinaries(false)
	if err != nil {
		return err
	}
	phase("binaries", t)

	for _, d := range []string{c.runDir(), c.logDir(), c.containerdRoot(), c.kubeletRoot(), c.csiRoot()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	p, err := c.writePKI()
	if err != nil {
		return err
	}
	if err := c.writeKubeconfig(p, c.apiURL(), c.Kubeconfig()); err != nil {
		return err
	}
	files := map[string]string{
		c.path("containerd.toml"):                             c.containerdConfig(),
		c.path("kubelet.yaml"):                                c.kubeletConfig(),
		c.path("kube-proxy.yaml"):                             c.kubeProxyConfig(),
		c.path("Corefile"):                                    c.corefile(),
		filepath.Join(c.cniConfDir(), "10-tidemark.conflist"): c.cniConfig(),
	}
	for path, content := range files {
		if err := writeFile(path, content, 0o644); err != nil {
			return err
		}
	}
	if err := c.hostNetwork(); err != nil {
		return err
	}
	if err := c.st.save(c.dir); err != nil {
		return err
	}

	t = time.Now()
	pk := c.pkiDir()
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClientPort)
	if err := c.start("etcd", bins.Etcd,
		"--name=tidemark", "--data-dir="+c.path("run", "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", etcdPeerPort),
		fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", etcdPeerPort),
		fmt.Sprintf("--initial-cluster=tidemark=http://127.0.0.1:%d", etcdPeerPort),
		// A test cluster's data is thrown away by `down`: durability buys nothing.
		"--unsafe-no-fsync",
	); err != nil {
		return err
	}
	if err := waitHTTP(ctx, etcdURL+"/health", nil, time.Minute); err != nil {
		return fmt.Errorf("etcd: %w (log: %s)", err, c.st.Procs["etcd"].Log)
	}
	if err := c.start("kube-apiserver", bins.APIServer,
		"--etcd-servers="+etcdURL,
		"--bind-address=0.0.0.0", fmt.Sprintf("--secure-port=%d", apiPort), "--advertise-address="+c.hostIP.String(),
		"--tls-cert-file="+pk+"/apiserver.crt", "--tls-private-key-file="+pk+"/apiserver.key",
		"--client-ca-file="+pk+"/ca.crt",
		"--service-account-issuer=https://kubernetes.default.svc."+clusterDomain,
		"--service-account-key-file="+pk+"/sa.pub", "--service-account-signing-key-file="+pk+"/sa.key",
		"--service-cluster-ip-range="+serviceCIDR,
		"--authorization-mode=Node,RBAC", "--allow-privileged=true",
		"--kubelet-client-certificate="+pk+"/apiserver-kubelet-client.crt",
		"--kubelet-client-key="+pk+"/apiserver-kubelet-client.key",
		"--kubelet-certificate-authority="+pk+"/ca.crt",
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--profiling=false",
	); err != nil {
		return err
	}
	kc, err := newKubeClient(c.Kubeconfig())
	if err != nil {
		return err
	}
	if err := kc.waitReady(ctx, 2*time.Minute); err != nil {
		return fmt.Errorf("kube-apiserver: %w (log: %s)", err, c.st.Procs["kube-apiserver"].Log)
	}
	phase("etcd + kube-apiserver", t)

	t = time.Now()
	if err := c.start("containerd", "containerd", "--config="+c.path("containerd.toml")); err != nil {
		return err
	}
	if err := waitSocket(ctx, c.containerdSock(), time.Minute); err != nil {
		return fmt.Errorf("containerd: %w (log: %s)", err, c.st.Procs["containerd"].Log)
	}
	if err := c.importImages(ctx, c.baseImages(bins)); err != nil {
		return err
	}
	// The tidemark image follows the working tree, which may not build at
	// every moment; the cluster itself does not need it.
	if tb, err := c.buildBinaries(true); err != nil {
		logf("no tidemark image this time: %v", err)
	} else if err := c.importImages(ctx, []image{c.tidemarkImage(tb)}); err != nil {
		logf("no tidemark image this time: %v", err)
	}
	phase("containerd + base images", t)

	t = time.Now()
	if err := c.start("kube-controller-manager", bins.ControllerManager,
		"--kubeconfig="+c.Kubeconfig(),
		"--authentication-kubeconfig="+c.Kubeconfig(), "--authorization-kubeconfig="+c.Kubeconfig(),
		"--service-account-private-key-file="+pk+"/sa.key", "--root-ca-file="+pk+"/ca.crt",
		"--cluster-signing-cert-file="+pk+"/ca.crt", "--cluster-signing-key-file="+pk+"/ca.key",
		"--use-service-account-credentials=true",
		"--service-cluster-ip-range="+serviceCIDR,
		"--leader-elect=false", "--bind-address=127.0.0.1",
	); err != nil {
		return err
	}
	if err := c.start("kube-scheduler", bins.Scheduler,
		"--kubeconfig="+c.Kubeconfig(),
		"--authentication-kubeconfig="+c.Kubeconfig(), "--authorization-kubeconfig="+c.Kubeconfig(),
		"--leader-elect=false", "--bind-address=127.0.0.1",
	); err != nil {
		return err
	}
	if err := c.recordCgroups(); err != nil {
		return err
	}
	tKubelet := time.Now()
	if err := c.start("kubelet", bins.Kubelet,
		"--config="+c.path("kubelet.yaml"), "--kubeconfig="+c.Kubeconfig(),
		"--root-dir="+c.kubeletRoot(), "--hostname-override="+c.node, "--node-ip="+c.hostIP.String(),
	); err != nil {
		return err
	}
	if err := c.start("kube-proxy", bins.Proxy, "--config="+c.path("kube-proxy.yaml")); err != nil {
		return err
	}
	if err := c.start("coredns", bins.CoreDNS, "-conf="+c.path("Corefile")); err != nil {
		return err
	}
	phase("control plane + node started", t)

	t = time.Now()
	if err := kc.applySnapshotCRDs(ctx); err != nil {
		return err
	}
	if err := kc.apply(ctx, storageManifests); err != nil {
		return err
	}
	phase("snapshot CRDs + classes", t)

	if err := c.start("csi-test-driver", bins.CSIDriver,
		"-root="+c.csiRoot(), "-endpoint="+c.csiSock(), "-node-id="+c.node,
		"-registration-dir="+filepath.Join(c.kubeletRoot(), "plugins_registry"),
	); err != nil {
		return err
	}
	if err := waitSocket(ctx, c.csiSock(), 30*time.Second); err != nil {
		return fmt.Errorf("csi-test-driver: %w", err)
	}
	kubeconfig := "--kubeconfig=" + c.Kubeconfig()
	for _, s := range []struct{ name, bin string }{
		{"snapshot-controller", bins.SnapshotController},
		{"csi-snapshotter", bins.CSISnapshotter},
		{"csi-provisioner", bins.CSIProvisioner},
	} {
		args := []string{kubeconfig, "--leader-election=false"}
		if s.name != "snapshot-controller" {
			args = append(args, "--csi-address="+c.csiSock(), "--extra-create-metadata")
		}
		if err := c.start(s.name, s.bin, args...); err != nil {
			return err
		}
	}

	t = time.Now()
	if err := kc.waitNodeReady(ctx, c.node, 3*time.Minute); err != nil {
		return fmt.Errorf("%w (kubelet log: %s)", err, c.st.Procs["kubelet"].Log)
	}
	logf("node %s Ready %.1fs after the kubelet started", c.node, time.Since(tKubelet).Seconds())
	if err := kc.waitCSINode(ctx, c.node, csiDriverName, 2*time.Minute); err != nil {
		return fmt.Errorf("%w (driver log: %s)", err, c.st.Procs["csi-test-driver"].Log)
	}
	phase("node Ready + CSI registered", t)
	logf("cluster up in %.1fs", time.Since(t0).Seconds())
	return nil
}

// start runs name unless the process we started earlier still runs,
// detached (its own session) so it outlives this command, with its
// output appended to logs/<name>.log.
func (c *cluster) start(name, bin string, args ...string) error {
	if p, ok := c.st.Procs[name]; ok && p.alive() {
		return nil
	}
	logPath := filepath.Join(c.logDir(), name+".log")
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(f, "\n=== %s: %s %s\n", time.Now().Format(time.RFC3339), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = c.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	st, err := startTime(cmd.Process.Pid)
	if err != nil {
		return fmt.Errorf("%s exited at once (log: %s)", name, logPath)
	}
	pid := cmd.Process.Pid
	c.st.Procs[name] = proc{Pid: pid, Start: st, Args: append([]string{bin}, args...), Log: logPath}
	// Released, not waited for: the process is not ours to reap once this
	// command exits; saving the state right away keeps `down` exact even
	// if `up` fails later.
	_ = cmd.Process.Release()
	logf("started %-24s pid %d", name, pid)
	return c.st.save(c.dir)
}

func installPackages() error {
	var missing []string
	for _, p := range hostPackages {
		out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", p).Output()
		if err != nil || !strings.Contains(string(out), "install ok installed") {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	logf("installing %s with apt", strings.Join(missing, " "))
	for _, args := range [][]string{{"update"}, append([]string{"install", "-y", "--no-install-recommends"}, missing...)} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// hostNetwork turns on IPv4 forwarding (pods' traffic leaves through the
// host), remembering the old value for `down`.
func (c *cluster) hostNetwork() error {
	c.st.Bridge = bridgeName
	const f = "/proc/sys/net/ipv4/ip_forward"
	b, err := os.ReadFile(f)
	if err != nil {
		return err
	}
	if v := strings.TrimSpace(string(b)); v != "1" {
		if c.st.IPForward == "" {
			c.st.IPForward = v
		}
		if err := os.WriteFile(f, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("enabling ip_forward: %w", err)
		}
	}
	return nil
}

// kubeletCgroups are the cgroup roots the kubelet (cgroupfs driver) creates.
func kubeletCgroups() []string {
	var out []string
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, filepath.Join("/sys/fs/cgroup", e.Name(), "kubepods"))
		}
	}
	return out
}

// recordCgroups notes which kubepods cgroups the kubelet will create, so
// that `down` removes those and only those.
func (c *cluster) recordCgroups() error {
	if p, ok := c.st.Procs["kubelet"]; ok && p.alive() {
		return nil
	}
	known := map[string]bool{}
	for _, g := range c.st.Cgroups {
		known[g] = true
	}
	if !c.st.KubeletChains && !hasKubeChains() {
		c.st.KubeletChains = true
	}
	for _, g := range kubeletCgroups() {
		if _, err := os.Stat(g); errors.Is(err, os.ErrNotExist) && !known[g] {
			c.st.Cgroups = append(c.st.Cgroups, g)
		}
	}
	return c.st.save(c.dir)
}

func waitSocket(ctx context.Context, path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		conn, err := net.Dial("unix", path)
		if err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no socket %s after %v: %w", path, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "cluster: "+format+"\n", args...)
}

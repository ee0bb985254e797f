package main

import (
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// Cluster-wide constants. The pod subnet fits a single node; the bridge
// gets a name of its own so `down` deletes only what we created.
const (
	podCIDR     = "10.244.0.0/24"
	clusterCIDR = "10.244.0.0/16"
	serviceCIDR = "10.96.0.0/16"
	serviceIP   = "10.96.0.1" // the "kubernetes" Service, first of serviceCIDR
	bridgeName  = "tidemark0"
	apiPort     = 6443
	// etcd off its default ports, so it never meets another etcd (envtest's
	// use random ports, but a developer's own may not).
	etcdClientPort = 23790
	etcdPeerPort   = 23800
	clusterDomain  = "cluster.local"
	// StorageClass and snapshot classes of the test CSI driver.
	storageClass = "tidemark-test-csi"
)

// cluster is one harness instance: its directory and the host it runs on.
type cluster struct {
	dir    string // state directory
	hostIP net.IP
	node   string
	st     *state
}

func (c *cluster) path(parts ...string) string {
	return filepath.Join(append([]string{c.dir}, parts...)...)
}

// Directories. Everything under run/ is one cluster's life; `down` wipes
// it. pki/, images/ and containerd's root (image layers) survive, so the
// next `up` is quick.
func (c *cluster) pkiDir() string         { return c.path("pki") }
func (c *cluster) runDir() string         { return c.path("run") }
func (c *cluster) logDir() string         { return c.path("logs") }
func (c *cluster) kubeletRoot() string    { return c.path("run", "kubelet") }
func (c *cluster) containerdRoot() string { return c.path("containerd") }
func (c *cluster) containerdSock() string { return c.path("run", "containerd", "containerd.sock") }
func (c *cluster) cniConfDir() string     { return c.path("run", "cni", "net.d") }
func (c *cluster) csiSock() string        { return c.path("run", "csi", "csi.sock") }
func (c *cluster) csiRoot() string        { return c.path("run", "csi", "data") }

// Kubeconfig is the admin kubeconfig users and tests get.
func (c *cluster) Kubeconfig() string { return c.path("kubeconfig") }

func (c *cluster) apiURL() string { return fmt.Sprintf("https://%s:%d", c.hostIP, apiPort) }

func writeFile(path, content string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if old, err := os.ReadFile(path); err == nil && string(old) == content {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// writePKI issues every certificate the components need.
func (c *cluster) writePKI() (*pki, error) {
	p, err := loadOrCreateCA(c.pkiDir())
	if err != nil {
		return nil, err
	}
	loopback := net.ParseIP("127.0.0.1")
	specs := []certSpec{
		{name: "apiserver", cn: "kube-apiserver", server: true,
			dns: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + clusterDomain, "localhost", c.node},
			ips: []net.IP{loopback, c.hostIP, net.ParseIP(serviceIP)}},
		{name: "admin", cn: "kubernetes-admin", orgs: []string{"system:masters"}, client: true},
		{name: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}, client: true},
		{name: "kubelet", cn: "system:node:" + c.node, server: true, dns: []string{c.node, "localhost"}, ips: []net.IP{loopback, c.hostIP}},
	}
	for _, s := range specs {
		if err := p.ensure(s); err != nil {
			return nil, fmt.Errorf("certificate %s: %w", s.name, err)
		}
	}
	if err := p.ensureKey("sa"); err != nil {
		return nil, err
	}
	return p, nil
}

// writeKubeconfig embeds the admin credentials, so the file can be copied
// anywhere (into a pod, to another user) and still work.
func (c *cluster) writeKubeconfig(p *pki, server string, path string) error {
	read := func(name, ext string) (string, error) {
		b, err := os.ReadFile(p.path(name, ext))
		return base64.StdEncoding.EncodeToString(b), err
	}
	ca, err := read("ca", "crt")
	if err != nil {
		return err
	}
	crt, err := read("admin", "crt")
	if err != nil {
		return err
	}
	key, err := read("admin", "key")
	if err != nil {
		return err
	}
	return writeFile(path, fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: tidemark-test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: tidemark-test
  context: {cluster: tidemark-test, user: admin}
current-context: tidemark-test
`, server, ca, crt, key), 0o600)
}

// containerdConfig is containerd 1.6's (config version 2). Everything it
// owns lives under our directory, beside any containerd of the host's.
func (c *cluster) containerdConfig() string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
oom_score = 0

[grpc]
  address = %[3]q

[ttrpc]
  address = "%[3]s.ttrpc"

[debug]
  address = "%[2]s/debug.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "%[1]s/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[4]q
  # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails with
  # "can't get final child's PID from pipe: EOF" (runc cannot set the
  # kubelet's -998 oom score).
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[5]q
`, c.containerdRoot(), c.path("run", "containerd", "state"), c.containerdSock(), pauseImage, c.cniConfDir())
}

func (c *cluster) cniConfig() string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "tidemark",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %q
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, bridgeName, podCIDR, c.path("run", "cni", "ipam"))
}

func (c *cluster) kubeletConfig() string {
	pk := c.pkiDir()
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %[1]s/ca.crt}
authorization: {mode: AlwaysAllow}
tlsCertFile: %[1]s/kubelet.crt
tlsPrivateKeyFile: %[1]s/kubelet.key
containerRuntimeEndpoint: unix://%[2]s
# This VM's cgroup v1 (cgroup2 only at /sys/fs/cgroup/unified).
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
# Images are imported by hand (no registry): never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
clusterDNS: [%[3]s]
clusterDomain: %[4]s
resolvConf: /etc/resolv.conf
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
volumePluginDir: %[5]s
serializeImagePulls: false
`, pk, c.containerdSock(), c.hostIP, clusterDomain, c.path("run", "kubelet-volume-plugins"))
}

func (c *cluster) kubeProxyConfig() string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %q}
mode: iptables
clusterCIDR: %s
hostnameOverride: %s
bindAddress: 0.0.0.0
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# 0: leave the host's conntrack table size alone.
conntrack: {maxPerCore: 0}
`, c.Kubeconfig(), clusterCIDR, c.node)
}

// corefile serves cluster DNS from a host process on the node's address,
// which the kubelet hands to pods as their nameserver.
func (c *cluster) corefile() string {
	return fmt.Sprintf(`.:53 {
    bind %s
    errors
    kubernetes %s in-addr.arpa ip6.arpa {
        kubeconfig %s
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    forward . /etc/resolv.conf
    cache 30
    loop
}
`, c.hostIP, clusterDomain, c.Kubeconfig())
}

// primaryIPv4 is the source address of the default route: pods reach the
// apiserver there, so it must not be 127.0.0.1.
func primaryIPv4() (net.IP, error) {
	conn, err := net.Dial("udp4", "192.0.2.1:9") // no packet is sent
	if err != nil {
		return nil, fmt.Errorf("no IPv4 default route: %w", err)
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).IP.To4(), nil
}

func nodeName() (string, error) {
	h, err := os.Hostname()
	if err != nil {
		return "", err
	}
	return strings.ToLower(strings.SplitN(h, ".", 2)[0]), nil
}

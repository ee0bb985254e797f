// Command cluster runs a real single-node Kubernetes on this machine for
// Tidemark's tests: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, containerd, kubelet, kube-proxy, CoreDNS, the CSI
// snapshot controller and sidecars, and a test CSI driver
// (tests/csidriver), all as host processes.
//
//	go run ./tools/cluster up       # build what is missing, start, wait for node Ready; prints the kubeconfig
//	go run ./tools/cluster down     # stop exactly what up started, undo its host changes
//	go run ./tools/cluster status   # what runs
//	go run ./tools/cluster build    # only build (or find) the binaries
//	go run ./tools/cluster images   # build and import every image, NATS, versitygw (S3), MariaDB and PostgreSQL included
//
// Everything lives under one state directory: $TIDEMARK_CLUSTER_DIR, else
// ~/.cache/tidemark-cluster. The Kubernetes programs are built from the Go
// module proxy at pinned versions into the test cache (tests/kube). It
// needs root: it mounts, configures networking and runs containers. See
// tests/README.md, "tests/cluster".
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	kubetest "github.com/tidemark-dev/tidemark/tests/kube"
)

// DirEnv overrides the state directory.
const DirEnv = "TIDEMARK_CLUSTER_DIR"

func main() {
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: go run ./tools/cluster up|down|status|build|images")
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, flag.Arg(0)); err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cmd string) error {
	if cmd == "build" {
		c := &cluster{}
		_, err := c.buildBinaries(true)
		return err
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("%s needs root (mounts, networking, containers)", cmd)
	}
	c, err := open()
	if err != nil {
		return err
	}
	unlock, err := lockDir(c.dir)
	if err != nil {
		return err
	}
	defer unlock()
	switch cmd {
	case "up":
		if err := c.up(ctx); err != nil {
			return fmt.Errorf("%w\n(`go run ./tools/cluster down` stops what was started; logs are in %s)", err, c.logDir())
		}
		fmt.Println(c.Kubeconfig())
		return nil
	case "down":
		return c.down(ctx)
	case "status":
		return c.status()
	case "images":
		if p, ok := c.st.Procs["containerd"]; !ok || !p.alive() {
			return fmt.Errorf("the cluster is not up: run `go run ./tools/cluster up` first")
		}
		bins, err := c.buildBinaries(true)
		if err != nil {
			return err
		}
		imgs := append(c.baseImages(bins), c.tidemarkImage(bins))
		vgw, err := buildVersitygw()
		if err != nil {
			return err
		}
		imgs = append(imgs, versitygwServerImage(vgw))
		dbs, err := c.databaseImages(ctx)
		if err != nil {
			return err
		}
		return c.importImages(ctx, append(imgs, dbs...))
	}
	flag.Usage()
	return fmt.Errorf("unknown command %q", cmd)
}

func open() (*cluster, error) {
	dir := os.Getenv(DirEnv)
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return nil, fmt.Errorf("no cache directory (%v): set %s", err, DirEnv)
		}
		dir = filepath.Join(base, "tidemark-cluster")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ip, err := primaryIPv4()
	if err != nil {
		return nil, err
	}
	node, err := nodeName()
	if err != nil {
		return nil, err
	}
	st, err := loadState(dir)
	if err != nil {
		return nil, err
	}
	return &cluster{dir: dir, hostIP: ip, node: node, st: st}, nil
}

func (c *cluster) status() error {
	fmt.Printf("state directory %s\nkubeconfig      %s\n", c.dir, c.Kubeconfig())
	running := 0
	for _, name := range stopOrder {
		p, ok := c.st.Procs[name]
		if !ok {
			continue
		}
		s := "exited"
		if p.alive() {
			s = "running"
			running++
		}
		fmt.Printf("%-24s pid %-8d %-8s log %s\n", name, p.Pid, s, p.Log)
	}
	if running == 0 {
		fmt.Println("not running")
	}
	return nil
}

// buildBinaries finds or builds the Kubernetes programs (cached in the
// test cache) and builds this repository's own (the CSI test driver, the
// pause program, tidemark), which the Go build cache makes quick.
func (c *cluster) buildBinaries(withTidemark bool) (binaries, error) {
	var b binaries
	var err error
	if b.ClusterAssets, err = kubetest.BuildClusterAssets(func(s string) { logf("%s", s) }); err != nil {
		return b, err
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "go.mod") {
		return b, fmt.Errorf("run from the tidemark repository (go env GOMOD: %v)", err)
	}
	repo := filepath.Dir(strings.TrimSpace(string(out)))
	cache, err := kubetest.CacheDir()
	if err != nil {
		return b, err
	}
	binDir := filepath.Join(cache, "bin", "tidemark-cluster")
	for _, p := range []struct {
		dst       *string
		pkg, name string
	}{
		{&b.CSIDriver, "./tests/csidriver/cmd/csi-test-driver", "csi-test-driver"},
		{&b.Pause, "./tools/cluster/pause", "pause"},
		// At the version this repository's go.mod requires (the embedded
		// server's), so the NATS of deploy/ is the one the tests run.
		{&b.NATS, natsServerPackage, "nats-server"},
		{&b.Tidemark, "./cmd/tidemark", "tidemark"},
	} {
		if p.dst == &b.Tidemark && !withTidemark {
			continue
		}
		*p.dst = filepath.Join(binDir, p.name)
		if err := buildStatic(repo, p.pkg, *p.dst); err != nil {
			return b, err
		}
	}
	return b, nil
}

// natsServerPackage is nats-server's main package, a module go.mod
// requires already (pkg/natsserver embeds it).
const natsServerPackage = "github.com/nats-io/nats-server/v2"

// buildStatic builds a main package of (or required by) the module in
// repo, static: the images have no libc.
func buildStatic(repo, pkg, dst string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-o", dst, pkg)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
	}
	return nil
}

// lockDir keeps two commands from working on one cluster at once.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

package kubetest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// SnapshotClientModule is the module whose config/crd holds the CSI
// snapshot CRDs the harness installs (the version go.mod requires).
const SnapshotClientModule = "github.com/kubernetes-csi/external-snapshotter/client/v8"

var (
	mu       sync.Mutex
	shared   *rest.Config
	startErr error
	stop     func()
)

// Main runs a test package's tests with one control plane (etcd and
// kube-apiserver, the snapshot CRDs installed) shared by all of them, and
// stops it after. Use it from TestMain: os.Exit(kubetest.Main(m)).
// Tests get the control plane with Config.
func Main(m *testing.M) int {
	start()
	code := m.Run()
	if stop != nil {
		stop()
	}
	return code
}

// Config returns the shared control plane's config, skipping the test
// (or, with TIDEMARK_REQUIRE_DB set, failing it) when none could start.
func Config(t testing.TB) *rest.Config {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if startErr != nil {
		if os.Getenv(RequireEnv) != "" {
			t.Fatalf("no kube-apiserver: %v (%s is set, so this is a failure, not a skip)", startErr, RequireEnv)
		}
		t.Skipf("no kube-apiserver: %v; skipping (set %s to make this a failure)", startErr, RequireEnv)
	}
	if shared == nil {
		t.Fatal("kubetest.Config called without kubetest.Main in TestMain")
	}
	return rest.CopyConfig(shared)
}

func start() {
	mu.Lock()
	defer mu.Unlock()
	assets, err := BuildAssets(nil)
	if err != nil {
		startErr = err
		return
	}
	crds, err := snapshotCRDDir()
	if err != nil {
		startErr = err
		return
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:        []string{crds},
		ErrorIfCRDPathMissing:    true,
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
		AttachControlPlaneOutput: os.Getenv("TIDEMARK_KUBE_LOGS") != "",
	}
	env.ControlPlane.GetAPIServer().Path = assets.APIServer
	env.ControlPlane.Etcd = &envtest.Etcd{Path: assets.Etcd}
	t0 := time.Now()
	cfg, err := env.Start()
	if err != nil {
		startErr = fmt.Errorf("starting kube-apiserver %s with etcd %s: %w", KubeVersion, EtcdVersion, err)
		_ = env.Stop()
		return
	}
	fmt.Fprintf(os.Stderr, "kubetest: kube-apiserver %s up in %v\n", KubeVersion, time.Since(t0).Round(time.Millisecond))
	// Tests make many objects quickly; the client's default 5 QPS would
	// make them wait on themselves.
	cfg.QPS, cfg.Burst = 200, 400
	shared = cfg
	stop = func() { _ = env.Stop() }
}

// snapshotCRDDir is config/crd of the snapshot client module in the
// module cache (downloaded by go test already, since the tests import it).
func snapshotCRDDir() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", SnapshotClientModule).Output()
	if err != nil {
		return "", fmt.Errorf("locating %s (go list -m): %w", SnapshotClientModule, err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "config", "crd")
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("the snapshot CRDs: %w", err)
	}
	return dir, nil
}

package kubetest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Plane is a control plane of one test's own (Start), for test packages
// whose TestMain is not kubetest.Main: the tidemark binary's tests, which
// run `tidemark serve` against it as a separate process.
type Plane struct {
	Config *rest.Config
	// KubeConfig is a kubeconfig file for the plane's admin, for
	// processes the test starts (KUBECONFIG).
	KubeConfig string
}

// Start starts etcd and kube-apiserver with the snapshot CRDs for this
// test and stops them when it ends. It skips the test (or, with
// TIDEMARK_REQUIRE_DB set, fails it) when they cannot be built.
func Start(t testing.TB) *Plane {
	t.Helper()
	skip := func(err error) {
		t.Helper()
		if os.Getenv(RequireEnv) != "" {
			t.Fatalf("no kube-apiserver: %v (%s is set, so this is a failure, not a skip)", err, RequireEnv)
		}
		t.Skipf("no kube-apiserver: %v; skipping (set %s to make this a failure)", err, RequireEnv)
	}
	assets, err := BuildAssets(nil)
	if err != nil {
		skip(err)
	}
	crds, err := snapshotCRDDir()
	if err != nil {
		skip(err)
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
	cfg, err := env.Start()
	if err != nil {
		_ = env.Stop()
		t.Fatalf("starting kube-apiserver %s with etcd %s: %v", KubeVersion, EtcdVersion, err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	cfg.QPS, cfg.Burst = 200, 400
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.KubeConfig, 0o600); err != nil {
		t.Fatal(fmt.Errorf("writing the kubeconfig: %w", err))
	}
	return &Plane{Config: cfg, KubeConfig: kubeconfig}
}

// Package kubetest runs a real kube-apiserver (with etcd) for tests of
// Tidemark's Kubernetes platform.
//
// Both programs are built by this package from the Go module proxy, at the
// pinned versions below, once per machine, into
// <cache>/bin/<name>@<version>/<name>, where <cache> is
// $TIDEMARK_TEST_CACHE if set, else os.UserCacheDir()/tidemark-test (the
// same layout tests/toolbuild uses, so the real-cluster harness reuses
// these builds). A cold build of kube-apiserver takes 8-11 minutes on two
// cores, etcd 1-2 minutes; later runs only check that the files exist.
// Parallel test binaries share one build through a file lock.
//
// The apiserver is started with sigs.k8s.io/controller-runtime's envtest,
// pointed at those binaries; see tests/README.md for why this and not the
// in-process test server.
package kubetest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Pinned versions. KubeVersion must be the release whose staging modules
// (k8s.io/client-go and friends at v0.<minor>.<patch>) the project's
// go.mod requires; EtcdVersion is an etcd release that kube-apiserver of
// that minor supports.
const (
	KubeVersion = "v1.37.2"
	EtcdVersion = "v3.6.16"
)

// CacheEnv overrides where built programs are kept (shared with tests/toolbuild).
const CacheEnv = "TIDEMARK_TEST_CACHE"

// RequireEnv turns "cannot be built" from a skip into a failure (shared with tests/dbserver).
const RequireEnv = "TIDEMARK_REQUIRE_DB"

// buildTimeout bounds one build, downloads included.
const buildTimeout = 30 * time.Minute

// stagingModules are the k8s.io modules that k8s.io/kubernetes' go.mod
// replaces with ./staging/src/k8s.io/<name>. A module outside
// k8s.io/kubernetes must replace each with k8s.io/<name> at the matching
// v0.x release, or the build resolves them to v0.0.0 and fails.
var stagingModules = []string{
	"api", "apiextensions-apiserver", "apimachinery", "apiserver", "cli-runtime", "client-go",
	"cloud-provider", "cluster-bootstrap", "code-generator", "component-base", "component-helpers",
	"controller-manager", "cri-api", "cri-client", "cri-streaming", "csi-translation-lib",
	"dynamic-resource-allocation", "endpointslice", "externaljwt", "kms", "kube-aggregator",
	"kube-controller-manager", "kube-proxy", "kube-scheduler", "kubectl", "kubelet", "metrics",
	"mount-utils", "pod-security-admission", "sample-apiserver", "sample-cli-plugin",
	"sample-controller", "streaming",
}

// program is one binary to build in a throwaway module.
type program struct {
	name, version string
	goMod         string            // the throwaway module's go.mod
	files         map[string]string // extra source files (a main.go)
	pkg           string            // what to build
	ldflags       string
}

// kubeModule is the go.mod every k8s.io/kubernetes program is built in.
// It is the same text for all of them, so the second and later programs
// (kubelet, kube-controller-manager, …) reuse the first one's module
// resolution and the Go build cache's compiled staging packages: after
// kube-apiserver, kubelet is ~2 minutes, the scheduler seconds.
func kubeModule() string {
	var b strings.Builder
	fmt.Fprintf(&b, "module tidemark-test-kubernetes\n\ngo 1.26\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n", KubeVersion)
	staging := "v0." + strings.TrimPrefix(KubeVersion, "v1.")
	for _, m := range stagingModules {
		fmt.Fprintf(&b, "\tk8s.io/%s => k8s.io/%s %s\n", m, m, staging)
	}
	b.WriteString(")\n")
	return b.String()
}

// kubeProgram is k8s.io/kubernetes/cmd/<name> at KubeVersion.
func kubeProgram(name string) program {
	minor := strings.Split(KubeVersion, ".")[1]
	const v = "k8s.io/component-base/version"
	return program{
		name: name, version: KubeVersion, goMod: kubeModule(),
		pkg: "k8s.io/kubernetes/cmd/" + name,
		// Without these the server reports v0.0.0-master, and clients that
		// check the server version misbehave.
		ldflags: fmt.Sprintf("-X %s.gitVersion=%s -X %s.gitMajor=1 -X %s.gitMinor=%s", v, KubeVersion, v, v, minor),
	}
}

func etcdProgram() program {
	return program{
		name: "etcd", version: EtcdVersion,
		goMod: fmt.Sprintf("module tidemark-test-etcd\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n", EtcdVersion),
		files: map[string]string{"main.go": "package main\n\nimport (\n\t\"os\"\n\n\t\"go.etcd.io/etcd/server/v3/etcdmain\"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n"},
		pkg:   ".",
	}
}

// KubeBinary returns the path of k8s.io/kubernetes/cmd/<name> (kubelet,
// kube-controller-manager, kube-scheduler, kube-proxy, kube-apiserver, …)
// at KubeVersion, building it if it is not cached.
func KubeBinary(name string, log func(string)) (string, error) {
	return build(kubeProgram(name), logOrStderr(log))
}

// Assets are the paths of the built control-plane programs.
type Assets struct {
	APIServer, Etcd string
}

// BuildAssets returns the paths of kube-apiserver and etcd, building
// whichever is not cached yet. log receives progress lines (nil: stderr).
func BuildAssets(log func(string)) (Assets, error) {
	log = logOrStderr(log)
	var a Assets
	var err error
	if a.Etcd, err = build(etcdProgram(), log); err != nil {
		return a, err
	}
	if a.APIServer, err = build(kubeProgram("kube-apiserver"), log); err != nil {
		return a, err
	}
	return a, nil
}

func logOrStderr(log func(string)) func(string) {
	if log != nil {
		return log
	}
	return func(s string) { fmt.Fprintln(os.Stderr, s) }
}

// CacheDir is where built programs are kept.
func CacheDir() (string, error) {
	if d := os.Getenv(CacheEnv); d != "" {
		return filepath.Abs(d)
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory (%v): set %s", err, CacheEnv)
	}
	return filepath.Join(base, "tidemark-test"), nil
}

// cached reports where name@version's binary is, if it is built.
func cached(name, version string) (string, bool) {
	cache, err := CacheDir()
	if err != nil {
		return "", false
	}
	bin := filepath.Join(cache, "bin", name+"@"+version, name)
	return bin, isExecutable(bin)
}

func build(p program, log func(string)) (string, error) {
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "bin", p.name+"@"+p.version)
	bin := filepath.Join(dir, p.name)
	if isExecutable(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	unlock, err := lock(filepath.Join(dir, ".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if isExecutable(bin) { // another process built it meanwhile
		return bin, nil
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("no go command in PATH: %w", err)
	}
	work, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	files := map[string]string{"go.mod": p.goMod}
	for n, c := range p.files {
		files[n] = c
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(work, n), []byte(c), 0o644); err != nil {
			return "", err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	tmp := filepath.Join(work, p.name)
	args := []string{"build", "-mod=mod", "-trimpath", "-o", tmp}
	if p.ldflags != "" {
		args = append(args, "-ldflags", p.ldflags)
	}
	args = append(args, p.pkg)
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = work
	// The project's own settings must not leak into the throwaway module.
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-buildvcs=false", "CGO_ENABLED=0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	log(fmt.Sprintf("kubetest: building %s %s into %s (cold builds take minutes on two cores; the result is cached)", p.name, p.version, bin))
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building %s %s (go %s in %s): %v\n%s", p.name, p.version, strings.Join(args, " "), work, err, tail(out.String(), 3000))
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", err
	}
	log(fmt.Sprintf("kubetest: built %s %s in %v", p.name, p.version, time.Since(start).Round(time.Second)))
	return bin, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

package kubetest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Tool is a main package of a third-party module at a tagged version,
// built like kube-apiserver: in a throwaway module, cached under
// <cache>/bin/<Name>@<Version>/.
//
// Tools from the Kubernetes ecosystem pin their k8s.io dependencies with
// replace directives, which only apply in their own main module; the
// throwaway module copies them (see toolModule), or the build picks up
// unrelated k8s.io versions and fails.
type Tool struct {
	Name    string // binary name, e.g. "csi-snapshotter"
	Module  string // e.g. "github.com/kubernetes-csi/external-snapshotter/v8"
	Version string // a tagged version
	Package string // the main package
	LDFlags string
}

// Pinned versions of the tools the real-cluster harness runs.
const (
	SnapshotterVersion = "v8.7.0"
	ProvisionerVersion = "v6.3.0"
	CoreDNSVersion     = "v1.15.0"
)

// The cluster's tools beyond what k8s.io/kubernetes provides.
var (
	SnapshotController = Tool{
		Name: "snapshot-controller", Module: "github.com/kubernetes-csi/external-snapshotter/v8", Version: SnapshotterVersion,
		Package: "github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller",
		LDFlags: "-X main.version=" + SnapshotterVersion,
	}
	CSISnapshotter = Tool{
		Name: "csi-snapshotter", Module: "github.com/kubernetes-csi/external-snapshotter/v8", Version: SnapshotterVersion,
		Package: "github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter",
		LDFlags: "-X main.version=" + SnapshotterVersion,
	}
	// v6.4.0 needs a dependency version the module proxy refuses.
	CSIProvisioner = Tool{
		Name: "csi-provisioner", Module: "github.com/kubernetes-csi/external-provisioner/v6", Version: ProvisionerVersion,
		Package: "github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner",
		LDFlags: "-X main.version=" + ProvisionerVersion,
	}
	CoreDNS = Tool{
		Name: "coredns", Module: "github.com/coredns/coredns", Version: CoreDNSVersion,
		Package: "github.com/coredns/coredns",
	}
)

// BuildTool returns the path of t's binary, building it if it is not cached.
func BuildTool(t Tool, log func(string)) (string, error) {
	if t.Name == "" || t.Module == "" || t.Package == "" || !strings.HasPrefix(t.Version, "v") {
		return "", fmt.Errorf("kubetest: incomplete tool %+v", t)
	}
	log = logOrStderr(log)
	if bin, ok := cached(t.Name, t.Version); ok {
		return bin, nil
	}
	mod, err := toolModule(t)
	if err != nil {
		return "", err
	}
	return build(program{name: t.Name, version: t.Version, goMod: mod, pkg: t.Package, ldflags: t.LDFlags}, log)
}

// toolModule writes a go.mod requiring t.Module@t.Version with the
// module's own replace directives. A replace by a directory inside the
// module's repository (external-snapshotter's "client/v8 => ./client")
// becomes that module at t.Version: such repositories tag their nested
// modules together.
func toolModule(t Tool) (string, error) {
	goMod, err := downloadGoMod(t.Module, t.Version)
	if err != nil {
		return "", err
	}
	out, err := exec.Command("go", "mod", "edit", "-json", goMod).Output()
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", goMod, err)
	}
	var f struct {
		Replace []struct {
			Old, New struct{ Path, Version string }
		}
	}
	if err := json.Unmarshal(out, &f); err != nil {
		return "", fmt.Errorf("reading %s: %w", goMod, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "module tidemark-test-%s\n\ngo 1.26\n\nrequire %s %s\n", t.Name, t.Module, t.Version)
	for _, r := range f.Replace {
		old := r.Old.Path
		if r.Old.Version != "" {
			old += " " + r.Old.Version
		}
		switch {
		case r.New.Version != "":
			fmt.Fprintf(&b, "replace %s => %s %s\n", old, r.New.Path, r.New.Version)
		case strings.HasPrefix(r.New.Path, "./") && strings.HasPrefix(r.Old.Path, repoRoot(t.Module)):
			fmt.Fprintf(&b, "replace %s => %s %s\n", old, r.Old.Path, t.Version)
		default:
			return "", fmt.Errorf("%s@%s replaces %s by the directory %s: cannot build it outside its repository", t.Module, t.Version, r.Old.Path, r.New.Path)
		}
	}
	return b.String(), nil
}

// repoRoot is a module path without its major-version suffix.
func repoRoot(module string) string {
	if i := strings.LastIndex(module, "/v"); i > 0 && strings.Trim(module[i+2:], "0123456789") == "" {
		return module[:i]
	}
	return module
}

// downloadGoMod fetches module@version's go.mod from the module proxy
// (into the module cache) and returns its path.
func downloadGoMod(module, version string) (string, error) {
	dir, err := os.MkdirTemp("", "tidemark-gomod-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	cmd := exec.Command("go", "mod", "download", "-json", module+"@"+version)
	// Outside any module, so the project's go.mod plays no part.
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GO111MODULE=on", "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	var m struct{ GoMod, Error string }
	_ = json.Unmarshal(out, &m)
	if m.Error != "" {
		return "", fmt.Errorf("go mod download %s@%s: %s", module, version, m.Error)
	}
	if err != nil || m.GoMod == "" {
		return "", fmt.Errorf("go mod download %s@%s: %v", module, version, err)
	}
	return m.GoMod, nil
}

// ClusterAssets are the paths of every program the real-cluster harness
// runs, except the ones built from this repository.
type ClusterAssets struct {
	Assets
	Kubelet, ControllerManager, Scheduler, Proxy                string
	SnapshotController, CSISnapshotter, CSIProvisioner, CoreDNS string
}

// BuildClusterAssets builds (one at a time: the machines have two cores)
// or finds every program of ClusterAssets.
func BuildClusterAssets(log func(string)) (ClusterAssets, error) {
	log = logOrStderr(log)
	var c ClusterAssets
	var err error
	if c.Assets, err = BuildAssets(log); err != nil {
		return c, err
	}
	for _, k := range []struct {
		name string
		dst  *string
	}{
		{"kubelet", &c.Kubelet}, {"kube-controller-manager", &c.ControllerManager},
		{"kube-scheduler", &c.Scheduler}, {"kube-proxy", &c.Proxy},
	} {
		if *k.dst, err = KubeBinary(k.name, log); err != nil {
			return c, err
		}
	}
	for _, t := range []struct {
		tool Tool
		dst  *string
	}{
		{CSISnapshotter, &c.CSISnapshotter}, {SnapshotController, &c.SnapshotController},
		{CSIProvisioner, &c.CSIProvisioner}, {CoreDNS, &c.CoreDNS},
	} {
		if *t.dst, err = BuildTool(t.tool, log); err != nil {
			return c, err
		}
	}
	return c, nil
}

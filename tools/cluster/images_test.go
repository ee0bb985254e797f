package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// The NATS image of deploy/: nats-server at the version go.mod requires,
// static, as the image's entrypoint on a rootfs that runs it as nobody.
func TestNATSImage(t *testing.T) {
	repo, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "nats-server")
	if err := buildStatic(repo, natsServerPackage, bin); err != nil {
		t.Fatal(err)
	}
	ef, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("nats-server is dynamically linked; the image has no libc")
		}
	}
	ef.Close()

	c := &cluster{dir: t.TempDir()}
	tarPath, err := c.buildImage(natsServerImage(bin))
	if err != nil {
		t.Fatal(err)
	}
	oci := filepath.Join(t.TempDir(), "oci")
	untar(t, tarPath, oci)
	idx, err := layout.ImageIndexFromPath(oci)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("%d images in the layout, want 1", len(im.Manifests))
	}
	// ctr names the imported image after this annotation.
	if got := im.Manifests[0].Annotations["io.containerd.image.name"]; got != natsImage {
		t.Errorf("image name %q, want %q", got, natsImage)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{"/nats-server"}) || cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("entrypoint %q on %s/%s, want [/nats-server] on linux/amd64", cf.Config.Entrypoint, cf.OS, cf.Architecture)
	}
	for _, p := range []string{"4222/tcp", "6222/tcp", "8222/tcp"} {
		if _, ok := cf.Config.ExposedPorts[p]; !ok {
			t.Errorf("port %s not exposed", p)
		}
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	want, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var sawBinary, sawTmp, sawNobody bool
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch h.Name {
		case "nats-server":
			sawBinary = true
			got, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(got) != sha256.Sum256(want) || fs.FileMode(h.Mode).Perm() != 0o755 {
				t.Errorf("nats-server in the layer: %d bytes, mode %o; want the built binary, 0755", len(got), h.Mode)
			}
		case "tmp/":
			// deploy/ mounts nothing on /tmp for NATS, but a shell-less
			// image still wants a writable /tmp for anything else.
			sawTmp = h.Mode&0o1777 == 0o1777
		case "etc/passwd":
			b, _ := io.ReadAll(tr)
			// deploy/ runs NATS as 65534.
			sawNobody = bytes.Contains(b, []byte("nobody:x:65534:65534:"))
		}
	}
	if !sawBinary || !sawTmp || !sawNobody {
		t.Errorf("layer: nats-server %v, world-writable sticky tmp/ %v, nobody (65534) in etc/passwd %v; want all", sawBinary, sawTmp, sawNobody)
	}

	// The binary is nats-server at the version go.mod requires.
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", natsServerPackage).Output()
	if err != nil {
		t.Fatal(err)
	}
	ver, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if wantVer := strings.TrimSpace(string(out)); !strings.Contains(string(ver), wantVer) {
		t.Errorf("nats-server --version: %q, want %s (go.mod)", ver, wantVer)
	}

	// Unchanged binary, unchanged key: the same tarball, not rebuilt.
	again, err := c.buildImage(natsServerImage(bin))
	if err != nil || again != tarPath {
		t.Errorf("second build: %s, %v; want the cached %s", again, err, tarPath)
	}
}

// untar extracts the image-layout tarball (regular files and directories
// only, which is all buildImage writes).
func untar(t *testing.T, path, dir string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(dst, dir+string(filepath.Separator)) {
			t.Fatalf("tar entry %q leaves the directory", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, b, 0o644); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("tar entry %q of type %c in an image layout", h.Name, h.Typeflag)
		}
	}
}

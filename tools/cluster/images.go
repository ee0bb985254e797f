package main

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Images are built here, without a registry, and imported into the
// cluster's containerd. Pods use them with imagePullPolicy: IfNotPresent
// (the default for a non-latest tag) or Never.
const (
	pauseImage    = "tidemark.local/pause:test"
	busyboxImage  = "tidemark.local/busybox:test"
	tidemarkImage = "tidemark.local/tidemark:test"
	natsImage     = "tidemark.local/nats:test"
	mariadbImage  = "tidemark.local/mariadb:test"
	postgresImage = "tidemark.local/postgres:test"
)

// image says how to make one image. key identifies its content: an image
// whose key has not changed is neither rebuilt nor re-imported.
type image struct {
	ref    string
	key    string
	rootfs func(dir string) error // fills an empty directory
	config v1.Config
}

func (c *cluster) baseImages(b binaries) []image {
	return []image{
		{ref: pauseImage, key: fileKey(b.Pause), rootfs: func(dir string) error {
			return copyFile(b.Pause, filepath.Join(dir, "pause"), 0o755)
		}, config: v1.Config{Entrypoint: []string{"/pause"}}},
		{ref: busyboxImage, key: fileKey("/bin/busybox"), rootfs: busyboxRootfs, config: v1.Config{
			Cmd: []string{"sh"}, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		}},
		natsServerImage(b.NATS),
	}
}

// natsServerImage is the static nats-server on an otherwise empty rootfs:
// deploy/'s NATS StatefulSet runs it with --config.
func natsServerImage(bin string) image {
	return image{ref: natsImage, key: fileKey(bin), rootfs: func(dir string) error {
		if err := copyFile(bin, filepath.Join(dir, "nats-server"), 0o755); err != nil {
			return err
		}
		return minimalEtc(dir)
	}, config: v1.Config{
		Entrypoint:   []string{"/nats-server"},
		ExposedPorts: map[string]struct{}{"4222/tcp": {}, "6222/tcp": {}, "8222/tcp": {}},
	}}
}

// tidemarkImage is the static tidemark binary on an otherwise empty
// rootfs: every service and the mover pods run it.
func (c *cluster) tidemarkImage(b binaries) image {
	return image{ref: tidemarkImage, key: stringKey(fileKey(b.Tidemark), tidemarkBinary), rootfs: func(dir string) error { return tidemarkRootfs(dir, b.Tidemark) },
		config: v1.Config{Entrypoint: []string{tidemarkBinary}, Env: []string{"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", "TMPDIR=/tmp"}}}
}

// tidemarkBinary is where the image keeps tidemark. Not /tidemark: mover
// pods mount their volume and scratch space under /tidemark/
// (kube.MoverMountPath), and the runtime cannot make a mount point inside
// a file.
const tidemarkBinary = "/usr/local/bin/tidemark"

// importImages builds (or takes from images/) each image's OCI layout
// tarball and imports it with ctr.
func (c *cluster) importImages(ctx context.Context, imgs []image) error {
	out, err := exec.CommandContext(ctx, "ctr", "--address", c.containerdSock(), "-n", "k8s.io", "images", "ls", "-q").Output()
	if err != nil {
		return fmt.Errorf("ctr images ls: %w", err)
	}
	present := map[string]bool{}
	for _, ref := range strings.Fields(string(out)) {
		present[ref] = true
	}
	for _, img := range imgs {
		if img.key == "" {
			return fmt.Errorf("image %s: its inputs cannot be read", img.ref)
		}
		if c.st.Images[img.ref] == img.key && present[img.ref] {
			continue
		}
		t := time.Now()
		tarPath, err := c.buildImage(img)
		if err != nil {
			return fmt.Errorf("image %s: %w", img.ref, err)
		}
		cmd := exec.CommandContext(ctx, "ctr", "--address", c.containerdSock(), "-n", "k8s.io", "images", "import", tarPath)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("ctr images import %s: %v\n%s", tarPath, err, out)
		}
		c.st.Images[img.ref] = img.key
		if err := c.st.save(c.dir); err != nil {
			return err
		}
		logf("image %s imported in %.1fs", img.ref, time.Since(t).Seconds())
	}
	return nil
}

// buildImage returns images/<name>-<key>.tar, building it if missing.
func (c *cluster) buildImage(img image) (string, error) {
	name := strings.NewReplacer("/", "_", ":", "_").Replace(img.ref)
	out := c.path("images", name+"-"+img.key[:16]+".tar")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(c.path("images"), 0o755); err != nil {
		return "", err
	}
	work, err := os.MkdirTemp(c.path("images"), "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "rootfs")
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", err
	}
	if err := img.rootfs(root); err != nil {
		return "", err
	}
	// The layer goes through a file: go-containerregistry reads it twice
	// (digest, then blob), and both reads must see the same bytes.
	layerTar := filepath.Join(work, "layer.tar")
	lf, err := os.Create(layerTar)
	if err != nil {
		return "", err
	}
	if err := tarDir(root, lf); err != nil {
		lf.Close()
		return "", err
	}
	if err := lf.Close(); err != nil {
		return "", err
	}
	if err := os.RemoveAll(root); err != nil {
		return "", err
	}
	layer, err := tarball.LayerFromFile(layerTar, tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.BestSpeed))
	if err != nil {
		return "", err
	}
	v1img, err := mutate.AppendLayers(mutate.MediaType(mutate.ConfigMediaType(empty.Image, types.OCIConfigJSON), types.OCIManifestSchema1), layer)
	if err != nil {
		return "", err
	}
	cfg, err := v1img.ConfigFile()
	if err != nil {
		return "", err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Created = v1.Time{Time: time.Now().UTC()}
	cfg.Config = img.config
	if v1img, err = mutate.ConfigFile(v1img, cfg); err != nil {
		return "", err
	}
	lp, err := layout.Write(filepath.Join(work, "oci"), empty.Index)
	if err != nil {
		return "", err
	}
	// containerd names an imported image after io.containerd.image.name.
	if err := lp.AppendImage(v1img, layout.WithAnnotations(map[string]string{
		"io.containerd.image.name":          img.ref,
		"org.opencontainers.image.ref.name": img.ref,
	})); err != nil {
		return "", err
	}
	f, err := os.Create(out + ".tmp")
	if err != nil {
		return "", err
	}
	if err := tarDir(filepath.Join(work, "oci"), f); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(out+".tmp", out); err != nil {
		return "", err
	}
	// Older builds of the same image are of no further use.
	if old, err := filepath.Glob(c.path("images", name+"-*.tar")); err == nil {
		for _, o := range old {
			if o != out {
				_ = os.Remove(o)
			}
		}
	}
	return out, nil
}

// tarDir writes dir's contents as a tar stream: owners, modes, symlinks
// and hard links kept; the contents of dev, proc and sys are left out
// (the runtime mounts its own).
func tarDir(dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	links := map[[2]uint64]string{}
	err := filepath.Walk(dir, func(p string, fi fs.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		for _, skip := range []string{"dev/", "proc/", "sys/"} {
			if strings.HasPrefix(rel, skip) {
				if fi.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		var target string
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		if !fi.IsDir() && !fi.Mode().IsRegular() && fi.Mode()&fs.ModeSymlink == 0 {
			return nil // sockets, pipes and devices: nothing an image needs
		}
		h, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return err
		}
		h.Name = rel
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uname, h.Gname = "", ""
		// Reading a file changes its atime: keep the stream reproducible.
		h.AccessTime, h.ChangeTime = time.Time{}, time.Time{}
		h.Format = tar.FormatPAX
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
			id := [2]uint64{st.Dev, st.Ino}
			if first, ok := links[id]; ok {
				h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
			} else {
				links[id] = rel
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag != tar.TypeReg {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// fileKey is a content hash of a file ("" if it cannot be read, which
// makes the image build fail with the real reason).
func fileKey(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}

func stringKey(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(h[:])
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// minimalEtc gives a distroless rootfs the files programs look up users,
// groups and certificates in, and a world-writable /tmp.
func minimalEtc(dir string) error {
	files := map[string]string{
		"etc/passwd":        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
		"etc/group":         "root:x:0:\nnogroup:x:65534:\n",
		"etc/hosts":         "127.0.0.1 localhost\n",
		"etc/nsswitch.conf": "hosts: files dns\n",
	}
	for p, content := range files {
		if err := writeFile(filepath.Join(dir, p), content, 0o644); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o777|fs.ModeSticky); err != nil {
		return err
	}
	return copyFile("/etc/ssl/certs/ca-certificates.crt", filepath.Join(dir, "etc/ssl/certs/ca-certificates.crt"), 0o644)
}

func tidemarkRootfs(dir, bin string) error {
	if err := copyFile(bin, filepath.Join(dir, tidemarkBinary), 0o755); err != nil {
		return err
	}
	return minimalEtc(dir)
}

// busyboxRootfs is Debian's busybox-static with its applets installed as
// symbolic links.
func busyboxRootfs(dir string) error {
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "root", "var/tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile("/bin/busybox", filepath.Join(dir, "bin/busybox"), 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("chroot", dir, "/bin/busybox", "--install", "-s").CombinedOutput(); err != nil {
		return fmt.Errorf("busybox --install: %v: %s", err, out)
	}
	return minimalEtc(dir)
}

var errNoMirror = errors.New("no Debian bookworm mirror in /etc/apt/sources.list{,.d}")

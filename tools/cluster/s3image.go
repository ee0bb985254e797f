package main

import (
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	kubetest "github.com/tidemark-dev/tidemark/tests/kube"
	"github.com/tidemark-dev/tidemark/tests/s3server"
)

// versitygwImage runs versitygw, the S3 server the e2e tests keep the
// repository in (deploy/overlays/e2e): mover pods open the repository
// themselves, so it must be reachable from pods, which a filesystem
// repository on a PVC is not.
const versitygwImage = "tidemark.local/versitygw:test"

// versitygwTool is the version tests/s3server pins, built static: the
// image has no libc, and toolbuild's (cgo) build of the same version
// lives under another name in the same cache.
var versitygwTool = kubetest.Tool{
	Name:    "versitygw-static",
	Module:  s3server.Versitygw.Module,
	Version: s3server.Versitygw.Version,
	Package: s3server.Versitygw.Package,
}

// versitygwPort is where the image's server listens; deploy/overlays/e2e
// names it too.
const versitygwPort = "7070/tcp"

func buildVersitygw() (string, error) {
	return kubetest.BuildTool(versitygwTool, func(s string) { logf("%s", s) })
}

// versitygwServerImage is the static versitygw on the minimal rootfs;
// the Deployment gives it its backend and credentials.
func versitygwServerImage(bin string) image {
	return image{ref: versitygwImage, key: fileKey(bin), rootfs: func(dir string) error {
		if err := copyFile(bin, filepath.Join(dir, "versitygw"), 0o755); err != nil {
			return err
		}
		return minimalEtc(dir)
	}, config: v1.Config{
		Entrypoint:   []string{"/versitygw"},
		ExposedPorts: map[string]struct{}{versitygwPort: {}},
	}}
}

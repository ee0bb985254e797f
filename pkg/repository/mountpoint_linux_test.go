package repository_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/tidemark-dev/tidemark/pkg/repository"
)

// A mover pod imports into its volume's mount point, whose parent is the
// pod's read-only root filesystem. The restore must not need to write
// beside the target (a real cluster's restore failed on kopia removing a
// placeholder there until recordingOutput.FinishDirectory).
func TestImportIntoAMountPointUnderAReadOnlyDirectory(t *testing.T) {
	parent := t.TempDir()
	target := filepath.Join(parent, "volume")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	// parent read-only (a bind mount of itself), target a writable tmpfs
	// mounted on it: the mover pod's layout.
	if err := syscall.Mount(parent, parent, "", syscall.MS_BIND, ""); err != nil {
		t.Skipf("this test needs to mount (root, or CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(parent, syscall.MNT_DETACH) })
	if err := syscall.Mount(parent, parent, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Skipf("remounting read-only: %v", err)
	}
	if err := syscall.Mount("tmpfs", target, "tmpfs", 0, "size=16m"); err != nil {
		t.Skipf("mounting a tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(target, syscall.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(parent, "probe"), nil, 0o644); err == nil {
		t.Fatal("the parent is writable: the test would prove nothing")
	}

	ctx := t.Context()
	r := mustOpen(t, filepath.Join(t.TempDir(), "repo"))
	src := smallDir(t, "restored into a mount point")
	res, err := r.ExportDir(ctx, repository.ExportRequest{App: "shop/db", Volume: "data", RunID: "r1", Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.ImportDir(ctx, string(res.ManifestID), target, nil); err != nil {
		t.Fatalf("importing into a mount point under a read-only directory: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(target, "f")); err != nil || string(got) != "restored into a mount point" {
		t.Fatalf("restored file: %q, %v", got, err)
	}
}

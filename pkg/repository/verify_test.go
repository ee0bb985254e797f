package repository_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tidemark-dev/tidemark/pkg/repository"
)

// A restored tree that differs from the backup — a flipped byte, a
// truncated file, a missing file — fails the import, naming each file.
func TestImportVerifiesTheRestoredTree(t *testing.T) {
	ctx := t.Context()
	src := t.TempDir()
	makeTreeSized(t, src, 50, 1<<20)
	r := mustOpen(t, filepath.Join(t.TempDir(), "repo"))
	res, err := r.ExportDir(ctx, repository.ExportRequest{App: "shop/files", Volume: "data", RunID: "r1", Dir: src})
	if err != nil {
		t.Fatal(err)
	}

	// Undamaged: verified and accepted.
	if _, err := r.ImportDir(ctx, res.ManifestID, filepath.Join(t.TempDir(), "ok"), nil); err != nil {
		t.Fatalf("a faithful restore failed verification: %v", err)
	}

	var flipped, truncated, removed string
	r.SetBeforeVerify(func(dir string) {
		var files []string
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if info, _ := d.Info(); info != nil && info.Size() > 1 && info.Mode().Perm()&0o200 != 0 {
					files = append(files, p)
				}
			}
			return nil
		})
		if len(files) < 3 {
			t.Fatalf("only %d writable files restored", len(files))
		}
		b, err := os.ReadFile(files[0])
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0xff
		if err := os.WriteFile(files[0], b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(files[1], 1); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(files[2]); err != nil {
			t.Fatal(err)
		}
		rel := func(p string) string { s, _ := filepath.Rel(dir, p); return filepath.ToSlash(s) }
		flipped, truncated, removed = rel(files[0]), rel(files[1]), rel(files[2])
	})
	_, err = r.ImportDir(ctx, res.ManifestID, filepath.Join(t.TempDir(), "damaged"), nil)
	if !errors.Is(err, repository.ErrVerification) {
		t.Fatalf("import of a damaged tree = %v, want ErrVerification", err)
	}
	msg := err.Error()
	for _, want := range []string{flipped + ": content differs", truncated + ": 1 bytes on disk", removed + ": missing"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
}

package repository_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/tests/kopiacli"
	"github.com/tidemark-dev/tidemark/tests/s3server"
)

// The repository Tidemark writes stays a plain kopia repository: the stock
// kopia CLI of the same version (built from the module) connects to it,
// lists Tidemark's snapshot with its tags and pin, verifies every file's
// content, and restores the same tree Tidemark exported. On a filesystem
// repository and on an S3 one.
func TestStockKopiaCLIReadsTheRepository(t *testing.T) {
	src := filepath.Join(t.TempDir(), "volume")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	total := makeTreeSized(t, src, 200, 3<<20)
	want := walk(t, src)

	check := func(t *testing.T, r *repository.Repository, cli *kopiacli.CLI) {
		res, err := r.ExportDir(t.Context(), repository.ExportRequest{App: "shop/postgres", Volume: "data", RunID: "run-cli", Dir: src})
		if err != nil {
			t.Fatal(err)
		}
		snaps := cli.Snapshots(t)
		i := slices.IndexFunc(snaps, func(s kopiacli.Snapshot) bool { return s.ID == res.ManifestID })
		if i < 0 {
			t.Fatalf("kopia snapshot list does not show %s: %+v", res.ManifestID, snaps)
		}
		s := snaps[i]
		if s.Source.UserName != repository.Username || s.Source.Host != "shop_postgres" || s.Source.Path != "/volumes/data" ||
			s.Tags["tag:"+repository.TagApp] != "shop/postgres" || s.Tags["tag:"+repository.TagRun] != "run-cli" ||
			!slices.Contains(s.Pins, repository.Pin) || s.RootEntry.Summary.Size != total {
			t.Errorf("kopia snapshot list shows %+v", s)
		}
		cli.Run(t, "snapshot", "verify", "--verify-files-percent=100", res.ManifestID)
		dst := filepath.Join(t.TempDir(), "restored-by-kopia")
		cli.Run(t, "snapshot", "restore", res.ManifestID, dst)
		compareTrees(t, want, walk(t, dst))
	}

	t.Run("filesystem", func(t *testing.T) {
		cli := kopiacli.New(t)
		path := filepath.Join(t.TempDir(), "repo")
		r := mustOpen(t, path)
		cli.ConnectFilesystem(t, path, testPassword)
		check(t, r, cli)
	})
	t.Run("s3", func(t *testing.T) {
		cli := kopiacli.New(t)
		srv := s3server.Start(t, s3server.Options{})
		s3 := s3Config(t, srv, "backups", "tidemark/")
		r, err := openS3(t, s3, testPassword, t.TempDir(), false)
		if err != nil {
			t.Fatal(err)
		}
		cli.ConnectS3(t, kopiacli.S3{Endpoint: srv.Endpoint, Bucket: "backups", Prefix: "tidemark/",
			AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, DisableTLS: true}, testPassword)
		check(t, r, cli)
	})
}

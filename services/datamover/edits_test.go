package datamover

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/repository"
)

func tarOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for name, content := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(content)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// A restored PostgreSQL data directory is made ready to recover from its
// backup label without a pod: the copied pid file and the snapshot's WAL
// segments go, the label is written, and the backup's WAL tar (a dump
// artifact of the same point) is unpacked into pg_wal, all owned like the
// data directory.
func TestEditsPrepareARestoredDataDirectory(t *testing.T) {
	ctx := t.Context()
	repo, err := repository.Open(ctx, repository.Config{Path: filepath.Join(t.TempDir(), "repository"), Password: "p", CacheDir: t.TempDir(), ProgressInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = repo.Close(context.Background()) })
	wal := tarOf(t, map[string]string{"000000010000000000000003": "segment 3", "000000010000000000000004": "segment 4"})
	exp, err := repo.ExportStream(ctx, repository.StreamRequest{App: "shop/pg", Artifact: "pg_wal.tar", RunID: "r1", Reader: bytes.NewReader(wal)})
	if err != nil {
		t.Fatal(err)
	}

	root := t.TempDir()
	for name, content := range map[string]string{"PG_VERSION": "15\n", "postmaster.pid": "42\n", "pg_wal/000000010000000000000002": "old segment", "pg_wal/archive_status/x.done": ""} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const pgUID, pgGID = 70, 70
	asRoot := os.Geteuid() == 0
	if asRoot {
		if err := os.Chown(root, pgUID, pgGID); err != nil {
			t.Fatal(err)
		}
	}
	label := "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n"
	err = applyEdits(ctx, repo, root, &events.VolumeEdits{
		Remove:  []string{"postmaster.pid", "postmaster.opts", "pg_wal/????????????????????????"},
		Files:   map[string]string{"backup_label": label},
		Extract: []events.TarExtract{{ManifestID: events.ManifestID(exp.ManifestID), Into: "pg_wal"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"postmaster.pid", "pg_wal/000000010000000000000002"} {
		if _, err := os.Stat(filepath.Join(root, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v, want removed", gone, err)
		}
	}
	want := map[string]string{"backup_label": label, "pg_wal/000000010000000000000003": "segment 3", "pg_wal/000000010000000000000004": "segment 4", "PG_VERSION": "15\n"}
	for name, content := range want {
		p := filepath.Join(root, name)
		got, err := os.ReadFile(p)
		if err != nil || string(got) != content {
			t.Errorf("%s = %q, %v; want %q", name, got, err, content)
			continue
		}
		if fi, _ := os.Stat(p); asRoot && name != "PG_VERSION" {
			if st := fi.Sys().(*syscall.Stat_t); st.Uid != pgUID || st.Gid != pgGID || fi.Mode().Perm() != 0o600 {
				t.Errorf("%s owned %d:%d mode %v, want %d:%d 0600 like the data directory", name, st.Uid, st.Gid, fi.Mode().Perm(), pgUID, pgGID)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(root, "pg_wal/archive_status/x.done")); err != nil {
		t.Errorf("a file the patterns do not match was removed: %v", err)
	}

	// Nothing outside the volume, ever.
	evil, err := repo.ExportStream(ctx, repository.StreamRequest{App: "shop/pg", Artifact: "evil.tar", RunID: "r1", Reader: bytes.NewReader(tarOf(t, map[string]string{"../escaped": "x"}))})
	if err != nil {
		t.Fatal(err)
	}
	outside := filepath.Dir(root)
	for i, e := range []*events.VolumeEdits{
		{Dir: "../elsewhere"},
		{Files: map[string]string{"../escaped": "x"}},
		{Files: map[string]string{"/etc/passwd": "x"}},
		{Remove: []string{"../*"}},
		{Remove: []string{"pg_wal"}},
		{Extract: []events.TarExtract{{ManifestID: events.ManifestID(evil.ManifestID), Into: "pg_wal"}}},
		{Dir: "no-such-dir", Files: map[string]string{"f": "x"}},
	} {
		if err := applyEdits(ctx, repo, root, e); !errors.Is(err, ErrInvalidEdits) {
			t.Errorf("edits %d %+v: %v, want ErrInvalidEdits", i, e, err)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "escaped")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a file was written outside the volume: %v", err)
	}
}

package repository_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/tests/s3server"
)

// s3Repo returns the S3 config of a fresh bucket on srv.
func s3Config(t *testing.T, srv *s3server.Server, bucket, prefix string) *repository.S3 {
	t.Helper()
	srv.CreateBucket(t, bucket)
	cfg := &repository.S3{
		Endpoint: srv.URL(), Bucket: bucket, Prefix: prefix, Region: srv.Region,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey, RootCA: srv.CAPEM,
	}
	return cfg
}

func openS3(t *testing.T, s3 *repository.S3, password string, cacheDir string, noCreate bool) (*repository.Repository, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	r, err := repository.Open(ctx, repository.Config{
		S3: s3, Password: password, CacheDir: cacheDir, NoCreate: noCreate, ProgressInterval: 50 * time.Millisecond,
	})
	if err == nil {
		t.Cleanup(func() { _ = r.Close(context.Background()) })
	}
	return r, err
}

// A volume goes into an S3 repository (versitygw on loopback) and comes
// back identical; the next export of the unchanged volume, from another
// client, uploads nothing; the S3 secret is nowhere on disk.
func TestS3ExportImport(t *testing.T) {
	ctx := t.Context()
	srv := s3server.Start(t, s3server.Options{})
	s3 := s3Config(t, srv, "backups", "tidemark/")

	src := filepath.Join(t.TempDir(), "volume")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	total := makeTreeSized(t, src, 300, 4<<20)
	want := walk(t, src)

	cache1 := t.TempDir()
	r, err := openS3(t, s3, testPassword, cache1, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Path(); got != "s3://"+srv.Endpoint+"/backups/tidemark/" {
		t.Errorf("Path() = %q", got)
	}
	res, err := r.ExportDir(ctx, repository.ExportRequest{App: "shop/postgres", Volume: "data", RunID: "r1", Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes != total || res.BytesUploaded <= 0 {
		t.Fatalf("export = %+v, want %d bytes", res, total)
	}
	// The objects are under the prefix, in the bucket.
	if entries, err := os.ReadDir(filepath.Join(srv.Root, "backups", "tidemark")); err != nil || len(entries) == 0 {
		t.Errorf("nothing under the prefix in the bucket: %v", err)
	}

	// Another client: its own cache, the repository found, not created.
	cache2 := t.TempDir()
	r2, err := openS3(t, s3, testPassword, cache2, true)
	if err != nil {
		t.Fatal(err)
	}
	res2, err := r2.ExportDir(ctx, repository.ExportRequest{App: "shop/postgres", Volume: "data", RunID: "r2", Dir: src})
	if err != nil {
		t.Fatal(err)
	}
	if res2.BytesUploaded != 0 || res2.HashedFiles != 0 {
		t.Errorf("re-export of the unchanged volume from another client: %+v, want nothing hashed or uploaded", res2)
	}
	dst := filepath.Join(t.TempDir(), "restored")
	if _, err := r2.ImportDir(ctx, res.ManifestID, dst, nil); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, want, walk(t, dst))

	// A stream too.
	data := randomBytes(5, 3<<20)
	sres, err := r.ExportStream(ctx, repository.StreamRequest{App: "shop/postgres", Artifact: "dump", RunID: "r1", Reader: bytes.NewReader(data)})
	if err != nil {
		t.Fatal(err)
	}
	var back bytes.Buffer
	if _, err := r2.ImportStream(ctx, sres.ManifestID, &back, nil); err != nil || !bytes.Equal(back.Bytes(), data) {
		t.Errorf("stream came back as %d bytes (%v)", back.Len(), err)
	}

	if err := r.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{cache1, cache2} {
		assertNotIn(t, dir, srv.SecretKey, testPassword)
	}

	// A prefix without a repository is not one.
	if _, err := openS3(t, &repository.S3{Endpoint: s3.Endpoint, Bucket: s3.Bucket, Prefix: "elsewhere/", AccessKeyID: s3.AccessKeyID, SecretAccessKey: s3.SecretAccessKey},
		testPassword, t.TempDir(), true); !errors.Is(err, repository.ErrNoRepository) || !strings.Contains(err.Error(), "elsewhere/") {
		t.Errorf("NoCreate on an empty prefix: %v, want ErrNoRepository naming it", err)
	}
	// A wrong password is refused like on a filesystem repository.
	_, err = openS3(t, s3, "not the password", t.TempDir(), true)
	if !errors.Is(err, repository.ErrWrongPassword) || !repository.IsPermanent(err) {
		t.Errorf("wrong password: %v", err)
	}
	assertClean(t, err, srv.SecretKey, testPassword, "not the password")
}

// Each S3 misconfiguration is refused at Open with its own error, saying
// what to fix, and never showing the secret or the password.
func TestS3Errors(t *testing.T) {
	srv := s3server.Start(t, s3server.Options{})
	good := s3Config(t, srv, "backups", "")
	check := func(name string, s3 *repository.S3, want error, permanent bool, hint string) {
		t.Helper()
		start := time.Now()
		_, err := openS3(t, s3, testPassword, t.TempDir(), false)
		took := time.Since(start)
		if !errors.Is(err, want) || repository.IsPermanent(err) != permanent || !strings.Contains(err.Error(), hint) {
			t.Errorf("%s: %v (permanent %v), want %v (permanent %v) mentioning %q", name, err, repository.IsPermanent(err), want, permanent, hint)
		}
		assertClean(t, err, s3.SecretAccessKey, testPassword)
		if took > 45*time.Second {
			t.Errorf("%s: took %v to fail", name, took)
		}
		t.Logf("%s (%v): %v", name, took.Round(time.Millisecond), err)
	}
	wrongSecret := *good
	wrongSecret.SecretAccessKey = "wrong-" + good.SecretAccessKey
	check("wrong secret", &wrongSecret, repository.ErrAccessDenied, true, repository.EnvS3SecretKey)

	noBucket := *good
	noBucket.Bucket = "no-such-bucket"
	check("missing bucket", &noBucket, repository.ErrNoBucket, true, "no-such-bucket")

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	unreachable := *good
	unreachable.Endpoint = "http://" + closed
	check("unreachable", &unreachable, repository.ErrUnreachable, false, repository.EnvS3Endpoint)

	tlsToPlain := *good
	tlsToPlain.Endpoint = srv.Endpoint // no http:// and DisableTLS unset: HTTPS
	check("https to a plain-HTTP server", &tlsToPlain, repository.ErrUnreachable, false, repository.EnvS3DisableTLS)

	partial := *good
	partial.SecretAccessKey = ""
	check("access key without secret", &partial, repository.ErrInvalidConfig, true, repository.EnvS3SecretKey)
}

// Over TLS, the server's certificate is checked against the CA given;
// without it the error says to give one.
func TestS3TLS(t *testing.T) {
	srv := s3server.Start(t, s3server.Options{TLS: true})
	s3 := s3Config(t, srv, "backups", "")
	r, err := openS3(t, s3, testPassword, t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.ExportDir(t.Context(), repository.ExportRequest{App: "a", Volume: "v", RunID: "r", Dir: smallDir(t, "over tls")}); err != nil {
		t.Fatal(err)
	}
	untrusted := *s3
	untrusted.RootCA = nil
	_, err = openS3(t, &untrusted, testPassword, t.TempDir(), true)
	if !errors.Is(err, repository.ErrUnreachable) || !strings.Contains(err.Error(), repository.EnvS3CAFile) {
		t.Errorf("untrusted certificate: %v, want ErrUnreachable naming %s", err, repository.EnvS3CAFile)
	}
}

func TestS3FromEnvironment(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte("s3cr3t\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, []byte("-----BEGIN CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}
	if s, err := repository.S3FromEnvironment(env()); s != nil || err != nil {
		t.Errorf("no variables: %+v, %v; want no S3", s, err)
	}
	s, err := repository.S3FromEnvironment(env(
		repository.EnvS3Bucket, "b", repository.EnvS3Endpoint, "minio.local:9000", repository.EnvS3Prefix, "p/",
		repository.EnvS3AccessKey, "AK", repository.EnvS3SecretKey+"_FILE", secretFile,
		repository.EnvS3DisableTLS, "true", repository.EnvS3CAFile, caFile, repository.EnvS3Region, "eu-west-1"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Bucket != "b" || s.Endpoint != "minio.local:9000" || s.Prefix != "p/" || s.AccessKeyID != "AK" || s.SecretAccessKey != "s3cr3t" ||
		!s.DisableTLS || s.Region != "eu-west-1" || len(s.RootCA) == 0 {
		t.Errorf("S3FromEnvironment = %+v", s)
	}
	for name, tc := range map[string]struct {
		env  func(string) string
		hint string
	}{
		"no bucket":        {env(repository.EnvS3Endpoint, "x:1"), repository.EnvS3Bucket},
		"secret twice":     {env(repository.EnvS3Bucket, "b", repository.EnvS3AccessKey, "AK", repository.EnvS3SecretKey, "s3cr3t", repository.EnvS3SecretKey+"_FILE", secretFile), "set one"},
		"missing file":     {env(repository.EnvS3Bucket, "b", repository.EnvS3SecretKey+"_FILE", filepath.Join(dir, "nope")), repository.EnvS3SecretKey + "_FILE"},
		"bad bool":         {env(repository.EnvS3Bucket, "b", repository.EnvS3DisableTLS, "sometimes"), repository.EnvS3DisableTLS},
		"key no secret":    {env(repository.EnvS3Bucket, "b", repository.EnvS3AccessKey, "AK"), repository.EnvS3SecretKey},
		"endpoint as path": {env(repository.EnvS3Bucket, "b", repository.EnvS3Endpoint, "http://host/bucket"), repository.EnvS3Endpoint},
	} {
		_, err := repository.S3FromEnvironment(tc.env)
		if !errors.Is(err, repository.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.hint) {
			t.Errorf("%s: %v, want ErrInvalidConfig naming %s", name, err, tc.hint)
		}
		assertClean(t, err, "s3cr3t")
	}

	// Resolve (what every process opening the repository calls) picks
	// the bucket up from the environment, and refuses a path as well.
	t.Setenv(repository.EnvS3Bucket, "b")
	t.Setenv(repository.EnvS3AccessKey, "AK")
	t.Setenv(repository.EnvS3SecretKey, "s3cr3t")
	cfg, err := repository.Resolve(dir, "", "pw", "", false, nil)
	if err != nil || cfg.S3 == nil || cfg.S3.Bucket != "b" || cfg.Path != "" {
		t.Errorf("Resolve with S3 variables = %+v, %v", cfg, err)
	}
	if _, err := repository.Resolve(dir, filepath.Join(dir, "repo"), "pw", "", false, nil); !errors.Is(err, repository.ErrInvalidConfig) {
		t.Errorf("Resolve with a path and a bucket: %v, want ErrInvalidConfig", err)
	}
}

// assertClean fails if err's message shows any of the secrets.
func assertClean(t *testing.T, err error, secrets ...string) {
	t.Helper()
	if err == nil {
		return
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(err.Error(), s) {
			t.Errorf("error %q shows a secret", err)
		}
	}
}

// assertNotIn fails if a file under dir holds any of the secrets.
func assertNotIn(t *testing.T, dir string, secrets ...string) {
	t.Helper()
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s holds a secret", p)
			}
		}
		return nil
	})
}

// compareTrees compares two walks, with what kopia does not restore
// exactly left out (see comparable).
func compareTrees(t *testing.T, want, got map[string]entry) {
	t.Helper()
	for rel, w := range want {
		g, ok := got[rel]
		if !ok {
			t.Errorf("%s: missing after import", rel)
			continue
		}
		if comparable(rel, g) != comparable(rel, w) {
			t.Errorf("%s: imported %+v, want %+v", rel, g, w)
		}
	}
	for rel := range got {
		if _, ok := want[rel]; !ok {
			t.Errorf("%s: imported but not in the source", rel)
		}
	}
}

// TIDEMARK_REPOSITORY_COMPRESSION picks the compressor; a name kopia does
// not know is refused with the list of those it does.
func TestCompressionFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(repository.EnvCompression, "zstd-fastest")
	cfg, err := repository.Resolve(dir, "", "pw", "", false, nil)
	if err != nil || cfg.Tuning.Compression != "zstd-fastest" {
		t.Errorf("Resolve = %+v, %v; want zstd-fastest", cfg.Tuning, err)
	}
	t.Setenv(repository.EnvCompression, "rar")
	_, err = repository.Resolve(dir, "", "pw", "", false, nil)
	if !errors.Is(err, repository.ErrInvalidConfig) || !strings.Contains(err.Error(), repository.EnvCompression) || !strings.Contains(err.Error(), "s2-default") {
		t.Errorf("an unknown compressor: %v, want ErrInvalidConfig naming %s and the choices", err, repository.EnvCompression)
	}
}

// Package kopiacli runs the stock kopia command-line program against a
// repository in tests: the `kopia` binary built from the module proxy at
// exactly the version of github.com/kopia/kopia that the project's go.mod
// requires (read from the test binary's build information), cached across
// test runs by tests/toolbuild. It is how the tests check that a Tidemark
// repository stays readable without Tidemark.
//
// When kopia cannot be built, the test is skipped with the reason, unless
// TIDEMARK_REQUIRE_DB is set (then it fails).
package kopiacli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/tests/toolbuild"
)

// Module is kopia's module path.
const Module = "github.com/kopia/kopia"

// Program returns the kopia CLI at version.
func Program(version string) toolbuild.Program {
	return toolbuild.Program{Name: "kopia", Module: Module, Version: version, Package: Module}
}

// Binary returns the path of the kopia CLI of the version this binary
// links, building it first if needed.
func Binary(t testing.TB) string {
	t.Helper()
	v, err := toolbuild.ModuleVersion(Module)
	if err != nil {
		t.Fatalf("kopiacli: %v", err)
	}
	return toolbuild.Binary(t, Program(v))
}

// CLI is the kopia CLI with a connection of its own: a config file, a
// cache and a log directory under t.TempDir(), nothing in the user's home.
type CLI struct {
	Bin        string
	ConfigFile string
	dir        string
	password   string
}

// New returns a CLI that is not connected yet.
func New(t testing.TB) *CLI {
	t.Helper()
	dir := t.TempDir()
	return &CLI{Bin: Binary(t), ConfigFile: filepath.Join(dir, "repository.config"), dir: dir}
}

// Run runs kopia with args (plus the config file, cache, log directory and
// the password in KOPIA_PASSWORD) and returns its stdout; a non-zero exit
// fails the test with stderr.
func (c *CLI) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.Try(args...)
	if err != nil {
		t.Fatalf("kopia %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// Try is Run returning the error (with stderr) instead of failing.
func (c *CLI) Try(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Bin, c.Args(args...)...)
	cmd.Env = c.Env()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Args returns args with the connection's flags added.
func (c *CLI) Args(args ...string) []string {
	return append(args, "--config-file="+c.ConfigFile, "--log-dir="+filepath.Join(c.dir, "logs"), "--no-progress")
}

// Env is the environment kopia runs in: the password, no update check,
// and no persisted password in a keyring.
func (c *CLI) Env() []string {
	return append(os.Environ(), "KOPIA_PASSWORD="+c.password, "KOPIA_CHECK_FOR_UPDATES=false",
		"KOPIA_PERSIST_CREDENTIALS_ON_CONNECT=false", "KOPIA_USE_KEYRING=false")
}

// ConnectFilesystem connects to the filesystem repository at path.
func (c *CLI) ConnectFilesystem(t testing.TB, path, password string) {
	t.Helper()
	c.password = password
	c.Run(t, "repository", "connect", "filesystem", "--path="+path, "--cache-directory="+filepath.Join(c.dir, "cache"))
}

// S3 says where an S3 repository is.
type S3 struct {
	Endpoint, Bucket, Prefix, AccessKey, SecretKey string
	DisableTLS                                     bool
	CAFile                                         string
}

// ConnectS3 connects to an S3 repository.
func (c *CLI) ConnectS3(t testing.TB, s S3, password string) {
	t.Helper()
	c.password = password
	args := []string{"repository", "connect", "s3", "--endpoint=" + s.Endpoint, "--bucket=" + s.Bucket,
		"--access-key=" + s.AccessKey, "--secret-access-key=" + s.SecretKey, "--cache-directory=" + filepath.Join(c.dir, "cache")}
	if s.Prefix != "" {
		args = append(args, "--prefix="+s.Prefix)
	}
	if s.DisableTLS {
		args = append(args, "--disable-tls")
	}
	if s.CAFile != "" {
		args = append(args, "--root-ca-pem-path="+s.CAFile)
	}
	c.Run(t, args...)
}

// Snapshot is one entry of `kopia snapshot list --json`.
type Snapshot struct {
	ID     string `json:"id"`
	Source struct {
		Host     string `json:"host"`
		UserName string `json:"userName"`
		Path     string `json:"path"`
	} `json:"source"`
	Tags             map[string]string `json:"tags"`
	Pins             []string          `json:"pins"`
	IncompleteReason string            `json:"incomplete"`
	RootEntry        struct {
		Obj     string `json:"obj"`
		Summary struct {
			Size  int64 `json:"size"`
			Files int64 `json:"files"`
		} `json:"summ"`
	} `json:"rootEntry"`
}

// Snapshots lists every snapshot in the repository with
// `kopia snapshot list --all --json`.
func (c *CLI) Snapshots(t testing.TB) []Snapshot {
	t.Helper()
	var out []Snapshot
	if err := json.Unmarshal([]byte(c.Run(t, "snapshot", "list", "--all", "--json")), &out); err != nil {
		t.Fatalf("kopia snapshot list --json: %v", err)
	}
	return out
}

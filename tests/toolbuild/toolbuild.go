// Package toolbuild builds the real third-party programs some tests run
// (an S3 server, the stock kopia CLI) from the Go module proxy, at a pinned
// tagged version, once per machine: the binary is cached under
// <cache>/tidemark-test/bin/<name>@<version>/ and reused by every later
// test run. <cache> is $TIDEMARK_TEST_CACHE if set, else os.UserCacheDir()
// ($XDG_CACHE_HOME or ~/.cache).
//
// The build runs in a throwaway module that requires the pinned version
// (`go install mod@version` needs the proxy's version list, which it
// refuses for some modules), so the project's own go.mod is not touched.
// Parallel test binaries share one build through a file lock.
//
// When the program cannot be built (no network, no proxy), the test is
// skipped with the reason, unless TIDEMARK_REQUIRE_DB is set to a non-empty
// value: then it fails, so CI never turns a missing server into a silently
// skipped suite.
package toolbuild

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

// RequireEnv turns "cannot be built" from a skip into a failure (the same
// variable as tests/dbserver's).
const RequireEnv = "TIDEMARK_REQUIRE_DB"

// CacheEnv overrides where built programs are kept.
const CacheEnv = "TIDEMARK_TEST_CACHE"

// buildTimeout bounds one build (downloading the modules included).
const buildTimeout = 15 * time.Minute

// Program says what to build.
type Program struct {
	Name    string // the binary's name, e.g. "versitygw"
	Module  string // e.g. "github.com/versity/versitygw"
	Version string // a tagged version, e.g. "v1.8.0"
	Package string // the main package, e.g. "github.com/versity/versitygw/cmd/versitygw"
}

// Binary returns the path of p's binary, building it first if it is not
// in the cache yet. It skips (or, with TIDEMARK_REQUIRE_DB, fails) the test
// when the build is impossible.
func Binary(t testing.TB, p Program) string {
	t.Helper()
	path, err := Build(p)
	if err != nil {
		Unavailable(t, fmt.Sprintf("building %s %s: %v", p.Name, p.Version, err))
	}
	return path
}

// Unavailable skips the test with reason, or fails it when
// TIDEMARK_REQUIRE_DB is set.
func Unavailable(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf("%s (%s is set, so this is a failure, not a skip)", reason, RequireEnv)
	}
	t.Skipf("%s; skipping (set %s to make this a failure)", reason, RequireEnv)
}

// CacheDir is where built programs are kept.
func CacheDir() (string, error) {
	if d := os.Getenv(CacheEnv); d != "" {
		return filepath.Abs(d)
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory (%v): set %s", err, CacheEnv)
	}
	return filepath.Join(base, "tidemark-test"), nil
}

// Build builds p unless it is cached, and returns the binary's path.
func Build(p Program) (string, error) {
	if p.Name == "" || p.Module == "" || p.Package == "" || !strings.HasPrefix(p.Version, "v") {
		return "", fmt.Errorf("toolbuild: incomplete program %+v", p)
	}
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "bin", p.Name+"@"+p.Version)
	bin := filepath.Join(dir, p.Name)
	if isExecutable(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	unlock, err := lock(filepath.Join(dir, ".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if isExecutable(bin) { // another test binary built it meanwhile
		return bin, nil
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("no go command in PATH: %w", err)
	}
	work, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	mod := fmt.Sprintf("module tidemark-test-%s\n\ngo 1.26\n\nrequire %s %s\n", p.Name, p.Module, p.Version)
	if err := os.WriteFile(filepath.Join(work, "go.mod"), []byte(mod), 0o644); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	tmp := filepath.Join(work, p.Name)
	cmd := exec.CommandContext(ctx, goBin, "build", "-mod=mod", "-trimpath", "-o", tmp, p.Package)
	cmd.Dir = work
	// The project's own settings must not leak into the throwaway module.
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-buildvcs=false")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build %s in a module requiring %s %s: %v\n%s", p.Package, p.Module, p.Version, err, tail(out.String(), 2000))
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "toolbuild: built %s %s in %v into %s\n", p.Name, p.Version, time.Since(start).Round(time.Second), bin)
	return bin, nil
}

// ModuleVersion returns the version of module that the project requires:
// the one the running (test) binary was built with if it links the
// module, else what `go list -m` says in the current directory (a test's
// package directory, inside the project).
func ModuleVersion(module string) (string, error) {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == module {
				if d.Replace != nil {
					return "", fmt.Errorf("%s is replaced by %s in go.mod", module, d.Replace.Path)
				}
				return d.Version, nil
			}
		}
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("no go command in PATH: %w", err)
	}
	out, err := exec.Command(goBin, "list", "-m", "-f", "{{if .Replace}}replaced{{else}}{{.Version}}{{end}}", module).Output()
	if err != nil {
		return "", fmt.Errorf("go list -m %s: %w", module, err)
	}
	v := strings.TrimSpace(string(out))
	if !strings.HasPrefix(v, "v") {
		return "", fmt.Errorf("go list -m %s: %q is not a version", module, v)
	}
	return v, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
)

// demoPostgres is a throwaway PostgreSQL server on loopback for `tidemark
// demo`: its own data directory, socket directory and port, run as the
// "postgres" account when tidemark runs as root (PostgreSQL refuses root).
type demoPostgres struct {
	binDir   string
	dataDir  string
	sockDir  string
	logPath  string
	port     int
	password string
	owner    *syscall.Credential

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// findPostgres returns the directory of PostgreSQL's server binaries
// (15 or later: the blueprint uses pg_backup_start): explicit if set,
// else the newest /usr/lib/postgresql/<major>/bin, else the one on PATH.
func findPostgres(explicit string) (string, error) {
	has := func(dir string) bool {
		for _, b := range []string{"postgres", "initdb"} {
			if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if explicit != "" {
		if !has(explicit) {
			return "", fmt.Errorf("--pg-bin %s: no postgres and initdb there", explicit)
		}
		return explicit, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		ma, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		mb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return mb - ma
	})
	for _, d := range dirs {
		if major, _ := strconv.Atoi(filepath.Base(filepath.Dir(d))); major >= 15 && has(d) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("postgres"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	return "", errors.New("no PostgreSQL 15 or later server binaries found")
}

// installPostgres installs Debian's postgresql-15 with apt.
func installPostgres(ctx context.Context, out io.Writer) error {
	if os.Geteuid() != 0 {
		return errors.New("installing it needs root")
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return errors.New("apt-get is not available to install it")
	}
	fmt.Fprintln(out, "PostgreSQL server binaries are missing: installing postgresql-15 with apt-get (refuse with --no-install)…")
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	install := func() ([]byte, error) {
		cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "--no-install-recommends", "postgresql-15")
		cmd.Env = env
		return cmd.CombinedOutput()
	}
	if _, err := install(); err == nil {
		return nil
	}
	update := exec.CommandContext(ctx, "apt-get", "update")
	update.Env = env
	if b, err := update.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get update: %v: %s", err, lastLine(b))
	}
	if b, err := install(); err != nil {
		return fmt.Errorf("apt-get install postgresql-15: %v: %s", err, lastLine(b))
	}
	return nil
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// postgresOwner is the account PostgreSQL runs as: nil (this process's
// own) unless this process is root.
func postgresOwner() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, errors.New(`PostgreSQL refuses to run as root and there is no "postgres" account to run it as (the postgresql-15 package creates one); run the demo as another user`)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// ownedDir makes dir for PostgreSQL's account.
func ownedDir(dir string, owner *syscall.Credential) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if owner == nil {
		return nil
	}
	return os.Chown(dir, int(owner.Uid), int(owner.Gid))
}

func (p *demoPostgres) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(p.binDir, name), args...)
	// Its own process group: the terminal's Ctrl-C reaches tidemark, which
	// then stops the server itself, in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: p.owner}
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	return cmd
}

// initdb creates a fresh data directory with password authentication on
// TCP.
func (p *demoPostgres) initdb(ctx context.Context) error {
	buf := make([]byte, 12)
	_, _ = rand.Read(buf)
	p.password = hex.EncodeToString(buf)
	pwFile := filepath.Join(filepath.Dir(p.dataDir), "pwfile")
	if err := os.WriteFile(pwFile, []byte(p.password+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(pwFile)
	if p.owner != nil {
		if err := os.Chown(pwFile, int(p.owner.Uid), int(p.owner.Gid)); err != nil {
			return err
		}
	}
	out, err := p.command(ctx, "initdb", "-D", p.dataDir, "-U", "postgres", "--pwfile="+pwFile,
		"--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions").CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb: %v: %s", err, lastLine(out))
	}
	return nil
}

// start runs the server on a free loopback port and returns once it
// accepts connections (after recovery, for a restored data directory).
func (p *demoPostgres) start(ctx context.Context) error {
	port, err := freeLoopbackPort()
	if err != nil {
		return err
	}
	p.port = port
	logf, err := os.OpenFile(p.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	// Not CommandContext: the server must outlive a cancelled demo until
	// stop shuts it down properly.
	p.cmd = p.command(context.WithoutCancel(ctx), "postgres", "-D", p.dataDir, "-k", p.sockDir, "-h", "127.0.0.1", "-p", strconv.Itoa(port),
		"-c", "wal_level=replica", "-c", "logging_collector=off")
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	p.done = make(chan struct{})
	go func() { p.err = p.cmd.Wait(); close(p.done) }()

	db, err := sql.Open("pgx", p.dsn("postgres"))
	if err != nil {
		return err
	}
	defer db.Close()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := db.PingContext(pctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("postgres exited during start-up (%v): %s", p.err, p.logTail(5))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres did not accept connections within 2 minutes: %s", p.logTail(5))
		}
	}
}

// stop shuts the server down ("fast": open sessions are ended) and waits.
func (p *demoPostgres) stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

func (p *demoPostgres) dsn(db string) string {
	return fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/%s?sslmode=disable", p.password, p.port, db)
}

func (p *demoPostgres) logTail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	lines := strings.Split(strings.TrimSpace(string(bytes.ToValidUTF8(b, nil))), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func (p *demoPostgres) logContains(s string) bool {
	b, _ := os.ReadFile(p.logPath)
	return bytes.Contains(b, []byte(s))
}

func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

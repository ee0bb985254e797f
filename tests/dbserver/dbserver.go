// Package dbserver starts real database servers (MariaDB, PostgreSQL) on
// loopback for tests, each in its own temporary directory, and stops them
// when the test ends. Nothing is mocked: the servers are Debian's binaries.
//
// If a server's binaries are missing, the harness installs them with
// apt-get (when running as root), once per process and under a file lock
// shared by all test binaries. If that is impossible, the test is skipped —
// unless the environment variable TIDEMARK_REQUIRE_DB is set to a non-empty
// value, in which case it fails instead (CI sets it so that a missing
// database can never turn into a silently skipped suite).
package dbserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
)

// RequireEnv names the environment variable that turns "database not
// available" from a skip into a failure.
const RequireEnv = "TIDEMARK_REQUIRE_DB"

// startTimeout bounds one server start-up (data-dir initialisation included,
// package installation not).
const startTimeout = 60 * time.Second

// stopTimeout bounds a graceful shutdown before the harness uses SIGKILL.
const stopTimeout = 30 * time.Second

// pgBinDir is where Debian's postgresql-15 package puts its server binaries.
const pgBinDir = "/usr/lib/postgresql/15/bin"

// Server is a running database server started for one test.
type Server struct {
	Host     string
	Port     int
	User     string // a superuser (PostgreSQL) or root account (MariaDB)
	Password string
	DataDir  string

	kind    string // "mariadb" or "postgresql"
	dir     string // the server's temporary directory
	logPath string // server stdout+stderr
	argv    func(port int) []string
	cred    *osUser        // non-nil: run the server as this OS user
	stopSig syscall.Signal // graceful-shutdown signal
	sock    string         // MariaDB's unix socket
	secured bool           // MariaDB: root accounts have the password
	started bool           // it has accepted connections at least once

	mu   sync.Mutex
	proc *process // the current server process; nil before the first start
}

// osUser is the OS account a server runs as when the test runs as root.
type osUser struct {
	name     string
	uid, gid int
}

// process is one run of a server binary.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // cmd.Wait's result, valid after done is closed
}

// MySQLDSN returns a go-sql-driver/mysql DSN for database db ("" for none),
// e.g. "root:pw@tcp(127.0.0.1:port)/db".
func (s *Server) MySQLDSN(db string) string {
	return fmt.Sprintf("%s:%s@tcp(%s)/%s", s.User, s.Password, s.addr(), db)
}

// PostgresDSN returns a pgx URL for database db ("" for the superuser's
// default database), e.g. "postgres://user:pw@127.0.0.1:port/db?sslmode=disable".
func (s *Server) PostgresDSN(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(s.User, s.Password),
		Host:     s.addr(),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// PID is the server process's id, 0 when it is not running.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil || s.proc.cmd.Process == nil {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// OSUser is the account the server runs as when the test runs as root
// ("" otherwise): a command that starts it again must use it too.
func (s *Server) OSUser() string {
	if s.cred == nil {
		return ""
	}
	return s.cred.name
}

// StartCommand is the command line that starts this server as it runs now
// (same data directory, socket and port): for tests whose blueprints stop
// and start the server themselves. A server started with it is not managed
// by this package.
func (s *Server) StartCommand() []string { return s.argv(s.Port) }

// LogPath is the server's log file (its stdout and stderr).
func (s *Server) LogPath() string { return s.logPath }

func (s *Server) addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// Kill sends SIGKILL to the server's process group (the server and, for
// PostgreSQL, all its backends) and waits for the server process to exit:
// a crash, for crash-recovery tests. Restart brings it back on the same
// data directory and port. Kill on a stopped server does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		return
	}
	killGroup(p.cmd, syscall.SIGKILL)
	<-p.done
	waitGroupGone(p.cmd.Process.Pid, 10*time.Second)
}

// Restart stops the server (gracefully if it is still running) and starts it
// again on the same data directory, port and credentials, returning when it
// accepts connections. After a Kill this is crash recovery.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.stop()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := s.start(ctx); err != nil {
		t.Fatalf("dbserver: restarting %s: %v", s.kind, err)
	}
}

// ---------------------------------------------------------------------------
// MariaDB

// MariaDB starts mariadbd on 127.0.0.1 with a free port, a fresh data dir
// under t.TempDir() and a random root password, and returns when it accepts
// TCP connections. The server is stopped in t.Cleanup.
func MariaDB(t testing.TB) *Server {
	t.Helper()
	if platformErr != nil {
		unavailable(t, "MariaDB: %v", platformErr)
		return nil
	}
	bins, err := ensureMariaDB()
	if err != nil {
		unavailable(t, "MariaDB: %v", err)
		return nil // only reached with a fake testing.TB
	}
	dir := t.TempDir()
	s := &Server{
		Host:     "127.0.0.1",
		User:     "root",
		Password: randomPassword(),
		DataDir:  filepath.Join(dir, "data"),
		kind:     "mariadb",
		dir:      dir,
		logPath:  filepath.Join(dir, "mariadbd.log"),
		stopSig:  syscall.SIGTERM,
	}
	t.Cleanup(func() { s.cleanup(t) })

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	start := time.Now()

	sockDir, err := shortDir(t, dir, len("mysqld.sock"))
	if err != nil {
		t.Fatalf("dbserver: MariaDB: %v", err)
	}
	sock := filepath.Join(sockDir, "mysqld.sock")
	tmpDir := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmpDir, 0o700); err != nil {
		t.Fatalf("dbserver: MariaDB: %v", err)
	}
	asRoot := os.Geteuid() == 0

	// Initialise the data dir: system tables, root@localhost with password
	// authentication (empty password until we set one below).
	install := []string{
		"--no-defaults",
		"--datadir=" + s.DataDir,
		"--auth-root-authentication-method=normal",
		"--skip-test-db",
		"--skip-name-resolve",
		"--tmpdir=" + tmpDir,
	}
	if asRoot {
		install = append(install, "--user=root")
	}
	if out, err := runLogged(ctx, nil, dir, bins.installDB, install...); err != nil {
		t.Fatalf("dbserver: MariaDB: %s failed: %v\n%s", filepath.Base(bins.installDB), err, tail(out, 40))
	}

	s.argv = func(port int) []string {
		a := []string{
			bins.mariadbd,
			"--no-defaults",
			"--datadir=" + s.DataDir,
			"--socket=" + sock,
			"--port=" + strconv.Itoa(port),
			"--bind-address=127.0.0.1",
			"--skip-grant-tables=OFF",
			"--skip-name-resolve",
			"--pid-file=" + filepath.Join(dir, "mariadbd.pid"),
			"--tmpdir=" + tmpDir,
		}
		if asRoot {
			a = append(a, "--user=root") // mariadbd refuses root without it
		}
		return a
	}
	s.sock = sock
	if err := s.start(ctx); err != nil {
		t.Fatalf("dbserver: MariaDB: %v", err)
	}
	t.Logf("dbserver: MariaDB listening on %s (data %s), up in %s", s.addr(), s.DataDir, time.Since(start).Round(time.Millisecond))
	return s
}

// MariaDBOn starts a MariaDB server on an existing data directory, such as
// a restored one, whose root accounts already have password. A server that
// does not come up is an error, not a test failure: whether a restored
// directory starts is what a restore test wants to know.
func MariaDBOn(t testing.TB, dataDir, password string) (*Server, error) {
	t.Helper()
	if platformErr != nil {
		unavailable(t, "MariaDB: %v", platformErr)
		return nil, platformErr
	}
	bins, err := ensureMariaDB()
	if err != nil {
		unavailable(t, "MariaDB: %v", err)
		return nil, err
	}
	dir := t.TempDir()
	s := &Server{Host: "127.0.0.1", User: "root", Password: password, DataDir: dataDir, kind: "mariadb", dir: dir,
		logPath: filepath.Join(dir, "mariadbd.log"), stopSig: syscall.SIGTERM, secured: true}
	t.Cleanup(func() { s.cleanup(t) })
	sockDir, err := shortDir(t, dir, len("mysqld.sock"))
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(sockDir, "mysqld.sock")
	tmpDir := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmpDir, 0o700); err != nil {
		return nil, err
	}
	s.argv = func(port int) []string {
		a := []string{bins.mariadbd, "--no-defaults", "--datadir=" + s.DataDir, "--socket=" + sock, "--port=" + strconv.Itoa(port),
			"--bind-address=127.0.0.1", "--skip-name-resolve", "--pid-file=" + filepath.Join(dir, "mariadbd.pid"), "--tmpdir=" + tmpDir}
		if os.Geteuid() == 0 {
			a = append(a, "--user=root")
		}
		return a
	}
	s.sock = sock
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	start := time.Now()
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	t.Logf("dbserver: MariaDB on %s listening on %s, up in %s", dataDir, s.addr(), time.Since(start).Round(time.Millisecond))
	return s, nil
}

// secureMariaDB connects over the unix socket as root, gives the root
// accounts the password, removes the anonymous accounts and the root@<hostname>
// account (which --skip-name-resolve ignores, so ALTER USER cannot reach it),
// and creates root@127.0.0.1 and root@% with all privileges. Every step is
// idempotent, and a retry connects with the new password if root@localhost
// already has it.
func (s *Server) secureMariaDB(ctx context.Context, sock string) error {
	db, err := s.socketConn(ctx, sock, "")
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.Number == 1045 { // access denied: password already set
		db, err = s.socketConn(ctx, sock, s.Password)
	}
	if err != nil {
		return err
	}
	defer db.Close()

	pw := quoteSQL(s.Password)
	stmts := []string{
		"DELETE FROM mysql.global_priv WHERE User = '' OR (User = 'root' AND Host NOT IN ('localhost', '127.0.0.1', '::1', '%'))",
		"DELETE FROM mysql.proxies_priv WHERE User = '' OR (User = 'root' AND Host NOT IN ('localhost', '127.0.0.1', '::1', '%'))",
		"FLUSH PRIVILEGES",
	}
	for _, host := range []string{"localhost", "127.0.0.1", "::1", "%"} {
		stmts = append(stmts,
			fmt.Sprintf("CREATE USER IF NOT EXISTS 'root'@'%s' IDENTIFIED BY %s", host, pw),
			fmt.Sprintf("ALTER USER 'root'@'%s' IDENTIFIED BY %s", host, pw),
			fmt.Sprintf("GRANT ALL PRIVILEGES ON *.* TO 'root'@'%s' WITH GRANT OPTION", host),
		)
	}
	for _, q := range stmts {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", strings.Replace(q, pw, "'***'", 1), err)
		}
	}
	return nil
}

// socketConn opens a single connection to MariaDB as root over the unix
// socket and pings it.
func (s *Server) socketConn(ctx context.Context, sock, password string) (*sql.DB, error) {
	cfg := mysql.NewConfig()
	cfg.User = "root"
	cfg.Passwd = password
	cfg.Net = "unix"
	cfg.Addr = sock
	cfg.Logger = &mysql.NopLogger{}
	cfg.Timeout = 2 * time.Second
	cfg.ReadTimeout = 2 * time.Second
	cfg.WriteTimeout = 2 * time.Second
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(1)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

func (s *Server) pingMariaDB(ctx context.Context) error {
	cfg := mysql.NewConfig()
	cfg.User = s.User
	cfg.Passwd = s.Password
	cfg.Net = "tcp"
	cfg.Addr = s.addr()
	cfg.Logger = &mysql.NopLogger{}
	cfg.Timeout = 2 * time.Second
	cfg.ReadTimeout = 2 * time.Second
	cfg.WriteTimeout = 2 * time.Second
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return err
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	return db.PingContext(ctx)
}

type mariaBins struct{ mariadbd, installDB string }

func findMariaDB() (mariaBins, bool) {
	var b mariaBins
	b.mariadbd = findBinary("mariadbd", "mysqld")
	b.installDB = findBinary("mariadb-install-db", "mysql_install_db")
	return b, b.mariadbd != "" && b.installDB != ""
}

func ensureMariaDB() (mariaBins, error) {
	if b, ok := findMariaDB(); ok {
		return b, nil
	}
	if err := ensurePackage("mariadb-server", func() bool { _, ok := findMariaDB(); return ok }); err != nil {
		return mariaBins{}, err
	}
	b, ok := findMariaDB()
	if !ok {
		return b, errors.New("mariadb-server is installed but mariadbd or mariadb-install-db is not found")
	}
	return b, nil
}

// ---------------------------------------------------------------------------
// PostgreSQL

// PostgreSQL starts PostgreSQL 15 (initdb, then postgres) on 127.0.0.1 with a
// free port, a fresh data dir under t.TempDir(), wal_level=replica and
// password (SCRAM) authentication over TCP for the superuser "postgres", and
// returns when it accepts connections. When the test runs as root the server
// runs as the OS user "postgres" (created if missing), since postgres refuses
// to run as root. The server is stopped in t.Cleanup.
func PostgreSQL(t testing.TB) *Server {
	t.Helper()
	if platformErr != nil {
		unavailable(t, "PostgreSQL: %v", platformErr)
		return nil
	}
	if err := ensurePostgreSQL(); err != nil {
		unavailable(t, "PostgreSQL: %v", err)
		return nil
	}
	var cred *osUser
	if os.Geteuid() == 0 {
		c, err := postgresCredential()
		if err != nil {
			unavailable(t, "PostgreSQL: no non-root OS user to run postgres as: %v", err)
			return nil
		}
		cred = c
	}
	dir, err := serverDir(t, cred)
	if err != nil {
		t.Fatalf("dbserver: PostgreSQL: %v", err)
	}
	s := &Server{
		Host:     "127.0.0.1",
		User:     "postgres",
		Password: randomPassword(),
		DataDir:  filepath.Join(dir, "data"),
		kind:     "postgresql",
		dir:      dir,
		logPath:  filepath.Join(dir, "postgres.log"),
		cred:     cred,
		stopSig:  syscall.SIGINT, // "fast" shutdown: does not wait for clients
	}
	t.Cleanup(func() { s.cleanup(t) })

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	start := time.Now()

	sockDir, err := shortDir(t, dir, len(".s.PGSQL.65535.lock"))
	if err != nil {
		t.Fatalf("dbserver: PostgreSQL: %v", err)
	}
	if cred != nil && sockDir != dir {
		if err := os.Chown(sockDir, cred.uid, cred.gid); err != nil {
			t.Fatalf("dbserver: PostgreSQL: %v", err)
		}
	}

	pwFile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwFile, []byte(s.Password+"\n"), 0o600); err != nil {
		t.Fatalf("dbserver: PostgreSQL: %v", err)
	}
	if cred != nil {
		if err := os.Chown(pwFile, cred.uid, cred.gid); err != nil {
			t.Fatalf("dbserver: PostgreSQL: %v", err)
		}
	}
	out, err := runLogged(ctx, cred, dir, filepath.Join(pgBinDir, "initdb"),
		"-D", s.DataDir,
		"-U", s.User,
		"--pwfile="+pwFile,
		"--auth-local=trust",
		"--auth-host=scram-sha-256",
		"-E", "UTF8",
		"--locale=C",
		"--no-sync",
		"--no-instructions",
	)
	_ = os.Remove(pwFile)
	if err != nil {
		t.Fatalf("dbserver: PostgreSQL: initdb failed: %v\n%s", err, tail(out, 40))
	}

	if err := s.startPostgreSQL(ctx, sockDir); err != nil {
		t.Fatalf("dbserver: PostgreSQL: %v", err)
	}
	t.Logf("dbserver: PostgreSQL listening on %s (data %s), up in %s", s.addr(), s.DataDir, time.Since(start).Round(time.Millisecond))
	return s
}

func (s *Server) startPostgreSQL(ctx context.Context, sockDir string) error {
	s.argv = func(port int) []string {
		return []string{
			filepath.Join(pgBinDir, "postgres"),
			"-D", s.DataDir,
			"-k", sockDir,
			"-h", "127.0.0.1",
			"-p", strconv.Itoa(port),
			"-c", "wal_level=replica",
			"-c", "logging_collector=off",
		}
	}
	return s.start(ctx)
}

// PostgreSQLDir returns a fresh directory that the OS account PostgreSQL
// runs as (when the test runs as root) owns and can reach: where a test
// restores a data directory that PostgreSQLOn then starts.
func PostgreSQLDir(t testing.TB) string {
	t.Helper()
	var cred *osUser
	if os.Geteuid() == 0 {
		c, err := postgresCredential()
		if err != nil {
			unavailable(t, "PostgreSQL: no non-root OS user to run postgres as: %v", err)
			return ""
		}
		cred = c
	}
	dir, err := serverDir(t, cred)
	if err != nil {
		t.Fatalf("dbserver: PostgreSQL: %v", err)
	}
	return dir
}

// PostgreSQLOn starts PostgreSQL on an existing data directory (a restored
// one) with the given password for user postgres, and returns when it
// accepts TCP connections, or the server's own words on why it did not
// start (its log's tail). Recovery, if the directory needs any, happens
// before that. The server is stopped in t.Cleanup.
func PostgreSQLOn(t testing.TB, dataDir, password string) (*Server, error) {
	t.Helper()
	if platformErr != nil {
		unavailable(t, "PostgreSQL: %v", platformErr)
		return nil, platformErr
	}
	if err := ensurePostgreSQL(); err != nil {
		unavailable(t, "PostgreSQL: %v", err)
		return nil, err
	}
	var cred *osUser
	if os.Geteuid() == 0 {
		c, err := postgresCredential()
		if err != nil {
			unavailable(t, "PostgreSQL: no non-root OS user to run postgres as: %v", err)
			return nil, err
		}
		cred = c
	}
	dir, err := serverDir(t, cred)
	if err != nil {
		return nil, err
	}
	s := &Server{
		Host: "127.0.0.1", User: "postgres", Password: password, DataDir: dataDir, kind: "postgresql",
		dir: dir, logPath: filepath.Join(dir, "postgres.log"), cred: cred, stopSig: syscall.SIGINT,
	}
	t.Cleanup(func() { s.cleanup(t) })
	sockDir, err := shortDir(t, dir, len(".s.PGSQL.65535.lock"))
	if err != nil {
		return nil, err
	}
	if cred != nil && sockDir != dir {
		if err := os.Chown(sockDir, cred.uid, cred.gid); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	start := time.Now()
	if err := s.startPostgreSQL(ctx, sockDir); err != nil {
		return nil, err
	}
	t.Logf("dbserver: PostgreSQL on %s listening on %s, up in %s", dataDir, s.addr(), time.Since(start).Round(time.Millisecond))
	return s, nil
}

func (s *Server) pingPostgreSQL(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.PostgresDSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.Ping(ctx)
}

func havePostgreSQL() bool {
	for _, b := range []string{"postgres", "initdb"} {
		if fi, err := os.Stat(filepath.Join(pgBinDir, b)); err != nil || fi.IsDir() {
			return false
		}
	}
	return true
}

func ensurePostgreSQL() error {
	if havePostgreSQL() {
		return nil
	}
	return ensurePackage("postgresql-15", havePostgreSQL)
}

// serverDir returns a fresh directory under t.TempDir() that the OS user in
// cred (if any) owns and can reach: every parent up to / must be searchable
// by that user. t.TempDir() makes its directories 0700, so the harness adds
// the search (x) bit to the ones the testing package created; if a parent
// outside those (TMPDIR itself, say /root/tmp) is not searchable, it falls
// back to a directory under /tmp, removed in t.Cleanup.
func serverDir(t testing.TB, cred *osUser) (string, error) {
	dir := t.TempDir()
	if cred == nil {
		return dir, nil
	}
	sysTmp := filepath.Clean(os.TempDir())
	reachable := true
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if strings.HasPrefix(p, sysTmp+string(filepath.Separator)) {
				if err := os.Chmod(p, fi.Mode().Perm()|0o001); err != nil {
					return "", err
				}
			} else {
				reachable = false
				break
			}
		}
		if p == "/" || p == filepath.Dir(p) {
			break
		}
	}
	if !reachable {
		d, err := os.MkdirTemp("/tmp", "tidemark-db-")
		if err != nil {
			return "", err
		}
		t.Cleanup(func() { _ = os.RemoveAll(d) })
		dir = d
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", err
	}
	return dir, os.Chown(dir, cred.uid, cred.gid)
}

// ---------------------------------------------------------------------------
// Process management shared by both servers

// start launches the server with a fresh free port (retrying when the port
// was taken in between) and waits until it accepts connections. A MariaDB
// server that was just initialised is first given its password over the
// unix socket.
func (s *Server) start(ctx context.Context) error {
	const attempts = 5
	port := s.Port
	s.started = false
	var lastErr error
	for i := 0; i < attempts; i++ {
		if port == 0 || i > 0 {
			p, err := freePort()
			if err != nil {
				return err
			}
			port = p
		}
		logOffset := fileSize(s.logPath)
		p, err := s.spawn(port)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.proc = p
		s.Port = port
		s.mu.Unlock()

		err = s.waitReady(ctx, p)
		if err == nil {
			s.started = true
			return nil
		}
		lastErr = err
		select {
		case <-p.done:
		default:
			killGroup(p.cmd, syscall.SIGKILL)
			<-p.done
		}
		logText := readFrom(s.logPath, logOffset)
		// A killed PostgreSQL's shared memory can outlive its processes for
		// a moment; its key comes from the port, so another port avoids it,
		// just as it avoids a port someone else took.
		clash := strings.Contains(logText, "Address already in use") || strings.Contains(logText, "pre-existing shared memory block")
		if !clash || ctx.Err() != nil {
			break
		}
	}
	return fmt.Errorf("%v\n--- last lines of %s ---\n%s", lastErr, s.logPath, tail(readFrom(s.logPath, 0), 40))
}

func (s *Server) spawn(port int) (*process, error) {
	logf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child keeps its own copy
	argv := s.argv(port)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = s.dir
	cmd.Env = childEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = sysProcAttr(s.cred)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (s *Server) waitReady(ctx context.Context, p *process) error {
	secured := s.kind != "mariadb" || s.secured
	var lastErr error
	for {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited during start-up: %v", s.kind, p.err)
		default:
		}
		// Each probe is bounded, and cut short if the server exits (say,
		// because something else answers on its port and it could not bind).
		probe := 2 * time.Second
		if !secured {
			probe = 10 * time.Second // connect plus a dozen account statements
		}
		pctx, cancel := context.WithTimeout(ctx, probe)
		go func() {
			select {
			case <-p.done:
				cancel()
			case <-pctx.Done():
			}
		}()
		if !secured {
			if err := s.secureMariaDB(pctx, s.sock); err == nil {
				secured = true
				s.secured = true
			} else {
				lastErr = err
			}
		}
		if secured {
			var err error
			if s.kind == "mariadb" {
				err = s.pingMariaDB(pctx)
			} else {
				err = s.pingPostgreSQL(pctx)
			}
			if err == nil {
				cancel()
				return nil
			}
			lastErr = err
		}
		cancel()
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not accepting connections on %s after %s: %v", s.kind, s.addr(), startTimeout, lastErr)
		case <-p.done:
			return fmt.Errorf("%s exited during start-up: %v", s.kind, p.err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop shuts the current process down gracefully, with SIGKILL after
// stopTimeout, and waits for it. It reports whether the process had already
// exited on its own (or by Kill) before stop was called.
func (s *Server) stop() (alreadyExited bool, exitErr error) {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		return false, nil
	}
	select {
	case <-p.done:
		return true, p.err
	default:
	}
	_ = p.cmd.Process.Signal(s.stopSig)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		killGroup(p.cmd, syscall.SIGKILL)
		<-p.done
	}
	// Backends (PostgreSQL) exit on their own once the postmaster is gone;
	// make sure nothing of the group outlives the test.
	killGroup(p.cmd, syscall.SIGKILL)
	return false, p.err
}

func (s *Server) cleanup(t testing.TB) {
	exited, err := s.stop()
	if exited && err != nil && !isKilled(err) && s.started {
		t.Logf("dbserver: %s had exited before the end of the test: %v", s.kind, err)
	}
	// A failed start-up already put the log tail in its failure message.
	if t.Failed() && s.started {
		t.Logf("dbserver: %s log tail (%s):\n%s", s.kind, s.logPath, tail(readFrom(s.logPath, 0), 20))
	}
}

func isKilled(err error) bool {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------------------
// Installation

type installResult struct {
	once sync.Once
	err  error
}

var installs sync.Map // package name -> *installResult

// ensurePackage installs a Debian package with apt-get, at most once per
// process, holding an exclusive flock on /tmp/tidemark-apt.lock so that
// parallel test binaries never run apt at the same time. have reports
// whether what the caller needs is present; it is checked again under the
// lock and after apt-get (whose exit status is otherwise ignored: a package
// whose postinst fails to start the system service still installed the
// binaries we need).
func ensurePackage(pkg string, have func() bool) error {
	v, _ := installs.LoadOrStore(pkg, &installResult{})
	r := v.(*installResult)
	r.once.Do(func() { r.err = aptInstall(pkg, have) })
	return r.err
}

const aptLockPath = "/tmp/tidemark-apt.lock"

func aptInstall(pkg string, have func() bool) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%s is not installed and the tests do not run as root, so they cannot apt-get install it (run .ci/install-test-deps.sh as root)", pkg)
	}
	aptGet := findBinary("apt-get")
	if aptGet == "" {
		return fmt.Errorf("%s is not installed and apt-get is not available", pkg)
	}
	unlock, err := lockFile(aptLockPath)
	if err != nil {
		return fmt.Errorf("locking %s: %w", aptLockPath, err)
	}
	defer unlock()
	if have() { // another test binary installed it while we waited
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	env := append(childEnv(), "DEBIAN_FRONTEND=noninteractive")
	var log bytes.Buffer
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, aptGet, args...)
		cmd.Env = env
		cmd.Stdout = &log
		cmd.Stderr = &log
		return cmd.Run()
	}
	// Wait for dpkg's own lock rather than failing if someone else holds it.
	lockOpt := []string{"-o", "DPkg::Lock::Timeout=600"}
	updErr := run(append(lockOpt, "update", "-qq")...)
	instErr := run(append(lockOpt, "install", "-y", "-qq", pkg)...)
	if have() {
		return nil
	}
	return fmt.Errorf("apt-get install %s did not provide it (update: %v; install: %v)\n%s", pkg, updErr, instErr, tail(log.String(), 30))
}

// unavailable skips the test, or fails it when TIDEMARK_REQUIRE_DB is set.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf("dbserver: %s (%s is set, so this is a failure, not a skip)", msg, RequireEnv)
		return
	}
	t.Skipf("dbserver: %s (set %s=1 to make this a failure)", msg, RequireEnv)
}

// ---------------------------------------------------------------------------
// Helpers

// freePort asks the kernel for a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// shortDir returns dir, or a fresh directory under /tmp (removed in
// t.Cleanup) when dir is too long to hold a unix socket named like name
// (sun_path holds 107 bytes).
func shortDir(t testing.TB, dir string, nameLen int) (string, error) {
	if len(dir)+1+nameLen <= 100 {
		return dir, nil
	}
	d, err := os.MkdirTemp("/tmp", "tdm-")
	if err != nil {
		return "", err
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d, nil
}

// findBinary looks each name up in PATH and then in the sbin directories,
// which a non-login PATH often lacks (Debian puts mariadbd in /usr/sbin).
func findBinary(names ...string) string {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
		for _, d := range []string{"/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin", "/bin"} {
			p := filepath.Join(d, n)
			if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
				return p
			}
		}
	}
	return ""
}

// childEnv is the test's environment without the client/server variables
// that would redirect initdb, postgres or mariadbd (PGDATA, MYSQL_HOME, …).
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "MYSQL") || strings.HasPrefix(k, "MARIADB") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// runLogged runs a command (as cred's user if non-nil) and returns its
// combined output.
func runLogged(ctx context.Context, cred *osUser, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = childEnv()
	cmd.SysProcAttr = sysProcAttr(cred)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.String(), err
}

func randomPassword() string {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return "tdm" + hex.EncodeToString(b)
}

func quoteSQL(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func readFrom(path string, off int64) string {
	b, err := os.ReadFile(path)
	if err != nil || off > int64(len(b)) {
		return ""
	}
	return string(b[off:])
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

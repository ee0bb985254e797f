package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/service"
)

type demoOptions struct {
	pgBin     string
	noInstall bool
	keep      bool
	dir       string
}

func newDemoCommand() *cobra.Command {
	o := &demoOptions{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Back up a live PostgreSQL and restore it, end to end, in about a minute",
		Long: `Run the whole of Tidemark once, on this machine, and clean up after.

The demo:
  1. starts Tidemark in this process: an embedded NATS server and every
     service, with a filesystem repository in a temporary directory;
  2. starts a throwaway PostgreSQL on loopback, with a ticker inserting a row
     every 10 ms;
  3. takes an application-consistent backup with the bundled postgres
     blueprint (pg_backup_start, snapshot, pg_backup_stop, the WAL);
  4. restores the point to a new data directory and starts a second
     PostgreSQL on it, which recovers from the backup label;
  5. checks that the restored rows are a gap-free prefix of the source's,
     ending inside backup mode, and prints a summary;
  6. stops everything it started and removes the temporary directory.

It needs PostgreSQL 15 or later server binaries. When they are missing and
the demo runs as root with apt-get, it installs postgresql-15 (unless
--no-install); otherwise it says what to install. Tidemark's own log goes to
<dir>/tidemark.log, kept with --keep.`,
		Example: `  tidemark demo
  tidemark demo --keep          # keep the repository, logs and data directories`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.pgBin, "pg-bin", "", "directory of PostgreSQL's server binaries (default: the newest /usr/lib/postgresql/<15+>/bin, else PATH)")
	f.BoolVar(&o.noInstall, "no-install", false, "never install PostgreSQL with apt; stop and say what to install instead")
	f.BoolVar(&o.keep, "keep", false, "keep the demo's directory (repository, logs, both data directories) instead of removing it")
	f.StringVar(&o.dir, "dir", "", "where to create the demo's temporary directory (default: the system's)")
	return cmd
}

// demoFacts keeps the facts the summary needs while passing every fact on
// to the progress display.
type demoFacts struct {
	mu      sync.Mutex
	all     []events.Event
	forward chan events.Event
}

func teeFacts(ctx context.Context, in <-chan events.Event) *demoFacts {
	d := &demoFacts{forward: make(chan events.Event, 256)}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-in:
				d.mu.Lock()
				d.all = append(d.all, ev)
				d.mu.Unlock()
				select {
				case d.forward <- ev:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return d
}

func demoFind[T events.Payload](d *demoFacts, match func(T) bool) (T, time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ev := range d.all {
		if p, ok := events.As[T](ev); ok && match(p) {
			return p, ev.Time, true
		}
	}
	var zero T
	return zero, time.Time{}, false
}

func (o *demoOptions) run(ctx context.Context, out io.Writer) (err error) {
	began := time.Now()
	binDir, err := findPostgres(o.pgBin)
	if err != nil && o.pgBin == "" {
		if o.noInstall {
			return fmt.Errorf("%v: install PostgreSQL 15 or later (Debian/Ubuntu: apt-get install postgresql-15), or point --pg-bin at its bin directory", err)
		}
		if ierr := installPostgres(ctx, out); ierr != nil {
			return fmt.Errorf("%v and %v: install PostgreSQL 15 or later (Debian/Ubuntu: apt-get install postgresql-15), or point --pg-bin at its bin directory", err, ierr)
		}
		binDir, err = findPostgres("")
	}
	if err != nil {
		return err
	}
	owner, err := postgresOwner()
	if err != nil {
		return err
	}
	// The demo must not touch a real repository or bus the environment
	// points at: everything lives in its own directory.
	for _, k := range []string{"TIDEMARK_REPOSITORY_S3_BUCKET", "TIDEMARK_REPOSITORY_S3_ENDPOINT", "TIDEMARK_REPOSITORY_PASSWORD", "TIDEMARK_REPOSITORY_PASSWORD_FILE", "TIDEMARK_RETENTION_FILE"} {
		_ = os.Unsetenv(k)
	}

	root, err := os.MkdirTemp(o.dir, "tidemark-demo-")
	if err != nil {
		return err
	}
	// PostgreSQL's account must reach its directories below this one.
	if err := os.Chmod(root, 0o711); err != nil {
		return err
	}
	if owner != nil {
		if dir := unreachableParent(root); dir != "" {
			_ = os.RemoveAll(root)
			return fmt.Errorf("--dir: the postgres account cannot enter %s (no x permission for others); pick a directory it can reach, such as /tmp", dir)
		}
	}
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		if o.keep {
			fmt.Fprintf(out, "kept %s (Tidemark's log: %s)\n", root, filepath.Join(root, "tidemark.log"))
		} else {
			_ = os.RemoveAll(root)
		}
	}()
	fmt.Fprintf(out, "demo directory %s; PostgreSQL from %s\n", root, binDir)

	// 1. Tidemark, every service, in this process.
	logFile, err := os.OpenFile(filepath.Join(root, "tidemark.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { logFile.Close() })
	natsPort, err := freeLoopbackPort()
	if err != nil {
		return err
	}
	serve := &serveOptions{
		services: []string{"all"}, dataDir: filepath.Join(root, "tidemark"), listen: "127.0.0.1:0",
		natsListen: fmt.Sprintf("127.0.0.1:%d", natsPort), replicas: 1, eventsRetention: 24 * time.Hour,
		shutdownTimeout: 20 * time.Second, instanceID: "demo", snapshotMaxAge: 24 * time.Hour, platform: service.PlatformLocal, moverConcurrency: 2,
	}
	// The mover pod flags' defaults (they only act on --platform kube, but
	// serve validates them on every platform).
	serve.mover.register(pflag.NewFlagSet("demo", pflag.ContinueOnError))
	serve.coordinator.AnswerGrace = 5 * time.Second
	serve.coordinator.InverseTimeout = 30 * time.Second
	serve.coordinator.ExportTimeout = time.Hour
	if err := serve.validate(); err != nil {
		return err
	}
	if _, err := service.Resolve(serve.services); err != nil {
		return err
	}
	serveCtx, stopServe := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go func() { served <- serve.run(serveCtx, slog.New(slog.NewJSONHandler(logFile, nil))) }()
	cleanups = append(cleanups, func() {
		stopServe()
		if err := <-served; err != nil {
			fmt.Fprintf(out, "tidemark stopped with: %v\n", err)
		}
	})
	c, err := demoConnect(ctx, natsOptions{url: fmt.Sprintf("nats://127.0.0.1:%d", natsPort)}, served)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, c.close)
	followCtx, stopFollow := context.WithCancel(ctx)
	cleanups = append(cleanups, stopFollow)
	in, err := c.follow(followCtx)
	if err != nil {
		return err
	}
	facts := teeFacts(followCtx, in)
	fmt.Fprintf(out, "✓ Tidemark running in this process (all services, embedded NATS on 127.0.0.1:%d, repository %s)\n", natsPort, filepath.Join(serve.dataDir, "repository"))

	// 2. The source database and its ticker.
	src := &demoPostgres{binDir: binDir, dataDir: filepath.Join(root, "source", "data"), sockDir: filepath.Join(root, "source"), logPath: filepath.Join(root, "source", "postgres.log"), owner: owner}
	if err := ownedDir(src.sockDir, owner); err != nil {
		return err
	}
	if err := src.initdb(ctx); err != nil {
		return err
	}
	if err := src.start(ctx); err != nil {
		return err
	}
	cleanups = append(cleanups, src.stop)
	db, err := sql.Open("pgx", src.dsn("postgres"))
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { db.Close() })
	if _, err := db.ExecContext(ctx, "CREATE TABLE ticks (id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())"); err != nil {
		return err
	}
	tick := startDemoTicker(db)
	cleanups = append(cleanups, tick.stop)
	fmt.Fprintf(out, "✓ PostgreSQL on 127.0.0.1:%d; a ticker inserts a row every 10 ms\n", src.port)

	const app = "demo/postgres"
	if err := os.Setenv("TIDEMARK_DEMO_PG_PASSWORD", src.password); err != nil {
		return err
	}
	appFile := fmt.Sprintf(`apiVersion: tidemark.io/v1alpha1
kind: Application
metadata: {name: %s}
spec:
  blueprint: postgres
  volumes:
    pgdata: %s
  params:
    pgdata: %s
  connections:
    primary:
      driver: postgres
      dsn: "postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable"
      passwordFrom: {env: TIDEMARK_DEMO_PG_PASSWORD}
`, app, src.dataDir, src.dataDir, src.port)
	appsDir := filepath.Join(serve.dataDir, "apps")
	if err := os.MkdirAll(appsDir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(appsDir, "demo.app.yaml"), []byte(appFile), 0o600); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond) // some rows before the backup

	// 3. The backup.
	fmt.Fprintln(out, "\n— backup: tidemark backup --app demo/postgres --wait")
	backupStart := time.Now()
	bev := events.New("/tidemark/demo", app, events.BackupRequested{Application: app, RequestedBy: "demo"}, time.Now())
	if _, err := c.bus.Publish(ctx, bev); err != nil {
		return err
	}
	if err := watchBackup(ctx, indent(out), facts.forward, bev.ID, true); err != nil {
		return err
	}
	backupTook := time.Since(backupStart)
	time.Sleep(200 * time.Millisecond) // rows after the backup, which the restore must not have
	tick.stop()
	if tick.err != nil {
		return fmt.Errorf("the ticker failed: %w", tick.err)
	}
	accepted, _, _ := demoFind(facts, func(p events.BackupAccepted) bool { return p.Application == app })
	run := accepted.RunID
	completed, _, _ := demoFind(facts, func(p events.BackupCompleted) bool { return p.RunID == run })
	recorded, _, ok := demoFind(facts, func(p events.RestorePointRecorded) bool { return p.RunID == run })
	if !ok {
		return errors.New("the backup ended without a restore point")
	}
	inBackupMode, _, _ := demoFind(facts, func(p events.HookSucceeded) bool { return p.RunID == run && p.Step == "backupmode" })
	_, stoppedAt, _ := demoFind(facts, func(p events.HookReleased) bool { return p.RunID == run && p.Step == "backupmode" })
	source, err := readTicks(ctx, db)
	if err != nil {
		return err
	}

	// 4. The restore, to a new data directory and a new server.
	target := filepath.Join(root, "restored")
	pgdata := filepath.Join(target, "pgdata")
	fmt.Fprintf(out, "\n— restore: tidemark restore %s --to new --target %s --param pgdata=%s --wait\n", recorded.RestorePointID, target, pgdata)
	restoreStart := time.Now()
	rev := events.New("/tidemark/demo", string(recorded.RestorePointID), events.RestoreRequested{
		RestorePointID: recorded.RestorePointID, Target: events.RestoreTarget{Mode: "new", Name: target},
		Params: map[string]string{"pgdata": pgdata}, RequestedBy: "demo",
	}, time.Now())
	if _, err := c.bus.Publish(ctx, rev); err != nil {
		return err
	}
	if err := watchRestore(ctx, indent(out), facts.forward, rev.ID, true); err != nil {
		return err
	}
	restoreTook := time.Since(restoreStart)
	restoredDone, _, _ := demoFind(facts, func(p events.RestoreCompleted) bool { return p.RestorePointID == recorded.RestorePointID })

	dst := &demoPostgres{binDir: binDir, dataDir: pgdata, sockDir: filepath.Join(root, "restored-socket"), logPath: filepath.Join(root, "restored-postgres.log"), password: src.password, owner: owner}
	if err := ownedDir(dst.sockDir, owner); err != nil {
		return err
	}
	startStart := time.Now()
	if err := dst.start(ctx); err != nil {
		return fmt.Errorf("the restored PostgreSQL did not start: %w", err)
	}
	cleanups = append(cleanups, dst.stop)
	recoveredIn := time.Since(startStart)
	rdb, err := sql.Open("pgx", dst.dsn("postgres"))
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { rdb.Close() })
	got, err := readTicks(ctx, rdb)
	if err != nil {
		return fmt.Errorf("reading the restored rows: %w", err)
	}

	// 5. The check and the summary.
	if err := checkPrefix(source, got); err != nil {
		return err
	}
	last := got[len(got)-1].at
	insideBackupMode := !last.Before(inBackupMode.StartedAt) && !last.After(stoppedAt)
	if !insideBackupMode {
		return fmt.Errorf("the last restored row (%s) is not from inside backup mode (%s → %s)", last.Format(time.RFC3339Nano), inBackupMode.StartedAt.Format(time.RFC3339Nano), stoppedAt.Format(time.RFC3339Nano))
	}
	recovery := "recovered from the backup label"
	if !dst.logContains("consistent recovery state reached") {
		recovery = "started"
	}
	ratio := "n/a"
	if completed.BytesUploaded > 0 {
		ratio = fmt.Sprintf("%.1f×", float64(completed.BytesRead)/float64(completed.BytesUploaded))
	}
	w := out
	fmt.Fprintln(w, "\nSummary")
	fmt.Fprintf(w, "  restore point   %s (%s-consistent)\n", recorded.RestorePointID, recorded.Consistency)
	fmt.Fprintf(w, "  freeze window   %s in backup mode (PostgreSQL never blocks writes in it)\n", completed.FreezeWindow.Std().Round(time.Millisecond))
	fmt.Fprintf(w, "  backup          %s end to end; %s read, %s stored (dedup and compression %s)\n", backupTook.Round(time.Millisecond), humanBytes(completed.BytesRead), humanBytes(completed.BytesUploaded), ratio)
	fmt.Fprintf(w, "  restore         %s end to end; %s restored and verified; the new server %s in %s\n", restoreTook.Round(time.Millisecond), humanBytes(restoredDone.BytesRestored), recovery, recoveredIn.Round(time.Millisecond))
	fmt.Fprintf(w, "  rows            %d of the source's %d restored, gap-free; the last one %s before pg_backup_stop\n", len(got), len(source), stoppedAt.Sub(last).Round(time.Millisecond))
	fmt.Fprintf(w, "  total           %s\n", time.Since(began).Round(time.Second))
	return nil
}

// unreachableParent returns the first directory above dir that other
// accounts may not enter, or "".
func unreachableParent(dir string) string {
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o001 == 0 {
			return p
		}
		if p == filepath.Dir(p) {
			return ""
		}
	}
}

// demoConnect dials the in-process NATS server once it listens.
func demoConnect(ctx context.Context, o natsOptions, served <-chan error) (*connection, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := connect(o, "tidemark demo")
		if err == nil {
			return c, nil
		}
		select {
		case err := <-served:
			return nil, fmt.Errorf("tidemark did not start: %v", err)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("tidemark did not start within a minute: %w", err)
		}
	}
}

type demoTick struct {
	id int64
	at time.Time
}

func readTicks(ctx context.Context, db *sql.DB) ([]demoTick, error) {
	rows, err := db.QueryContext(ctx, "SELECT id, at FROM ticks ORDER BY id")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []demoTick
	for rows.Next() {
		var k demoTick
		if err := rows.Scan(&k.id, &k.at); err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// checkPrefix says whether got is a non-empty, gap-free prefix of source
// that stops short of it.
func checkPrefix(source, got []demoTick) error {
	if len(got) == 0 {
		return errors.New("the restored table is empty")
	}
	if len(got) >= len(source) {
		return fmt.Errorf("the restore has all %d rows, including the ones written after the backup", len(got))
	}
	for i, row := range got {
		if row.id != int64(i+1) || !row.at.Equal(source[i].at) {
			return fmt.Errorf("restored row %d (id %d) is not the source's row %d: a gap or a change", i+1, row.id, i+1)
		}
	}
	return nil
}

type demoTicker struct {
	once sync.Once
	quit chan struct{}
	done chan struct{}
	err  error
}

func startDemoTicker(db *sql.DB) *demoTicker {
	k := &demoTicker{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(k.done)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-k.quit:
				return
			case <-t.C:
			}
			if _, err := db.Exec("INSERT INTO ticks DEFAULT VALUES"); err != nil {
				k.err = err
				return
			}
		}
	}()
	return k
}

func (k *demoTicker) stop() {
	k.once.Do(func() { close(k.quit) })
	<-k.done
}

// indent prefixes every line written through it.
func indent(w io.Writer) io.Writer { return &indentWriter{w: w} }

type indentWriter struct{ w io.Writer }

func (i *indentWriter) Write(p []byte) (int, error) {
	s := strings.TrimSuffix(string(p), "\n")
	_, err := io.WriteString(i.w, "  "+strings.ReplaceAll(s, "\n", "\n  ")+"\n")
	return len(p), err
}

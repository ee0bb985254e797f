package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform"
)

// Snapshotter snapshots volume directories under a root directory. A
// snapshot is a reflink clone of the volume's tree where the filesystem can
// share extents (XFS with reflink=1, btrfs, bcachefs), otherwise a full
// copy, and then it says so (Method "copy") and logs a warning: a copy takes
// time and space in proportion to the data, so the application stays
// frozen that long.
//
// Reflinks share extents only within one filesystem: put the snapshot root
// on the same filesystem as the volumes, or every snapshot is a copy.
//
// Layout, one directory per snapshot:
//
//	<root>/<run>/<snapshot-id>/data           the volume's tree (Path)
//	<root>/<run>/<snapshot-id>/snapshot.json  run, volume, method, time
//
// The metadata is written last, after the data has been flushed to disk,
// so a snapshot directory without it was left by a crash mid-snapshot (or
// mid-delete) and List reports it Incomplete. The data sits in a
// subdirectory so the metadata can never collide with a volume's files.
//
// Preserved for every entry: type, content, permissions (with setuid,
// setgid and sticky bits), owner and group (when the process may set them),
// access and modification times, symlink targets. Not preserved: hard
// links (each link becomes its own file), extended attributes and ACLs,
// sockets (skipped: a socket file means nothing without its listener).
// Sparse files stay sparse. One Snapshotter owns its root: two processes
// must not share one, since each would take the other's snapshots in
// progress for crash leftovers.
type Snapshotter struct {
	// Root holds the snapshots; it must be absolute.
	Root string
	// Logger receives the copy-instead-of-reflink warnings.
	Logger *slog.Logger
	// Now stamps CreatedAt; durations are measured with the real clock.
	Now func() time.Time

	mu     sync.Mutex
	taking map[events.SnapshotID]bool
}

var _ platform.Snapshotter = (*Snapshotter)(nil)

// metadataFile names the file that marks a snapshot complete.
const metadataFile = "snapshot.json"

// dataDir names the subdirectory holding the snapshot's tree.
const dataDir = "data"

// NewSnapshotter returns a Snapshotter rooted at root, creating it.
func NewSnapshotter(root string, log *slog.Logger) (*Snapshotter, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("snapshot root %q must be an absolute path", root)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("snapshot root: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Snapshotter{Root: filepath.Clean(root), Logger: log, Now: time.Now}, nil
}

func (s *Snapshotter) now() time.Time {
	if s.Now == nil {
		return time.Now().UTC()
	}
	return s.Now().UTC()
}

func (s *Snapshotter) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Snapshot implements platform.Snapshotter: the volumes are taken one after
// another in this one call, while the caller keeps the application
// quiesced. If any fails, the ones already taken are deleted.
func (s *Snapshotter) Snapshot(ctx context.Context, run events.RunID, volumes []events.VolumeRef) ([]platform.Snapshot, error) {
	sources, err := s.check(run, volumes)
	if err != nil {
		return nil, err
	}
	var taken []platform.Snapshot
	for i, v := range volumes {
		snap, err := s.take(ctx, run, v.Name, sources[i])
		if err != nil {
			// Cleaning up must not be cut short by the cancellation that
			// may have caused the failure.
			cleanup := context.WithoutCancel(ctx)
			for _, t := range taken {
				if derr := s.Delete(cleanup, t.ID); derr != nil {
					s.logger().Error("deleting a snapshot of a failed group; the startup sweep will retry", "run", run, "snapshot", t.ID, "volume", t.Volume, "err", derr)
				}
			}
			return nil, err
		}
		taken = append(taken, snap)
	}
	return taken, nil
}

// check validates the whole request before anything is taken, so a
// mistake in the last volume does not cost copies of the first ones. It
// returns each volume's source with symlinks resolved.
func (s *Snapshotter) check(run events.RunID, volumes []events.VolumeRef) ([]string, error) {
	if run == "" {
		return nil, fmt.Errorf("%w: the run id is empty", platform.ErrInvalidVolume)
	}
	if len(volumes) == 0 {
		return nil, fmt.Errorf("%w: no volumes to snapshot", platform.ErrInvalidVolume)
	}
	root, err := filepath.EvalSymlinks(s.Root)
	if err != nil {
		return nil, fmt.Errorf("snapshot root: %w", err)
	}
	seen := map[string]bool{}
	sources := make([]string, len(volumes))
	for i, v := range volumes {
		switch {
		case v.Name == "":
			return nil, fmt.Errorf("%w: volume %d (source %s) has no name", platform.ErrInvalidVolume, i+1, v.Source)
		case seen[v.Name]:
			return nil, fmt.Errorf("%w: volume %s is named twice in one request", platform.ErrInvalidVolume, v.Name)
		case !filepath.IsAbs(v.Source):
			return nil, fmt.Errorf("%w: volume %s: source %q must be an absolute directory; fix spec.volumes in the Application", platform.ErrInvalidVolume, v.Name, v.Source)
		}
		seen[v.Name] = true
		src, err := filepath.EvalSymlinks(v.Source)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, sentinel{fmt.Sprintf("volume %s: %s does not exist; fix spec.volumes in the Application", v.Name, v.Source), platform.ErrSourceNotFound}
		}
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		fi, err := os.Stat(src)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("%w: volume %s: %s is not a directory; fix spec.volumes in the Application", platform.ErrInvalidVolume, v.Name, v.Source)
		}
		if within(root, src) {
			return nil, fmt.Errorf("%w: volume %s: the snapshot root %s is inside %s, so the volume would snapshot its own snapshots; move Tidemark's data directory out of the volume", platform.ErrInvalidVolume, v.Name, s.Root, v.Source)
		}
		sources[i] = src
	}
	return sources, nil
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// sentinel is an error with its own words that still matches a named error.
type sentinel struct {
	msg  string
	kind error
}

func (e sentinel) Error() string { return e.msg }
func (e sentinel) Unwrap() error { return e.kind }

// take snapshots one volume. On error nothing of it is left behind (unless
// even removing fails; then it is an orphan for the sweep).
func (s *Snapshotter) take(ctx context.Context, run events.RunID, volume, src string) (platform.Snapshot, error) {
	started := time.Now()
	runDir := filepath.Join(s.Root, token(string(run)))
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return platform.Snapshot{}, fmt.Errorf("volume %s: %w", volume, err)
	}
	id, dir, err := s.reserve(runDir, run, volume)
	if err != nil {
		return platform.Snapshot{}, fmt.Errorf("volume %s: %w", volume, err)
	}
	defer s.release(id)

	snap, err := s.populate(ctx, id, dir, run, volume, src, started)
	if err != nil {
		if rerr := removeTree(dir); rerr != nil {
			s.logger().Error("removing a failed snapshot; the startup sweep will retry", "run", run, "volume", volume, "path", dir, "err", rerr)
		}
		_ = os.Remove(runDir) // only if empty: other snapshots of the run stay
		return platform.Snapshot{}, err
	}
	return snap, nil
}

// reserve creates the snapshot's directory under a fresh id and marks it
// as being taken, so List does not report it as a crash leftover.
func (s *Snapshotter) reserve(runDir string, run events.RunID, volume string) (events.SnapshotID, string, error) {
	for {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", "", err
		}
		id := events.SnapshotID("tm-" + token(string(run)) + "-" + token(volume) + "-" + hex.EncodeToString(b[:]))
		dir := filepath.Join(runDir, string(id))
		s.mu.Lock()
		err := os.Mkdir(dir, 0o700)
		if err == nil {
			if s.taking == nil {
				s.taking = map[events.SnapshotID]bool{}
			}
			s.taking[id] = true
		}
		s.mu.Unlock()
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return id, dir, err
	}
}

func (s *Snapshotter) release(id events.SnapshotID) {
	s.mu.Lock()
	delete(s.taking, id)
	s.mu.Unlock()
}

// populate copies or clones the volume into dir, flushes it to disk and
// then writes the metadata that marks it complete.
func (s *Snapshotter) populate(ctx context.Context, id events.SnapshotID, dir string, run events.RunID, volume, src string, started time.Time) (platform.Snapshot, error) {
	data := filepath.Join(dir, dataDir)
	tc := &treeCopier{ctx: ctx, reflink: true, onFallback: func(err error) {
		s.logger().Warn("no reflink for this volume; the snapshot is a full copy and takes time in proportion to its data",
			"run", run, "volume", volume, "source", src, "reason", err)
	}}
	if err := tc.copyTree(src, data); err != nil {
		return platform.Snapshot{}, fmt.Errorf("volume %s: snapshot of %s: %w", volume, src, err)
	}
	if err := syncFS(dir); err != nil {
		return platform.Snapshot{}, fmt.Errorf("volume %s: flushing the snapshot %s to disk: %w", volume, dir, err)
	}
	m := metadata{
		ID: id, RunID: run, Volume: volume, Source: src, Method: tc.method(),
		Bytes: tc.bytes, CreatedAt: s.now(), Duration: events.Duration(time.Since(started)),
	}
	if err := writeMetadata(dir, m); err != nil {
		return platform.Snapshot{}, fmt.Errorf("volume %s: recording the snapshot %s: %w", volume, dir, err)
	}
	return m.snapshot(dir), nil
}

package local

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform"
)

// metadata is the content of snapshot.json.
type metadata struct {
	ID        events.SnapshotID `json:"id"`
	RunID     events.RunID      `json:"runId"`
	Volume    string            `json:"volume"`
	Source    string            `json:"source"`
	Method    string            `json:"method"`
	Bytes     int64             `json:"bytes"`
	Duration  events.Duration   `json:"duration"`
	CreatedAt time.Time         `json:"createdAt"`
}

func (m metadata) snapshot(dir string) platform.Snapshot {
	return platform.Snapshot{
		ID: m.ID, RunID: m.RunID, Volume: m.Volume, Path: filepath.Join(dir, dataDir),
		Method: m.Method, Bytes: m.Bytes, Duration: m.Duration.Std(), CreatedAt: m.CreatedAt,
	}
}

// syncFS flushes the filesystem holding dir: one syncfs(2) instead of an
// fsync per copied file, so a snapshot marked complete survives power loss.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// writeMetadata writes snapshot.json atomically: a reader sees all of it or
// none.
func writeMetadata(dir string, m metadata) error {
	raw, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, metadataFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(raw, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, metadataFile)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Delete implements platform.Snapshotter. The metadata goes first, so a
// crash mid-delete leaves an incomplete snapshot for the sweep rather than
// a half-deleted one that still looks whole.
func (s *Snapshotter) Delete(ctx context.Context, id events.SnapshotID) error {
	if !validID(id) {
		return fmt.Errorf("%w: %q is not a local snapshot id", platform.ErrInvalidSnapshotID, id)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	dirs, err := filepath.Glob(filepath.Join(s.Root, "*", string(id)))
	if err != nil {
		return err
	}
	for _, dir := range dirs {
		if err := os.Remove(filepath.Join(dir, metadataFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("deleting snapshot %s: %w", id, err)
		}
		if err := removeTree(dir); err != nil {
			return fmt.Errorf("deleting snapshot %s: %w", id, err)
		}
		_ = os.Remove(filepath.Dir(dir)) // the run's directory, once empty
	}
	return nil
}

// validID accepts only ids this Snapshotter issues: one path element of
// safe characters, so an id can never point outside the root or be a glob.
func validID(id events.SnapshotID) bool {
	if !strings.HasPrefix(string(id), "tm-") || len(id) > 255 {
		return false
	}
	for _, r := range string(id) {
		if !safeRune(r) && r != '.' {
			return false
		}
	}
	return true
}

func safeRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-'
}

// List implements platform.Snapshotter.
func (s *Snapshotter) List(ctx context.Context) ([]platform.Snapshot, error) {
	runs, err := os.ReadDir(s.Root)
	if err != nil {
		return nil, fmt.Errorf("listing snapshots: %w", err)
	}
	var out []platform.Snapshot
	for _, r := range runs {
		if !r.IsDir() {
			continue
		}
		runDir := filepath.Join(s.Root, r.Name())
		entries, err := os.ReadDir(runDir)
		if err != nil {
			return nil, fmt.Errorf("listing snapshots: %w", err)
		}
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			id := events.SnapshotID(e.Name())
			if !e.IsDir() || s.isTaking(id) {
				continue
			}
			dir := filepath.Join(runDir, e.Name())
			m, err := readMetadata(dir)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				out = append(out, orphan(id, dir, r.Name()))
			case err != nil:
				s.logger().Warn("unreadable snapshot metadata; treating the snapshot as incomplete", "path", dir, "err", err)
				out = append(out, orphan(id, dir, r.Name()))
			default:
				out = append(out, m.snapshot(dir))
			}
		}
	}
	return out, nil
}

func (s *Snapshotter) isTaking(id events.SnapshotID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.taking[id]
}

func readMetadata(dir string) (metadata, error) {
	raw, err := os.ReadFile(filepath.Join(dir, metadataFile))
	if err != nil {
		return metadata{}, err
	}
	var m metadata
	if err := json.Unmarshal(raw, &m); err != nil {
		return metadata{}, fmt.Errorf("%s: %w", metadataFile, err)
	}
	return m, nil
}

// orphan describes a snapshot directory without metadata. Its run is the
// run directory's name, which is the run id for every id made of the
// characters run ids normally use.
func orphan(id events.SnapshotID, dir, runDir string) platform.Snapshot {
	sn := platform.Snapshot{ID: id, RunID: events.RunID(runDir), Path: filepath.Join(dir, dataDir), Incomplete: true}
	if fi, err := os.Stat(dir); err == nil {
		sn.CreatedAt = fi.ModTime().UTC()
	}
	return sn
}

// token makes s usable as one path element and id part: letters, digits,
// '.', '_' and '-', not starting with '.', at most 64 bytes. A name that
// had to be changed gets a hash of the original, so two names never map
// to one token.
func token(s string) string {
	var b strings.Builder
	for i, r := range s {
		switch {
		case safeRune(r), r == '.' && i > 0:
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	t := b.String()
	if t == s && len(t) <= 64 && t != "" {
		return t
	}
	sum := sha256.Sum256([]byte(s))
	return t[:min(len(t), 48)] + "-" + hex.EncodeToString(sum[:4])
}

package datamover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/repository"
)

// One item, moved where the volume is mounted: what `tidemark mover` does
// in a mover pod. It runs this package's own export and import code (the
// Service's), only with the volume at a fixed directory instead of one
// found by a Resolver, and without a bus: the pod reports through its
// output (progress lines) and its termination message (MoveResult).

// Directions of a mover, as `tidemark mover --direction` takes them.
const (
	DirectionExport = "export"
	DirectionImport = "import"
)

// Item is one work item as a mover gets it: exactly one of the two.
type Item struct {
	Export *events.VolumeExportRequested
	Import *events.VolumeImportRequested
}

// ParseItem decodes a work item's data (the command's JSON) given with
// its direction. Unknown fields are refused, so an item from a newer
// data mover than this mover fails loudly rather than half understood.
func ParseItem(direction, data string) (Item, error) {
	dec := json.NewDecoder(strings.NewReader(data))
	dec.DisallowUnknownFields()
	var it Item
	switch direction {
	case DirectionExport:
		it.Export = &events.VolumeExportRequested{}
		if err := dec.Decode(it.Export); err != nil {
			return Item{}, fmt.Errorf("%w: the export item does not decode: %v", repository.ErrInvalidRequest, err)
		}
		if it.Export.SourceKind != SourceSnapshot {
			return Item{}, fmt.Errorf("%w: a mover moves volumes; a %q export is the data mover service's", ErrUnsupported, it.Export.SourceKind)
		}
	case DirectionImport:
		it.Import = &events.VolumeImportRequested{}
		if err := dec.Decode(it.Import); err != nil {
			return Item{}, fmt.Errorf("%w: the import item does not decode: %v", repository.ErrInvalidRequest, err)
		}
		if k := it.Import.TargetKind; it.Import.Check || (k != TargetDirectory && k != TargetReplace) {
			return Item{}, fmt.Errorf("%w: a mover imports into a volume (targetKind directory or replace), not %q", ErrUnsupported, k)
		}
	default:
		return Item{}, fmt.Errorf("%w: direction %q: want %s or %s", repository.ErrInvalidRequest, direction, DirectionExport, DirectionImport)
	}
	return it, nil
}

// MoveResult is what a mover reports when it ends: its termination
// message, read back by PodMover. Either Error is set, or the rest.
type MoveResult struct {
	ManifestID    string    `json:"manifestId,omitempty"`
	Files         int64     `json:"files,omitempty"`
	Bytes         int64     `json:"bytes,omitempty"`
	BytesUploaded int64     `json:"bytesUploaded,omitempty"`
	StartedAt     time.Time `json:"startedAt,omitzero"`
	FinishedAt    time.Time `json:"finishedAt,omitzero"`
	// Previous is where a replacing import kept the volume's previous
	// contents, relative to the volume's root.
	Previous string `json:"previous,omitempty"`
	// Error is why the move failed, on one line; Permanent says that
	// retrying cannot help.
	Error     string `json:"error,omitempty"`
	Permanent bool   `json:"permanent,omitempty"`
}

// maxResultError keeps a MoveResult well under the 4096 bytes the kubelet
// keeps of a termination message.
const maxResultError = 2048

// FailedResult is the MoveResult of a failed move.
func FailedResult(err error) MoveResult {
	msg := oneLine(err.Error())
	if len(msg) > maxResultError {
		msg = msg[:maxResultError] + "…"
	}
	return MoveResult{Error: msg, Permanent: permanent(err)}
}

// oneLine joins a multi-line message into one.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ⏎ ")), " ")
}

// MoveOne moves exactly one item between dir, where the volume is
// mounted, and repo: an export stores dir as the item's volume; an import
// restores into dir (directory) or replaces what dir holds (replace: see
// replaceContents). progress may be nil.
func MoveOne(ctx context.Context, repo Repository, it Item, dir string, progress func(repository.Progress)) (MoveResult, error) {
	if repo == nil {
		return MoveResult{}, errors.New("datamover: a repository is required")
	}
	if progress == nil {
		progress = func(repository.Progress) {}
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return MoveResult{}, fmt.Errorf("%w: the volume is not mounted at %s: %v", repository.ErrInvalidRequest, dir, err)
	}
	s := &Service{cfg: Config{Repository: repo, Resolver: func(context.Context, events.SnapshotID) (string, error) { return dir, nil }}}
	switch {
	case it.Export != nil:
		res, err := s.export(ctx, *it.Export, progress)
		if err != nil {
			return MoveResult{}, err
		}
		return MoveResult{ManifestID: res.ManifestID, Files: res.Files, Bytes: res.Bytes, BytesUploaded: res.BytesUploaded,
			StartedAt: res.StartedAt.UTC(), FinishedAt: res.FinishedAt.UTC()}, nil
	case it.Import != nil:
		req := *it.Import
		var (
			res      repository.ImportResult
			previous string
			err      error
		)
		if req.TargetKind == TargetReplace {
			res, previous, err = s.replaceContents(ctx, req, dir, progress)
		} else {
			req.Target = dir
			res, previous, err = s.importVolume(ctx, req, progress)
		}
		if err != nil {
			return MoveResult{}, err
		}
		return MoveResult{ManifestID: res.ManifestID, Files: res.Files, Bytes: res.Bytes,
			StartedAt: res.StartedAt.UTC(), FinishedAt: res.FinishedAt.UTC(), Previous: previous}, nil
	}
	return MoveResult{}, fmt.Errorf("%w: an empty item", repository.ErrInvalidRequest)
}

// keptMarker, in a replacing import's kept copy, says that every previous
// entry is in it: until it is there, a redelivered import goes on moving
// them, rather than taking what is left for its own earlier copy.
const keptMarker = ".tidemark-kept"

// replaceContents is replaceDir for a volume's root, which cannot be
// renamed (a mount point): the snapshot is restored into a staging
// directory inside root and verified; then root's previous entries are
// moved into root/.tidemark-previous-<run> and the restored ones up into
// root. lost+found stays where it is (the filesystem's own). A redelivered
// request finds the previous contents kept already and replaces only its
// own earlier copy. It returns the kept copy's path relative to root.
func (s *Service) replaceContents(ctx context.Context, req events.VolumeImportRequested, root string, progress func(repository.Progress)) (repository.ImportResult, string, error) {
	tag := runTag(req.RunID)
	stagingName, previousName := ".tidemark-restore-"+tag, ".tidemark-previous-"+tag
	staging, previous := filepath.Join(root, stagingName), filepath.Join(root, previousName)
	own := func(name string) bool { return name == stagingName || name == previousName || name == "lost+found" }
	if err := os.RemoveAll(staging); err != nil {
		return repository.ImportResult{}, "", fmt.Errorf("clearing %s from an earlier attempt: %w", staging, err)
	}
	res, err := s.cfg.Repository.ImportDir(ctx, string(req.ManifestID), staging, progress)
	if err == nil {
		// Before the swap: edits that fail leave the volume as it was.
		err = applyEdits(ctx, s.cfg.Repository, staging, req.Edits)
	}
	if err != nil {
		_ = os.RemoveAll(staging)
		return res, "", err
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return res, "", fmt.Errorf("import target: %w", err)
	}
	_, kept := os.Stat(filepath.Join(previous, keptMarker))
	if errors.Is(kept, os.ErrNotExist) {
		if err := os.MkdirAll(previous, 0o700); err != nil {
			return res, "", fmt.Errorf("keeping the previous contents of %s: %w", root, err)
		}
		for _, e := range entries {
			if own(e.Name()) {
				continue
			}
			if err := os.Rename(filepath.Join(root, e.Name()), filepath.Join(previous, e.Name())); err != nil {
				return res, "", fmt.Errorf("keeping the previous contents of %s: %w", root, err)
			}
		}
		if err := os.WriteFile(filepath.Join(previous, keptMarker), nil, 0o600); err != nil {
			return res, "", fmt.Errorf("keeping the previous contents of %s: %w", root, err)
		}
	} else {
		// Kept by an earlier attempt of this run: what is in root now is
		// that attempt's restored copy.
		for _, e := range entries {
			if own(e.Name()) {
				continue
			}
			if err := os.RemoveAll(filepath.Join(root, e.Name())); err != nil {
				return res, "", fmt.Errorf("replacing an earlier attempt's copy in %s: %w", root, err)
			}
		}
	}
	restored, err := os.ReadDir(staging)
	if err != nil {
		return res, "", err
	}
	for _, e := range restored {
		if e.Name() == "lost+found" {
			continue
		}
		if err := os.Rename(filepath.Join(staging, e.Name()), filepath.Join(root, e.Name())); err != nil {
			return res, "", fmt.Errorf("moving the restored copy into %s: %w (the previous contents are in %s)", root, err, previous)
		}
	}
	if fi, err := os.Stat(staging); err == nil {
		// The volume's root gets the snapshot root's mode, as a renamed
		// directory would have.
		_ = os.Chmod(root, fi.Mode().Perm())
	}
	if err := os.RemoveAll(staging); err != nil {
		return res, "", err
	}
	return res, previousName, nil
}

// ProgressLine is one line of a mover's standard output while it works:
// {"progress":{...}}. PodMover reads them from the pod's log and
// publishes them as progress facts.
type ProgressLine struct {
	Progress *Counts `json:"progress"`
}

// Counts is repository.Progress on the wire.
type Counts struct {
	BytesDone  int64 `json:"bytesDone"`
	BytesTotal int64 `json:"bytesTotal"`
	FilesDone  int64 `json:"filesDone"`
	FilesTotal int64 `json:"filesTotal"`
}

// WriteProgress writes p as a ProgressLine.
func WriteProgress(w io.Writer, p repository.Progress) error {
	b, err := json.Marshal(ProgressLine{Progress: &Counts{BytesDone: p.BytesDone, BytesTotal: p.BytesTotal, FilesDone: p.FilesDone, FilesTotal: p.FilesTotal}})
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

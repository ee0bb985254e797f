package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/manifest"
	"github.com/kopia/kopia/snapshot"
)

// Records are small JSON documents Tidemark keeps in the repository beside
// the snapshots they describe (a restore point's record, for instance), so
// that a fresh install can rebuild its catalog from the repository alone.
// Each is a kopia manifest labelled type=tidemark-<kind> and
// tidemark-id=<id>: `kopia manifest list --filter=type:tidemark-restorepoint`
// shows them, and kopia's garbage collection never touches manifests.

// LabelRecordID is the label naming a record among those of its kind.
const LabelRecordID = "tidemark-id"

// Record is one record read back from the repository.
type Record struct {
	Kind    string
	ID      string
	Labels  map[string]string
	Data    json.RawMessage
	ModTime time.Time
}

func recordLabels(kind, id string) map[string]string {
	return map[string]string{"type": "tidemark-" + kind, LabelRecordID: id}
}

// PutRecord stores data (JSON) as the record id of kind, replacing the
// previous one, so writing the same record twice leaves one. labels are
// added to the manifest's (they must not use "type" or LabelRecordID).
func (r *Repository) PutRecord(ctx context.Context, kind, id string, labels map[string]string, data json.RawMessage) error {
	if kind == "" || id == "" || !json.Valid(data) {
		return fmt.Errorf("%w: a record needs a kind, an id and JSON data", ErrInvalidRequest)
	}
	all := recordLabels(kind, id)
	for k, v := range labels {
		if _, reserved := all[k]; reserved {
			return fmt.Errorf("%w: record label %q is reserved", ErrInvalidRequest, k)
		}
		all[k] = v
	}
	err := repo.WriteSession(ctx, r.rep, repo.WriteSessionOptions{Purpose: "tidemark record"}, func(ctx context.Context, w repo.RepositoryWriter) error {
		// Replace by kind and id only, so a record whose other labels
		// changed still replaces the old one.
		old, err := w.FindManifests(ctx, recordLabels(kind, id))
		if err != nil {
			return err
		}
		if _, err := w.PutManifest(ctx, all, data); err != nil {
			return err
		}
		for _, m := range old {
			if err := w.DeleteManifest(ctx, m.ID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("writing %s record %s to the repository: %w", kind, id, r.explain(err))
	}
	return nil
}

// DeleteRecord removes the record id of kind. Removing a record that is not
// there is not an error.
func (r *Repository) DeleteRecord(ctx context.Context, kind, id string) error {
	if err := r.rep.Refresh(ctx); err != nil {
		return fmt.Errorf("refreshing the repository: %w", err)
	}
	err := repo.WriteSession(ctx, r.rep, repo.WriteSessionOptions{Purpose: "tidemark record delete"}, func(ctx context.Context, w repo.RepositoryWriter) error {
		found, err := w.FindManifests(ctx, recordLabels(kind, id))
		if err != nil {
			return err
		}
		for _, m := range found {
			if err := w.DeleteManifest(ctx, m.ID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("deleting %s record %s from the repository: %w", kind, id, r.explain(err))
	}
	return nil
}

// Records returns every record of kind, one per id (the newest where a
// race left two), sorted by id. It sees what other clients wrote up to now.
func (r *Repository) Records(ctx context.Context, kind string) ([]Record, error) {
	if err := r.rep.Refresh(ctx); err != nil {
		return nil, fmt.Errorf("refreshing the repository: %w", err)
	}
	found, err := r.rep.FindManifests(ctx, map[string]string{"type": "tidemark-" + kind})
	if err != nil {
		return nil, fmt.Errorf("listing %s records: %w", kind, err)
	}
	newest := map[string]*manifest.EntryMetadata{}
	for _, m := range found {
		id := m.Labels[LabelRecordID]
		if prev, ok := newest[id]; !ok || m.ModTime.After(prev.ModTime) {
			newest[id] = m
		}
	}
	out := make([]Record, 0, len(newest))
	for id, m := range newest {
		var data json.RawMessage
		if _, err := r.rep.GetManifest(ctx, m.ID, &data); err != nil {
			return nil, fmt.Errorf("reading %s record %s: %w", kind, id, err)
		}
		labels := map[string]string{}
		for k, v := range m.Labels {
			if k != "type" && k != LabelRecordID {
				labels[k] = v
			}
		}
		out = append(out, Record{Kind: kind, ID: id, Labels: labels, Data: data, ModTime: m.ModTime})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// HasSnapshot reports whether the snapshot manifestID is in the repository.
func (r *Repository) HasSnapshot(ctx context.Context, manifestID string) (bool, error) {
	if err := r.rep.Refresh(ctx); err != nil {
		return false, fmt.Errorf("refreshing the repository: %w", err)
	}
	_, err := snapshot.LoadSnapshot(ctx, r.rep, manifest.ID(manifestID))
	if errors.Is(err, snapshot.ErrSnapshotNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("loading snapshot %s: %w", manifestID, err)
	}
	return true, nil
}

// DeleteSnapshot deletes the snapshot manifestID, which Tidemark must have
// written: ErrNotFound when it is not there (already deleted), and
// ErrInvalidRequest for another user's snapshot. The data only it used is
// reclaimed by the next full maintenance, after kopia's safety margins.
func (r *Repository) DeleteSnapshot(ctx context.Context, manifestID string) error {
	if manifestID == "" {
		return fmt.Errorf("%w: a manifest ID is required", ErrInvalidRequest)
	}
	// Another client (a data mover) may have written it since this
	// handle last looked.
	if err := r.rep.Refresh(ctx); err != nil {
		return fmt.Errorf("refreshing the repository: %w", err)
	}
	err := repo.WriteSession(ctx, r.rep, repo.WriteSessionOptions{Purpose: "tidemark snapshot delete"}, func(ctx context.Context, w repo.RepositoryWriter) error {
		man, err := snapshot.LoadSnapshot(ctx, w, manifest.ID(manifestID))
		if errors.Is(err, snapshot.ErrSnapshotNotFound) {
			return fmt.Errorf("%w: %s", ErrNotFound, manifestID)
		}
		if err != nil {
			return fmt.Errorf("loading snapshot %s: %w", manifestID, err)
		}
		if man.Source.UserName != Username {
			return fmt.Errorf("%w: snapshot %s belongs to %s, not to Tidemark; delete it with kopia", ErrInvalidRequest, manifestID, man.Source)
		}
		return w.DeleteManifest(ctx, manifest.ID(manifestID))
	})
	if err != nil {
		if IsPermanent(err) {
			return err
		}
		return fmt.Errorf("deleting snapshot %s: %w", manifestID, r.explain(err))
	}
	return nil
}

// Snapshot describes a snapshot Tidemark wrote.
type Snapshot struct {
	ManifestID string
	App        string
	Volume     string // for a volume export
	Artifact   string // for a stream export
	RunID      string
	// Incomplete is why the snapshot is not complete ("checkpoint": the
	// progress of an export that has not finished, or died), or "".
	Incomplete string
	StartTime  time.Time
	EndTime    time.Time
	Files      int64
	Bytes      int64
}

// Snapshots returns the snapshots of app (every application when app is
// ""), oldest first, incomplete ones included.
func (r *Repository) Snapshots(ctx context.Context, app string) ([]Snapshot, error) {
	if err := r.rep.Refresh(ctx); err != nil {
		return nil, fmt.Errorf("refreshing the repository: %w", r.explain(err))
	}
	sources, err := snapshot.ListSources(ctx, r.rep)
	if err != nil {
		return nil, fmt.Errorf("listing snapshot sources: %w", r.explain(err))
	}
	var out []Snapshot
	for _, src := range sources {
		if src.UserName != Username || (app != "" && src.Host != SourceHost(app)) {
			continue
		}
		mans, err := snapshot.ListSnapshots(ctx, r.rep, src)
		if err != nil {
			return nil, fmt.Errorf("listing the snapshots of %s: %w", src, r.explain(err))
		}
		for _, m := range mans {
			if app != "" && m.Tags["tag:"+TagApp] != app {
				continue
			}
			s := Snapshot{
				ManifestID: string(m.ID), App: m.Tags["tag:"+TagApp], Volume: m.Tags["tag:"+TagVolume],
				Artifact: m.Tags["tag:"+TagArtifact], RunID: m.Tags["tag:"+TagRun], Incomplete: m.IncompleteReason,
				StartTime: m.StartTime.ToTime(), EndTime: m.EndTime.ToTime(),
			}
			if d := m.RootEntry; d != nil && d.DirSummary != nil {
				s.Files, s.Bytes = d.DirSummary.TotalFileCount, d.DirSummary.TotalFileSize
			}
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].StartTime.Before(out[j].StartTime) })
	return out, nil
}

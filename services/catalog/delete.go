package catalog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/repository"
)

// DeletePoint deletes the restore point id on a user's request: its record
// and its kopia snapshots in the repository, then the point itself, and
// announces it with restorepoint.deleted. It returns the point and the
// snapshots deleted with it. An unknown id gives ErrNotFound. If the
// repository fails midway, the point stays in the catalog as "deleting"
// (never restorable again, never forgotten) and the catalog service
// retries the deletion on its next housekeeping pass.
func DeletePoint(ctx context.Context, store *Store, repo Repository, pub bus.Publisher, id events.RestorePointID, reason string) (RestorePoint, []events.ManifestID, error) {
	p, err := store.Get(ctx, id)
	if err != nil {
		return RestorePoint{}, nil, err
	}
	if reason == "" {
		reason = "deleted on request"
	}
	d := Deletion{By: DeletedByUser, Reason: reason, Since: time.Now().UTC()}
	deleted, err := removePoint(ctx, store, repo, pub, p, d)
	return p, deleted, err
}

// removePoint deletes p, in an order that never loses track of data:
//  1. p is marked deleting in the catalog (so it is not restored, and a
//     failure below is retried);
//  2. its record leaves the repository (so a rebuild cannot bring back a
//     half-deleted point);
//  3. its snapshots are deleted, except any another point also uses; one
//     already gone counts as deleted;
//  4. the deletion is announced (with an id derived from the point, so a
//     retried announcement is dropped as a duplicate);
//  5. p leaves the catalog.
//
// A failure at any step returns the error with p still listed as deleting.
func removePoint(ctx context.Context, store *Store, repo Repository, pub bus.Publisher, p RestorePoint, d Deletion) ([]events.ManifestID, error) {
	if p.Status != StatusDeleting || p.Deletion == nil {
		p.Status = StatusDeleting
		p.Deletion = &d
		if err := store.Put(ctx, p); err != nil {
			return nil, fmt.Errorf("marking restore point %s as deleting: %w", p.ID, err)
		}
	}
	fail := func(err error) ([]events.ManifestID, error) {
		// Best effort: the point is already marked; the error helps
		// whoever looks at it with `tidemark points show`.
		p.Deletion.LastError = err.Error()
		_ = store.Put(context.WithoutCancel(ctx), p)
		return nil, fmt.Errorf("deleting restore point %s (it stays listed as %q and the deletion is retried): %w", p.ID, StatusDeleting, err)
	}
	if err := repo.DeleteRecord(ctx, RecordKind, string(p.ID)); err != nil {
		return fail(err)
	}
	others, err := store.List(ctx, "")
	if err != nil {
		return fail(err)
	}
	shared := map[events.ManifestID]bool{}
	for _, o := range others {
		if o.ID == p.ID {
			continue
		}
		for _, a := range o.Artifacts {
			shared[a.ManifestID] = true
		}
	}
	deleted := []events.ManifestID{}
	for _, a := range p.Artifacts {
		if shared[a.ManifestID] {
			continue
		}
		if err := repo.DeleteSnapshot(ctx, string(a.ManifestID)); err != nil && !errors.Is(err, repository.ErrNotFound) {
			return fail(fmt.Errorf("artifact %s: %w", a.Name, err))
		}
		deleted = append(deleted, a.ManifestID)
	}
	if _, err := pub.Publish(ctx, deletionEvent(p, deleted)); err != nil {
		return fail(fmt.Errorf("announcing the deletion: %w", err))
	}
	if err := store.Delete(ctx, p.ID); err != nil {
		return fail(err)
	}
	// A note left behind is dropped by the next sweep.
	_ = store.clearUnsynced(ctx, p.ID)
	return deleted, nil
}

// deletionEvent is restorepoint.expired for a point retention removed, and
// restorepoint.deleted for one a user deleted.
func deletionEvent(p RestorePoint, deleted []events.ManifestID) events.Event {
	var data events.Payload = events.RestorePointExpired{RestorePointID: p.ID, Application: p.Application, Reason: p.Deletion.Reason}
	if p.Deletion.By == DeletedByUser {
		data = events.RestorePointDeleted{RestorePointID: p.ID, Application: p.Application, Snapshots: deleted, Reason: p.Deletion.Reason}
	}
	return events.Event{
		ID:            uuid.NewSHA1(uuid.NameSpaceURL, []byte("tidemark:"+string(data.EventType())+":"+string(p.ID))).String(),
		Subject:       p.Application,
		CorrelationID: string(p.RunID),
		Data:          data,
	}
}

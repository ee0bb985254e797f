package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/repository"
)

// RecordReader reads the records of a repository.
type RecordReader interface {
	Records(ctx context.Context, kind string) ([]repository.Record, error)
}

// RebuildReport says what Rebuild did.
type RebuildReport struct {
	// Restored points were written into the catalog from their records.
	Restored []events.RestorePointID
	// Present points were in the catalog already and left as they are
	// (the catalog is newer than the repository's record).
	Present []events.RestorePointID
	// Problems are records that could not be read, with the reason.
	Problems []string
}

// Rebuild writes into the catalog every restore point whose record is in
// the repository and that the catalog does not have: after a fresh
// install, or when the catalog's bucket was lost. Points already in the
// catalog are left alone, so running it on a healthy catalog changes
// nothing. An unreadable record is reported and skipped.
func Rebuild(ctx context.Context, store *Store, repo RecordReader) (RebuildReport, error) {
	records, err := repo.Records(ctx, RecordKind)
	if err != nil {
		return RebuildReport{}, err
	}
	var rep RebuildReport
	for _, r := range records {
		var p RestorePoint
		if err := json.Unmarshal(r.Data, &p); err != nil {
			rep.Problems = append(rep.Problems, fmt.Sprintf("record %s: %v", r.ID, err))
			continue
		}
		if string(p.ID) != r.ID || p.Application == "" || len(p.Artifacts) == 0 {
			rep.Problems = append(rep.Problems, fmt.Sprintf("record %s: not a complete restore point (id %q, application %q, %d artifacts)", r.ID, p.ID, p.Application, len(p.Artifacts)))
			continue
		}
		_, err := store.Get(ctx, p.ID)
		if err == nil {
			rep.Present = append(rep.Present, p.ID)
			continue
		}
		if !errors.Is(err, ErrNotFound) {
			return rep, err
		}
		if err := store.Put(ctx, p); err != nil {
			return rep, fmt.Errorf("restoring %s into the catalog: %w", p.ID, err)
		}
		rep.Restored = append(rep.Restored, p.ID)
	}
	return rep, nil
}

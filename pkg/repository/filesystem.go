package repository

import (
	"context"
	"fmt"
	"syscall"

	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/blob/filesystem"
)

// The filesystem storage Tidemark hands to kopia checks the free space
// before each write. kopia v0.22.3's filesystem storage, when a write
// fails with ENOSPC, neither closes nor removes its temporary file, and
// retries for about 30 s: each retry leaks a descriptor and a file that
// keeps the disk full. Refusing a blob that cannot fit, before kopia
// starts writing it, fails the export at once with a clear error and
// leaves nothing behind (two writers racing for the last bytes can still
// reach kopia's path).
//
// kopia's connection file names the storage type, and repo.Open builds
// the storage from it, so the guarded storage has a type of its own.
const fsRefType = "tidemark-filesystem"

type fsRef struct {
	filesystem.Options
}

// spaceReserve is kept free beside each blob (directory entries, kopia's
// small log and index blobs).
const spaceReserve = 4 << 20

func init() {
	blob.AddSupportedStorage(fsRefType, fsRef{}, func(ctx context.Context, o *fsRef, create bool) (blob.Storage, error) {
		return newFilesystemStorage(ctx, o.Options, create)
	})
}

func newFilesystemStorage(ctx context.Context, opts filesystem.Options, create bool) (blob.Storage, error) {
	st, err := filesystem.New(ctx, &opts, create)
	if err != nil {
		return nil, err
	}
	return spaceGuard{Storage: st, path: opts.Path, info: blob.ConnectionInfo{Type: fsRefType, Config: &fsRef{Options: opts}}}, nil
}

type spaceGuard struct {
	blob.Storage
	path string
	info blob.ConnectionInfo
}

func (g spaceGuard) ConnectionInfo() blob.ConnectionInfo { return g.info }

func (g spaceGuard) PutBlob(ctx context.Context, id blob.ID, data blob.Bytes, opts blob.PutOptions) error {
	if free, ok := freeSpace(g.path); ok && free < int64(data.Length())+spaceReserve {
		return fmt.Errorf("writing blob %s (%d bytes) with %d bytes free in %s: %w", id, data.Length(), free, g.path, syscall.ENOSPC)
	}
	return g.Storage.PutBlob(ctx, id, data, opts)
}

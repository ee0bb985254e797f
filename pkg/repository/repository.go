// Package repository is Tidemark's kopia repository: the deduplicated,
// encrypted store that exported volumes and dump streams go into and are
// restored from. It is the only package that imports kopia; services see
// plain Go types (directories, readers, writers, manifest IDs).
//
// Every snapshot's source is fixed by Tidemark, not by the machine that
// runs the mover: user "tidemark", host derived from the application, path
// derived from the volume or artifact. So the previous snapshot of a volume
// is found, and its hash cache used, whichever mover exports it next.
package repository

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/blob/filesystem"
	"github.com/kopia/kopia/repo/content"
	"github.com/kopia/kopia/repo/format"
	"github.com/kopia/kopia/snapshot/upload"
)

// Username is the user of every snapshot source Tidemark writes. Every
// Tidemark client connects as Username@Username, which is also the one
// owner of the repository's maintenance.
const Username = "tidemark"

// initLockFile serialises creating a repository. kopia's filesystem
// storage ignores it: its blobs all end in ".f".
const initLockFile = ".tidemark-init.lock"

// formatBlobFile is the file of a filesystem repository's format blob: a
// directory without it holds no repository.
const formatBlobFile = "kopia.repository.f"

// DefaultProgressInterval is how often progress is reported at most.
const DefaultProgressInterval = time.Second

// Config says where a repository is and how to open it.
type Config struct {
	// Path is the directory of a filesystem repository. It is created,
	// and the repository initialised, when it does not exist yet.
	Path string
	// S3 is an S3 repository instead (set Path or S3, not both). The
	// repository is initialised in the bucket when it holds none yet.
	S3 *S3
	// Password encrypts the repository. The caller reads it from a file
	// or the environment; it is never logged nor put in an error.
	Password string
	// CacheDir holds kopia's local caches and its connection file.
	// Empty means <user cache dir>/tidemark/repository.
	CacheDir string
	// ProgressInterval is the least time between two progress reports
	// (DefaultProgressInterval when zero).
	ProgressInterval time.Duration
	// CheckpointInterval is how often a long export saves what it has
	// uploaded so far, so that an export that dies is resumed by the next
	// one instead of starting over (DefaultCheckpointInterval when zero;
	// at most 45 minutes, kopia's limit).
	CheckpointInterval time.Duration
	// Tuning overrides Tidemark's performance settings: its zero value
	// is what measured best (Resolve sets Compression from
	// TIDEMARK_REPOSITORY_COMPRESSION).
	Tuning Tuning
	// NoCreate makes Open fail with ErrNoRepository instead of creating a
	// repository where there is none: for commands that read or delete,
	// where a mistyped path must not become a new, empty repository.
	NoCreate bool
	Logger   *slog.Logger
}

// DefaultCheckpointInterval is how often a long export checkpoints.
const DefaultCheckpointInterval = 5 * time.Minute

// Validate reports what is missing from c.
func (c Config) Validate() error {
	switch {
	case c.Path == "" && c.S3 == nil:
		return fmt.Errorf("%w: Path or S3 is required", ErrInvalidConfig)
	case c.Path != "" && c.S3 != nil:
		return fmt.Errorf("%w: a repository is a directory (Path) or an S3 bucket (S3), not both", ErrInvalidConfig)
	case c.Password == "":
		return fmt.Errorf("%w: a password is required", ErrInvalidConfig)
	case c.CheckpointInterval > upload.DefaultCheckpointInterval:
		return fmt.Errorf("%w: CheckpointInterval %v is above kopia's limit of %v", ErrInvalidConfig, c.CheckpointInterval, upload.DefaultCheckpointInterval)
	}
	if err := c.Tuning.withDefaults().validate(); err != nil {
		return err
	}
	if c.S3 != nil {
		return c.S3.normalize().validate()
	}
	return nil
}

// Location names the repository in messages: its directory, or
// s3://endpoint/bucket/prefix (never with credentials).
func (c Config) Location() string {
	if c.S3 != nil {
		return c.S3.normalize().location()
	}
	return c.Path
}

// Repository is an open kopia repository. It is safe for concurrent use:
// each export runs in its own write session.
type Repository struct {
	cfg     Config
	rep     repo.Repository
	release func() // forgets the S3 credentials
	// beforeVerify, when set (by tests only), runs between a restore and
	// its verification: the seam through which tests damage a restored tree.
	beforeVerify func(dir string)
}

// s3InitLocks serialises creating S3 repositories within this process
// (the data movers and the catalog of one `tidemark serve`).
var s3InitLocks sync.Map // location -> *sync.Mutex

// Open opens the repository cfg names, creating it first if there is none
// (unless cfg.NoCreate). A wrong password gives ErrWrongPassword; an S3
// endpoint that cannot be reached, ErrUnreachable; a missing bucket,
// ErrNoBucket; refused credentials, ErrAccessDenied.
func Open(ctx context.Context, cfg Config) (*Repository, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = DefaultProgressInterval
	}
	if cfg.CheckpointInterval <= 0 {
		cfg.CheckpointInterval = DefaultCheckpointInterval
	}
	cfg.Tuning = cfg.Tuning.withDefaults()
	if cfg.S3 != nil {
		s := cfg.S3.normalize()
		cfg.S3 = &s
	} else {
		path, err := filepath.Abs(cfg.Path)
		if err != nil {
			return nil, fmt.Errorf("repository path: %w", err)
		}
		cfg.Path = path
	}
	if cfg.CacheDir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return nil, fmt.Errorf("%w: CacheDir is required (%v)", ErrInvalidConfig, err)
		}
		cfg.CacheDir = filepath.Join(base, "tidemark", "repository")
	}
	var err error
	if cfg.CacheDir, err = filepath.Abs(cfg.CacheDir); err != nil {
		return nil, fmt.Errorf("repository cache dir: %w", err)
	}
	if err := os.MkdirAll(cfg.CacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("repository cache dir: %w", err)
	}
	loc := cfg.Location()

	release := func() {}
	var st blob.Storage
	if cfg.S3 != nil {
		if err := cfg.S3.checkBucket(ctx); err != nil {
			return nil, err
		}
		var ref string
		ref, release = registerS3(*cfg.S3)
		if st, err = newS3Storage(ctx, *cfg.S3, ref, !cfg.NoCreate); err != nil {
			release()
			return nil, fmt.Errorf("opening repository storage %s: %w", loc, err)
		}
		if cfg.NoCreate {
			if _, err := st.GetMetadata(ctx, format.KopiaRepositoryBlobID); errors.Is(err, blob.ErrBlobNotFound) {
				st.Close(ctx) //nolint:errcheck
				release()
				return nil, fmt.Errorf("%w in %s (no %s there)", ErrNoRepository, loc, format.KopiaRepositoryBlobID)
			} else if err != nil {
				st.Close(ctx) //nolint:errcheck
				release()
				return nil, fmt.Errorf("opening repository in %s: %w", loc, explain(loc, err))
			}
		}
	} else {
		if cfg.NoCreate {
			// Looked for before kopia's storage is opened: opening it
			// writes its layout file into the directory.
			if _, err := os.Stat(filepath.Join(cfg.Path, formatBlobFile)); err != nil {
				return nil, fmt.Errorf("%w in %s (no %s there)", ErrNoRepository, cfg.Path, formatBlobFile)
			}
		}
		if st, err = newFilesystemStorage(ctx, filesystem.Options{Path: cfg.Path}, !cfg.NoCreate); err != nil {
			return nil, fmt.Errorf("opening repository storage %s: %w", cfg.Path, explain(loc, err))
		}
	}
	defer st.Close(ctx) //nolint:errcheck // Connect keeps no handle on it.
	fail := func(err error) (*Repository, error) {
		release()
		return nil, err
	}

	created := false
	if !cfg.NoCreate {
		// Two services of one `tidemark serve` (or two processes on one
		// host) may open a new repository at the same moment; only one
		// may initialise it, or each would write its own format blob.
		// Processes on different hosts creating one S3 repository at the
		// same moment are not excluded: create it from one first.
		var unlock func()
		if cfg.S3 != nil {
			mu, _ := s3InitLocks.LoadOrStore(loc, &sync.Mutex{})
			mu.(*sync.Mutex).Lock()
			unlockFile, lerr := lockFile(filepath.Join(os.TempDir(), "tidemark-init-"+SourceHost(loc)+".lock"))
			if lerr != nil {
				unlockFile = func() {}
			}
			unlock = func() { unlockFile(); mu.(*sync.Mutex).Unlock() }
		} else {
			if unlock, err = lockFile(filepath.Join(cfg.Path, initLockFile)); err != nil {
				return fail(fmt.Errorf("creating repository in %s: %w", loc, explain(loc, err)))
			}
		}
		err = repo.Initialize(ctx, st, cfg.Tuning.newRepositoryOptions(), cfg.Password)
		unlock()
		switch {
		case err == nil:
			created = true
		case errors.Is(err, repo.ErrAlreadyInitialized):
		default:
			return fail(fmt.Errorf("creating repository in %s: %w", loc, explain(loc, err)))
		}
	}

	configFile := filepath.Join(cfg.CacheDir, "kopia.config")
	opts := &repo.ConnectOptions{
		ClientOptions: repo.ClientOptions{
			Hostname:    Username,
			Username:    Username,
			Description: "Tidemark repository in " + loc,
		},
		CachingOptions: content.CachingOptions{CacheDirectory: filepath.Join(cfg.CacheDir, "cache")},
	}
	if err := repo.Connect(ctx, configFile, st, cfg.Password, opts); err != nil {
		if errors.Is(err, repo.ErrRepositoryNotInitialized) {
			return fail(fmt.Errorf("%w in %s", ErrNoRepository, loc))
		}
		return fail(fmt.Errorf("opening repository in %s: %w", loc, explain(loc, err)))
	}
	log := cfg.Logger
	rep, err := repo.Open(ctx, configFile, cfg.Password, &repo.Options{
		// kopia's default exits the process; a mover must report instead.
		OnFatalError: func(err error) { log.Error("repository fatal error", "repository", loc, "err", err) },
	})
	if err != nil {
		return fail(fmt.Errorf("opening repository in %s: %w", loc, explain(loc, err)))
	}
	if created {
		log.Info("repository created", "repository", loc)
	}
	r := &Repository{cfg: cfg, rep: rep, release: release}
	if err := r.ensureMaintenanceOwner(ctx); err != nil {
		_ = rep.Close(ctx)
		return fail(err)
	}
	return r, nil
}

// Close releases the repository.
func (r *Repository) Close(ctx context.Context) error {
	defer r.release()
	return r.rep.Close(ctx)
}

// Path is where the repository is: its directory, or
// s3://endpoint/bucket/prefix.
func (r *Repository) Path() string { return r.cfg.Location() }

// explain is the package's explain for this repository's location.
func (r *Repository) explain(err error) error { return explain(r.cfg.Location(), err) }

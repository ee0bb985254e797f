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
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob/filesystem"
	"github.com/kopia/kopia/repo/content"
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
	// Password encrypts the repository. The caller reads it from a file
	// or the environment; it is never logged nor put in an error.
	Password string
	// CacheDir holds kopia's local caches and its connection file.
	// Empty means <user cache dir>/tidemark/repository.
	CacheDir string
	// ProgressInterval is the least time between two progress reports
	// (DefaultProgressInterval when zero).
	ProgressInterval time.Duration
	// NoCreate makes Open fail with ErrNoRepository instead of creating a
	// repository where there is none: for commands that read or delete,
	// where a mistyped path must not become a new, empty repository.
	NoCreate bool
	Logger   *slog.Logger
}

// Validate reports what is missing from c.
func (c Config) Validate() error {
	if c.Path == "" {
		return fmt.Errorf("%w: Path is required", ErrInvalidConfig)
	}
	if c.Password == "" {
		return fmt.Errorf("%w: a password is required", ErrInvalidConfig)
	}
	return nil
}

// Repository is an open kopia repository. It is safe for concurrent use:
// each export runs in its own write session.
type Repository struct {
	cfg Config
	rep repo.Repository
}

// Open opens the repository at cfg.Path, creating it first if the
// directory holds none. A wrong password gives ErrWrongPassword.
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
	path, err := filepath.Abs(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("repository path: %w", err)
	}
	cfg.Path = path
	if cfg.CacheDir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return nil, fmt.Errorf("%w: CacheDir is required (%v)", ErrInvalidConfig, err)
		}
		cfg.CacheDir = filepath.Join(base, "tidemark", "repository")
	}
	if cfg.CacheDir, err = filepath.Abs(cfg.CacheDir); err != nil {
		return nil, fmt.Errorf("repository cache dir: %w", err)
	}
	if err := os.MkdirAll(cfg.CacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("repository cache dir: %w", err)
	}

	if cfg.NoCreate {
		// Looked for before kopia's storage is opened: opening it writes
		// its layout file into the directory.
		if _, err := os.Stat(filepath.Join(cfg.Path, formatBlobFile)); err != nil {
			return nil, fmt.Errorf("%w in %s (no %s there)", ErrNoRepository, cfg.Path, formatBlobFile)
		}
	}
	st, err := filesystem.New(ctx, &filesystem.Options{Path: cfg.Path}, !cfg.NoCreate)
	if err != nil {
		return nil, fmt.Errorf("opening repository storage %s: %w", cfg.Path, err)
	}
	defer st.Close(ctx) //nolint:errcheck // Connect keeps no handle on it.

	created := false
	if !cfg.NoCreate {
		// Two services of one `tidemark serve` (or two processes on one
		// host) may open a new repository at the same moment; only one
		// may initialise it, or each would write its own format blob.
		unlock, err := lockFile(filepath.Join(cfg.Path, initLockFile))
		if err != nil {
			return nil, fmt.Errorf("creating repository in %s: %w", cfg.Path, err)
		}
		err = repo.Initialize(ctx, st, &repo.NewRepositoryOptions{}, cfg.Password)
		unlock()
		switch {
		case err == nil:
			created = true
		case errors.Is(err, repo.ErrAlreadyInitialized):
		default:
			return nil, fmt.Errorf("creating repository in %s: %w", cfg.Path, translate(err))
		}
	}

	configFile := filepath.Join(cfg.CacheDir, "kopia.config")
	opts := &repo.ConnectOptions{
		ClientOptions: repo.ClientOptions{
			Hostname:    Username,
			Username:    Username,
			Description: "Tidemark repository in " + cfg.Path,
		},
		CachingOptions: content.CachingOptions{CacheDirectory: filepath.Join(cfg.CacheDir, "cache")},
	}
	if err := repo.Connect(ctx, configFile, st, cfg.Password, opts); err != nil {
		if errors.Is(err, repo.ErrRepositoryNotInitialized) {
			return nil, fmt.Errorf("%w in %s", ErrNoRepository, cfg.Path)
		}
		return nil, fmt.Errorf("opening repository in %s: %w", cfg.Path, translate(err))
	}
	log := cfg.Logger
	rep, err := repo.Open(ctx, configFile, cfg.Password, &repo.Options{
		// kopia's default exits the process; a mover must report instead.
		OnFatalError: func(err error) { log.Error("repository fatal error", "path", cfg.Path, "err", err) },
	})
	if err != nil {
		return nil, fmt.Errorf("opening repository in %s: %w", cfg.Path, translate(err))
	}
	if created {
		log.Info("repository created", "path", cfg.Path)
	}
	r := &Repository{cfg: cfg, rep: rep}
	if err := r.ensureMaintenanceOwner(ctx); err != nil {
		_ = rep.Close(ctx)
		return nil, err
	}
	return r, nil
}

// Close releases the repository.
func (r *Repository) Close(ctx context.Context) error {
	return r.rep.Close(ctx)
}

// Path is where the repository is.
func (r *Repository) Path() string { return r.cfg.Path }

// translate maps kopia's errors to this package's named errors.
func translate(err error) error {
	switch {
	case errors.Is(err, repo.ErrInvalidPassword):
		return ErrWrongPassword
	default:
		return err
	}
}

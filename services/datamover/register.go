package datamover

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/platform/local"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/pkg/service"
)

// Environment variables read by the registered service.
const (
	// EnvPassword holds the repository password itself.
	EnvPassword = "TIDEMARK_REPOSITORY_PASSWORD"
	// EnvPasswordFile names a file holding the repository password.
	EnvPasswordFile = "TIDEMARK_REPOSITORY_PASSWORD_FILE"
	// EnvPath overrides where the filesystem repository is
	// (<data-dir>/repository by default).
	EnvPath = "TIDEMARK_REPOSITORY_PATH"
)

func init() {
	service.Register(Name, func(d service.Deps) (service.Service, error) {
		log := d.Logger.With("service", Name)
		dataDir, err := filepath.Abs(d.DataDir)
		if err != nil {
			return nil, err
		}
		path := os.Getenv(EnvPath)
		if path == "" {
			path = filepath.Join(dataDir, "repository")
		}
		password, err := Password(os.Getenv(EnvPassword), os.Getenv(EnvPasswordFile), filepath.Join(dataDir, "repository.password"), log)
		if err != nil {
			return nil, err
		}
		snaps, err := local.NewSnapshotter(filepath.Join(dataDir, "snapshots"), log)
		if err != nil {
			return nil, err
		}
		return &managed{
			repo: repository.Config{Path: path, Password: password, CacheDir: filepath.Join(dataDir, "cache", "repository"), Logger: log},
			cfg:  Config{Resolver: LocalResolver(snaps), Logger: log},
			bus:  d.Bus,
		}, nil
	})
}

// managed opens the repository when the service starts and closes it when
// the service stops.
type managed struct {
	repo repository.Config
	cfg  Config
	bus  Bus
}

func (m *managed) Run(ctx context.Context) error {
	r, err := repository.Open(ctx, m.repo)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("datamover: %w", err)
	}
	defer func() {
		if err := r.Close(context.WithoutCancel(ctx)); err != nil {
			m.cfg.Logger.Warn("closing the repository", "err", err)
		}
	}()
	cfg := m.cfg
	cfg.Repository = r
	s, err := New(cfg, m.bus)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// Password returns the repository password: the value given, else the
// content of file, else the content of generated, which is created with a
// random password on first use (so `tidemark serve` works out of the box;
// keep that file safe, the repository cannot be read without it).
func Password(value, file, generated string, log *slog.Logger) (string, error) {
	if value != "" {
		return value, nil
	}
	read := func(p string) (string, error) {
		raw, err := os.ReadFile(p)
		if err != nil {
			return "", err
		}
		pw := strings.TrimRight(string(raw), "\r\n")
		if pw == "" {
			return "", fmt.Errorf("repository password file %s is empty", p)
		}
		return pw, nil
	}
	if file != "" {
		pw, err := read(file)
		if err != nil {
			return "", fmt.Errorf("reading the repository password: %w", err)
		}
		return pw, nil
	}
	pw, err := read(generated)
	if err == nil {
		return pw, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("reading the repository password: %w", err)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	pw = base64.RawURLEncoding.EncodeToString(b)
	if err := os.MkdirAll(filepath.Dir(generated), 0o700); err != nil {
		return "", err
	}
	f, err := os.OpenFile(generated, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) { // another process was first
			return read(generated)
		}
		return "", fmt.Errorf("writing a repository password: %w", err)
	}
	if _, err := f.WriteString(pw + "\n"); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	log.Warn("no repository password given; generated one (keep this file: the repository cannot be read without it)",
		"file", generated, "set", EnvPassword+" or "+EnvPasswordFile)
	return pw, nil
}

// LocalResolver finds snapshots taken by the local platform's snapshotter.
func LocalResolver(s *local.Snapshotter) Resolver {
	return func(ctx context.Context, id events.SnapshotID) (string, error) {
		snaps, err := s.List(ctx)
		if err != nil {
			return "", err
		}
		for _, sn := range snaps {
			if sn.ID != id {
				continue
			}
			if sn.Incomplete {
				return "", fmt.Errorf("%w: snapshot %s is incomplete", repository.ErrInvalidRequest, id)
			}
			return sn.Path, nil
		}
		return "", fmt.Errorf("%w: snapshot %s not found under %s", ErrSnapshotNotFound, id, s.Root)
	}
}

package repository

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// Environment variables that say where Tidemark's repository is and how to
// open it. Every process that opens the repository (the data movers, the
// catalog, `tidemark points delete`, `tidemark catalog rebuild`) reads the
// same ones.
const (
	// EnvPassword holds the repository password itself.
	EnvPassword = "TIDEMARK_REPOSITORY_PASSWORD"
	// EnvPasswordFile names a file holding the repository password.
	EnvPasswordFile = "TIDEMARK_REPOSITORY_PASSWORD_FILE"
	// EnvPath overrides where the filesystem repository is
	// (<data-dir>/repository by default).
	EnvPath = "TIDEMARK_REPOSITORY_PATH"
)

// GeneratedPasswordFile is where `tidemark serve` keeps the password it
// generated when none was given, relative to its data directory.
const GeneratedPasswordFile = "repository.password"

// FromEnvironment returns the Config of the repository of dataDir, as
// Resolve does with the values of EnvPath, EnvPassword and EnvPasswordFile.
func FromEnvironment(dataDir string, generate bool, log *slog.Logger) (Config, error) {
	return Resolve(dataDir, os.Getenv(EnvPath), os.Getenv(EnvPassword), os.Getenv(EnvPasswordFile), generate, log)
}

// Resolve returns the Config of the repository of dataDir: at path, else
// <dataDir>/repository; its password is password, else the content of
// passwordFile, else the one `tidemark serve` generated into
// <dataDir>/repository.password. With generate, a missing password is
// generated there (what `tidemark serve` does on first start); without it
// (commands that only use an existing repository), a missing password is
// an error saying how to give one. The caller sets CacheDir.
func Resolve(dataDir, path, password, passwordFile string, generate bool, log *slog.Logger) (Config, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dataDir, err := filepath.Abs(dataDir)
	if err != nil {
		return Config{}, err
	}
	if path == "" {
		path = filepath.Join(dataDir, "repository")
	}
	generated := filepath.Join(dataDir, GeneratedPasswordFile)
	if !generate && password == "" && passwordFile == "" {
		if _, err := os.Stat(generated); err != nil {
			return Config{}, fmt.Errorf("%w: no repository password: set %s or %s, or point --data-dir at the data directory of `tidemark serve` (it keeps the password it generated in <data-dir>/%s)",
				ErrInvalidConfig, EnvPassword, EnvPasswordFile, GeneratedPasswordFile)
		}
	}
	pw, err := Password(password, passwordFile, generated, log)
	if err != nil {
		return Config{}, err
	}
	return Config{Path: path, Password: pw, Logger: log}, nil
}

// Password returns the repository password: the value given, else the
// content of file, else the content of generated, which is created with a
// random password on first use (so `tidemark serve` works out of the box;
// keep that file safe, the repository cannot be read without it).
func Password(value, file, generated string, log *slog.Logger) (string, error) {
	if value != "" {
		return value, nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
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

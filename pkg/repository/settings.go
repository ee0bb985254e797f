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
	"strconv"
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
	// EnvCompression names kopia's compressor for exported file data:
	// s2-default (the default), zstd-fastest (smaller, slower), none, or
	// another of kopia's.
	EnvCompression = "TIDEMARK_REPOSITORY_COMPRESSION"

	// EnvS3Bucket selects an S3 repository in this bucket instead of a
	// directory. The bucket must exist.
	EnvS3Bucket = "TIDEMARK_REPOSITORY_S3_BUCKET"
	// EnvS3Endpoint is the S3 server, host[:port] (s3.amazonaws.com by
	// default); an http:// prefix means plain HTTP.
	EnvS3Endpoint = "TIDEMARK_REPOSITORY_S3_ENDPOINT"
	// EnvS3Prefix is put before every object name (to share a bucket).
	EnvS3Prefix = "TIDEMARK_REPOSITORY_S3_PREFIX"
	// EnvS3Region is the region in request signatures.
	EnvS3Region = "TIDEMARK_REPOSITORY_S3_REGION"
	// EnvS3AccessKey holds the access key ID (or name a file holding it
	// with the _FILE variant).
	EnvS3AccessKey = "TIDEMARK_REPOSITORY_S3_ACCESS_KEY"
	// EnvS3SecretKey holds the secret access key (or name a file holding
	// it with the _FILE variant).
	EnvS3SecretKey = "TIDEMARK_REPOSITORY_S3_SECRET_KEY"
	// EnvS3DisableTLS set to true speaks plain HTTP to the endpoint.
	EnvS3DisableTLS = "TIDEMARK_REPOSITORY_S3_DISABLE_TLS"
	// EnvS3CAFile names a PEM file of CA certificates to trust for the
	// endpoint, besides the system's.
	EnvS3CAFile = "TIDEMARK_REPOSITORY_S3_CA_FILE"
)

// s3Variables are every variable of an S3 repository, to tell a forgotten
// bucket from no S3 at all.
var s3Variables = []string{EnvS3Bucket, EnvS3Endpoint, EnvS3Prefix, EnvS3Region,
	EnvS3AccessKey, EnvS3AccessKey + "_FILE", EnvS3SecretKey, EnvS3SecretKey + "_FILE", EnvS3DisableTLS, EnvS3CAFile}

// S3FromEnvironment returns the S3 repository the TIDEMARK_REPOSITORY_S3_*
// variables describe, read with getenv (os.Getenv when nil), or nil when
// none is set. The access key and secret come from the variable itself or
// from the file its _FILE variant names (for a mounted secret).
func S3FromEnvironment(getenv func(string) string) (*S3, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	var set []string
	for _, v := range s3Variables {
		if getenv(v) != "" {
			set = append(set, v)
		}
	}
	if len(set) == 0 {
		return nil, nil
	}
	if getenv(EnvS3Bucket) == "" {
		return nil, fmt.Errorf("%w: %s is set but %s is not: name the bucket of the S3 repository", ErrInvalidConfig, strings.Join(set, ", "), EnvS3Bucket)
	}
	s := &S3{
		Endpoint: getenv(EnvS3Endpoint), Bucket: getenv(EnvS3Bucket), Prefix: getenv(EnvS3Prefix), Region: getenv(EnvS3Region),
	}
	var err error
	if s.AccessKeyID, err = valueOrFile(getenv, EnvS3AccessKey); err != nil {
		return nil, err
	}
	if s.SecretAccessKey, err = valueOrFile(getenv, EnvS3SecretKey); err != nil {
		return nil, err
	}
	if v := getenv(EnvS3DisableTLS); v != "" {
		if s.DisableTLS, err = strconv.ParseBool(v); err != nil {
			return nil, fmt.Errorf("%w: %s=%q: want true or false", ErrInvalidConfig, EnvS3DisableTLS, v)
		}
	}
	if f := getenv(EnvS3CAFile); f != "" {
		if s.RootCA, err = os.ReadFile(f); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalidConfig, EnvS3CAFile, err)
		}
	}
	n := s.normalize()
	if err := n.validate(); err != nil {
		return nil, err
	}
	return s, nil
}

// valueOrFile returns the variable name's value, else the content of the
// file that name_FILE names (trailing newlines removed). The value itself
// never appears in an error.
func valueOrFile(getenv func(string) string, name string) (string, error) {
	v, file := getenv(name), getenv(name+"_FILE")
	switch {
	case v != "" && file != "":
		return "", fmt.Errorf("%w: both %s and %s_FILE are set; set one", ErrInvalidConfig, name, name)
	case v != "":
		return v, nil
	case file == "":
		return "", nil
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%w: %s_FILE: %v", ErrInvalidConfig, name, err)
	}
	v = strings.TrimRight(string(raw), "\r\n")
	if v == "" {
		return "", fmt.Errorf("%w: %s_FILE: %s is empty", ErrInvalidConfig, name, file)
	}
	return v, nil
}

// GeneratedPasswordFile is where `tidemark serve` keeps the password it
// generated when none was given, relative to its data directory.
const GeneratedPasswordFile = "repository.password"

// FromEnvironment returns the Config of the repository of dataDir, as
// Resolve does with the values of EnvPath, EnvPassword and EnvPasswordFile.
func FromEnvironment(dataDir string, generate bool, log *slog.Logger) (Config, error) {
	return Resolve(dataDir, os.Getenv(EnvPath), os.Getenv(EnvPassword), os.Getenv(EnvPasswordFile), generate, log)
}

// Resolve returns the Config of the repository of dataDir: at path, else
// in the S3 bucket the TIDEMARK_REPOSITORY_S3_* variables name (see
// S3FromEnvironment; setting both a path and a bucket is an error), else
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
	s3, err := S3FromEnvironment(nil)
	if err != nil {
		return Config{}, err
	}
	switch {
	case s3 != nil && path != "":
		return Config{}, fmt.Errorf("%w: both a repository path (%s) and an S3 bucket (%s) are given: a repository is one or the other", ErrInvalidConfig, path, EnvS3Bucket)
	case path == "" && s3 == nil:
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
	cfg := Config{Path: path, S3: s3, Password: pw, Logger: log, Tuning: Tuning{Compression: os.Getenv(EnvCompression)}}
	if err := cfg.Tuning.withDefaults().validate(); err != nil {
		return Config{}, fmt.Errorf("%s: %w", EnvCompression, err)
	}
	return cfg, nil
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

package repository

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"strings"
	"syscall"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob"
	"github.com/minio/minio-go/v7"
)

var (
	// ErrWrongPassword is returned when the password does not open the
	// repository. Retrying cannot help.
	ErrWrongPassword = errors.New("repository password is wrong")
	// ErrInvalidConfig is returned for a Config that cannot work.
	ErrInvalidConfig = errors.New("invalid repository config")
	// ErrNotFound is returned for a manifest ID the repository does not hold.
	ErrNotFound = errors.New("snapshot not found in the repository")
	// ErrInvalidRequest is returned for a request missing what it needs.
	ErrInvalidRequest = errors.New("invalid repository request")
	// ErrNoRepository is returned by Open with Config.NoCreate where there
	// is no repository.
	ErrNoRepository = errors.New("no repository")
	// ErrMaintenanceNotOwned is returned by Maintain when the repository's
	// maintenance belongs to another kopia user than Tidemark's.
	ErrMaintenanceNotOwned = errors.New("repository maintenance is owned by another user")
	// ErrNoBucket is returned when an S3 repository's bucket does not
	// exist.
	ErrNoBucket = errors.New("S3 bucket not found")
	// ErrAccessDenied is returned when the repository's storage refuses
	// the credentials (S3) or the permissions (a directory).
	ErrAccessDenied = errors.New("repository storage refused access")
	// ErrUnreachable is returned when the repository's storage cannot be
	// reached. A retry may succeed once it is back.
	ErrUnreachable = errors.New("repository storage is unreachable")
	// ErrNoSpace is returned when the repository's storage is full. A
	// retry may succeed once space is freed.
	ErrNoSpace = errors.New("repository storage is full")
	// ErrVerification: a restored tree differs from the snapshot it was
	// restored from (a file missing, or of another size or content).
	ErrVerification = errors.New("the restored files do not match the backup")
)

// IsPermanent reports whether retrying an operation that failed with err
// cannot help.
func IsPermanent(err error) bool {
	return errors.Is(err, ErrWrongPassword) || errors.Is(err, ErrInvalidConfig) ||
		errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalidRequest) ||
		errors.Is(err, ErrNoRepository) || errors.Is(err, ErrNoBucket) || errors.Is(err, ErrAccessDenied)
}

// explain names what went wrong with the storage at location, and what to
// do about it: an unreachable endpoint, refused credentials, a full disk.
// Other errors come back as they are (a wrong password as
// ErrWrongPassword). Neither the password nor the S3 secret is in any of
// the errors it wraps: kopia and minio-go never put them in one.
func explain(location string, err error) error {
	if err == nil {
		return nil
	}
	for _, named := range []error{ErrWrongPassword, ErrNoBucket, ErrAccessDenied, ErrUnreachable, ErrNoSpace, ErrInvalidConfig} {
		if errors.Is(err, named) {
			return err
		}
	}
	s3 := strings.HasPrefix(location, "s3://")
	var (
		me      minio.ErrorResponse
		dnsErr  *net.DNSError
		opErr   *net.OpError
		unknown x509.UnknownAuthorityError
		invalid x509.CertificateInvalidError
		host    x509.HostnameError
	)
	switch {
	case errors.Is(err, repo.ErrInvalidPassword):
		return fmt.Errorf("%w: it does not open the repository at %s; give the password the repository was created with (%s or %s)",
			ErrWrongPassword, location, EnvPassword, EnvPasswordFile)
	case errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || strings.Contains(err.Error(), "no space left on device"):
		return fmt.Errorf("%w: no space left for the repository at %s (or its cache): free space there, or move the repository: %v",
			ErrNoSpace, location, err)
	case !s3 && errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w: %v; the repository directory %s must be writable by this process", ErrAccessDenied, err, location)
	case errors.Is(err, blob.ErrInvalidCredentials):
		return fmt.Errorf("%w: %s refused the credentials: %v; check %s and %s", ErrAccessDenied, location, err, EnvS3AccessKey, EnvS3SecretKey)
	case s3 && errors.As(err, &me) && me.Code == minio.NoSuchBucket:
		return fmt.Errorf("%w: %s: %s; create the bucket, or correct %s", ErrNoBucket, location, me.Message, EnvS3Bucket)
	case s3 && errors.As(err, &me) && (me.StatusCode == 401 || me.StatusCode == 403 ||
		me.Code == "AccessDenied" || me.Code == "InvalidAccessKeyId" || me.Code == "SignatureDoesNotMatch"):
		return fmt.Errorf("%w: %s refused the request (%s: %s); check %s and %s, and that the key may read and write the bucket",
			ErrAccessDenied, location, me.Code, me.Message, EnvS3AccessKey, EnvS3SecretKey)
	case s3 && (errors.As(err, &unknown) || errors.As(err, &invalid) || errors.As(err, &host)):
		return fmt.Errorf("%w: the TLS certificate of %s is not trusted: %v; give its CA in %s (or %s=true for a plain-HTTP server)",
			ErrUnreachable, location, err, EnvS3CAFile, EnvS3DisableTLS)
	case s3 && strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return fmt.Errorf("%w: %s speaks plain HTTP, not HTTPS: set %s=true (or use an http:// endpoint)", ErrUnreachable, location, EnvS3DisableTLS)
	case s3 && (errors.As(err, &dnsErr) || errors.As(err, &opErr) || errors.Is(err, syscall.ECONNREFUSED) ||
		strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "i/o timeout")):
		return fmt.Errorf("%w: cannot reach %s: %v; check %s and that the S3 server is up", ErrUnreachable, location, err, EnvS3Endpoint)
	}
	return err
}

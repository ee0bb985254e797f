package repository

import "errors"

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
)

// IsPermanent reports whether retrying an operation that failed with err
// cannot help.
func IsPermanent(err error) bool {
	return errors.Is(err, ErrWrongPassword) || errors.Is(err, ErrInvalidConfig) ||
		errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalidRequest) ||
		errors.Is(err, ErrNoRepository)
}

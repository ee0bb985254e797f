//go:build !unix

package repository

// lockFile is a no-op where flock is missing: there, only one process at a
// time may create a repository.
func lockFile(string) (func(), error) { return func() {}, nil }

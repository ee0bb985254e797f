//go:build !linux

package hookrunner

import "os"

// stdinStream returns the two ends of a restore command's stdin: a plain
// pipe here (see stdin_linux.go for why Linux uses a socket pair).
func stdinStream() (cmd, feeder *os.File, err error) { return os.Pipe() }

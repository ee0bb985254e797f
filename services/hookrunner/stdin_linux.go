package hookrunner

import (
	"os"

	"golang.org/x/sys/unix"
)

// stdinBuffer is the send buffer asked for a restore command's stdin; the
// kernel caps it at net.core.wmem_max.
const stdinBuffer = 4 << 20

// stdinStream returns the two ends of a restore command's stdin: a Unix
// stream socket pair, not a pipe. pg_restore reads its stdin 4 KiB at a
// time, and Linux wakes a pipe's writer whenever a read frees a page of a
// full pipe, so the goroutine feeding a pipe ran for nearly every read:
// feeding a 294 MiB pg_dump to pg_restore cost 0.8–1.2 s of CPU through
// os/exec's 64 KiB pipe, 0.25–0.7 s through a 1 MiB one. A socket's writer
// is woken only once three quarters of its send buffer have been read,
// hundreds of KiB at a time: 0.05 s. A command reads a socket on fd 0 like
// a pipe.
func stdinStream() (cmd, feeder *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	// The command only reads; the feeder only writes, through Go's poller.
	err = unix.Shutdown(fds[0], unix.SHUT_WR)
	if err == nil {
		err = unix.SetNonblock(fds[1], true)
	}
	if err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, nil, os.NewSyscallError("stdin socket", err)
	}
	// Best effort: a smaller buffer only means more wake-ups.
	_ = unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_SNDBUF, stdinBuffer)
	return os.NewFile(uintptr(fds[0]), "stdin"), os.NewFile(uintptr(fds[1]), "stdin feeder"), nil
}

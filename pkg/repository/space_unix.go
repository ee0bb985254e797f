//go:build unix

package repository

import "golang.org/x/sys/unix"

// freeSpace is the space an unprivileged writer may still use on the
// filesystem of path.
func freeSpace(path string) (int64, bool) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}

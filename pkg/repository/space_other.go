//go:build !unix

package repository

func freeSpace(string) (int64, bool) { return 0, false }

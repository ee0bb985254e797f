// Command pause is the test cluster's pod sandbox process: PID 1 of every
// pod's shared namespaces. It does nothing but wait for SIGTERM or SIGINT
// and, being PID 1, reap the zombies of processes that die in the pod
// (with a shared PID namespace, orphans are reparented to it).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

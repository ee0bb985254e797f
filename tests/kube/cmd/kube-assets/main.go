// Command kube-assets builds (or finds in the cache) the kube-apiserver and
// etcd that the Kubernetes platform's tests run, and prints their paths.
// `make test-kube` runs it first so a cold build's progress is visible.
package main

import (
	"fmt"
	"os"

	"github.com/tidemark-dev/tidemark/tests/kube"
)

func main() {
	a, err := kubetest.BuildAssets(nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-assets:", err)
		os.Exit(1)
	}
	fmt.Printf("kube-apiserver %s\netcd %s\n", a.APIServer, a.Etcd)
}

// Command csi-test-driver runs tests/csidriver, a CSI driver FOR TESTS
// ONLY (volumes are directories, snapshots are copies; see the package
// documentation), for the single-node test cluster of tools/cluster.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/tidemark-dev/tidemark/tests/csidriver"
)

func main() {
	name := flag.String("name", csidriver.DefaultName, "driver name")
	nodeID := flag.String("node-id", "", "the node's name (default: the hostname)")
	root := flag.String("root", "", "directory holding volumes and snapshots")
	endpoint := flag.String("endpoint", "", "CSI unix socket path")
	regDir := flag.String("registration-dir", "", "the kubelet's plugins_registry directory (empty: do not register)")
	flag.Parse()
	if *nodeID == "" {
		h, err := os.Hostname()
		if err != nil {
			log.Fatal(err)
		}
		*nodeID = h
	}
	if *root == "" || *endpoint == "" {
		fmt.Fprintln(os.Stderr, "csi-test-driver: -root and -endpoint are required")
		os.Exit(2)
	}
	d, err := csidriver.New(csidriver.Config{Name: *name, NodeID: *nodeID, Root: *root})
	if err != nil {
		log.Fatal(err)
	}
	srv, ls, err := d.Listen(*endpoint, *regDir)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		for err := range srv.Registered {
			if err != nil {
				log.Print(err)
			} else {
				log.Print("registered with the kubelet")
			}
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Printf("csi-test-driver %s serving %s on %s (root %s, node %s)", csidriver.Version, *name, *endpoint, *root, *nodeID)
	if err := srv.Serve(ctx, ls); err != nil {
		log.Fatal(err)
	}
}

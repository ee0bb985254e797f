// Package cluster proves the real-cluster harness (tools/cluster) works
// end to end: pods run, the test CSI driver provisions volumes, and
// VolumeSnapshots, VolumeGroupSnapshots and restores from them work through
// the real snapshot controller and CSI sidecars. Run with `make
// test-cluster` after `make cluster-up`.
package cluster

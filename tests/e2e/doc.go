// Package e2e runs Tidemark as users deploy it (deploy/overlays/e2e: the
// dev overlay, every service its own Deployment, NATS in the cluster, with
// an S3 repository on versitygw in the cluster) on the real single-node
// test cluster (tools/cluster) and drives it through NATS the way users
// do. Build tag e2e; run with `make e2e` after `make cluster-up` and
// `make images`. Without a reachable cluster every test skips, saying why.
// tests/README.md ("tests/e2e") says what is covered and what it took.
package e2e

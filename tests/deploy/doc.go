// Package deploy tests the manifests users apply (deploy/): the
// kustomizations render with the kustomize library kubectl embeds, every
// Tidemark Deployment has the shape the docs promise (deploy_test.go), and
// with build tag kubeapi every rendered object passes a server-side
// dry-run against a real kube-apiserver while SubjectAccessReviews prove
// each service account's least-privilege RBAC (deploy_kubeapi_test.go,
// `make test-kube`).
package deploy

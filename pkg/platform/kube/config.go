package kube

import (
	"errors"
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ConfigFromEnvironment finds the cluster as kubectl does: the files in
// $KUBECONFIG, else ~/.kube/config (with their current context), else
// the in-cluster service account when running in a pod.
func ConfigFromEnvironment() (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if clientcmd.IsEmptyConfig(err) || errors.Is(err, rest.ErrNotInCluster) {
		return nil, fmt.Errorf("no Kubernetes cluster configured: set KUBECONFIG (or write ~/.kube/config), or run in a pod with a service account")
	}
	if err != nil {
		return nil, fmt.Errorf("loading the Kubernetes client config (KUBECONFIG, ~/.kube/config or in-cluster): %w", err)
	}
	return cfg, nil
}

// NewFromEnvironment is New on the cluster ConfigFromEnvironment finds.
func NewFromEnvironment(opts ...Option) (*Platform, error) {
	cfg, err := ConfigFromEnvironment()
	if err != nil {
		return nil, err
	}
	c, err := NewClients(cfg)
	if err != nil {
		return nil, err
	}
	return New(c, opts...), nil
}

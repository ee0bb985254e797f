package kube

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigFromEnvironment(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("KUBERNETES_SERVICE_HOST", "") // not in a pod
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	t.Setenv("KUBECONFIG", "")
	if _, err := ConfigFromEnvironment(); err == nil || !strings.Contains(err.Error(), "KUBECONFIG") {
		t.Errorf("no config anywhere: err = %v, want one saying to set KUBECONFIG", err)
	}

	kubeconfig := filepath.Join(home, "cluster.yaml")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://10.0.0.1:6443"}}]
users: [{name: u, user: {token: t0ken}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBECONFIG", kubeconfig)
	cfg, err := ConfigFromEnvironment()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "https://10.0.0.1:6443" || cfg.BearerToken != "t0ken" {
		t.Errorf("config host %q token %q, want the kubeconfig's", cfg.Host, cfg.BearerToken)
	}
	p, err := NewFromEnvironment()
	if err != nil || p.Clients().Config.Host != cfg.Host {
		t.Errorf("NewFromEnvironment: %v", err)
	}
}

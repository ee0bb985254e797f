package kube

import (
	"context"
	"fmt"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// ParsePVCRef parses a PVC named namespace/name (an import's target on
// Kubernetes, an application volume's source).
func ParsePVCRef(s string) (ns, name string, ok bool) {
	ns, name, ok = strings.Cut(s, "/")
	if !ok || strings.Contains(name, "/") {
		return "", "", false
	}
	return ns, name, len(validation.IsDNS1123Label(ns)) == 0 && len(validation.IsDNS1123Subdomain(name)) == 0
}

// serviceAccountNamespaceFile is where a pod finds its own namespace.
const serviceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// OwnImage returns the image, and its pull policy, of the container this
// process runs in, read from its own pod ($POD_NAME or the host name, in
// $POD_NAMESPACE or the service account's namespace): mover pods then run
// the very tidemark that starts them, whatever image an overlay set.
// container names the container when the pod has several.
func (p *Platform) OwnImage(ctx context.Context, container string) (string, corev1.PullPolicy, error) {
	name := os.Getenv("POD_NAME")
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return "", "", fmt.Errorf("finding this pod's name: %w", err)
		}
		name = h
	}
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		raw, err := os.ReadFile(serviceAccountNamespaceFile)
		if err != nil {
			return "", "", fmt.Errorf("this process does not run in a pod (no %s and no $POD_NAMESPACE)", serviceAccountNamespaceFile)
		}
		ns = strings.TrimSpace(string(raw))
	}
	pod, err := p.c.Core.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", "", fmt.Errorf("reading this process's pod %s/%s: %w", ns, name, err)
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == container || len(pod.Spec.Containers) == 1 {
			return c.Image, c.ImagePullPolicy, nil
		}
	}
	return "", "", fmt.Errorf("pod %s/%s has no container %q", ns, name, container)
}

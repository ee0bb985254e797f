//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/tidemark-dev/tidemark/pkg/repository"
)

// The S3 server of deploy/overlays/e2e and the repository's place on it
// (the overlay's ConfigMap patch says the same).
const (
	s3Service    = "versitygw"
	s3Port       = 7070
	s3RootSecret = "versitygw-root"
	s3Bucket     = "tidemark"
	s3Region     = "us-east-1"
)

// s3Credentials are the S3 server's root keys, which the repository
// Secret carries too.
type s3Credentials struct{ AccessKey, SecretKey string }

// isS3Server: the objects of the overlay's versitygw.yaml.
func isS3Server(o *unstructured.Unstructured) bool {
	return o.GetLabels()["app.kubernetes.io/name"] == s3Service
}

// s3Pod is a Ready pod behind the S3 Service, which is what `kubectl
// port-forward svc/versitygw` forwards to.
func (c *cluster) s3Pod(ctx context.Context) (string, error) {
	svc, err := c.core.CoreV1().Services(namespace).Get(ctx, s3Service, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	pods, err := c.core.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(svc.Spec.Selector).String()})
	if err != nil {
		return "", err
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && podReady(&p) {
			return p.Name, nil
		}
	}
	return "", fmt.Errorf("no Ready pod behind Service %s/%s", namespace, s3Service)
}

// s3Config is the repository as seen from this process through a
// port-forward to the S3 server at addr.
func (c *cluster) s3Config(addr, cacheDir string) repository.Config {
	return repository.Config{
		S3: &repository.S3{
			Endpoint: "http://" + addr, Bucket: s3Bucket, Region: s3Region,
			AccessKeyID: c.s3.AccessKey, SecretAccessKey: c.s3.SecretKey,
		},
		Password: c.password,
		CacheDir: cacheDir,
	}
}

// prepareRepository waits for the S3 server, then makes the bucket and
// the repository in it, as an operator does once before starting
// Tidemark (docs/deploy.md): Tidemark creates the repository, not the
// bucket, and only one process may create the repository.
func (c *cluster) prepareRepository(ctx context.Context, t *testing.T) error {
	start := time.Now()
	why, err := poll(ctx, 2*time.Minute, func() (bool, string) {
		d, err := c.core.AppsV1().Deployments(namespace).Get(ctx, s3Service, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return available(d), "Deployment " + s3Service + " not Available"
	})
	if err != nil {
		return fmt.Errorf("the S3 server (its image tidemark.local/versitygw:test comes from `make images`): %v: %s\n%s", err, why, c.podReport(ctx, namespace))
	}
	pod, err := c.s3Pod(ctx)
	if err != nil {
		return err
	}
	addr, stop, err := c.forward(namespace, pod, s3Port)
	if err != nil {
		return err
	}
	defer stop()
	mc, err := minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(c.s3.AccessKey, c.s3.SecretKey, ""), Region: s3Region})
	if err != nil {
		return err
	}
	exists, err := mc.BucketExists(ctx, s3Bucket)
	if err != nil {
		return fmt.Errorf("S3 bucket %s: %w", s3Bucket, err)
	}
	if !exists {
		if err := mc.MakeBucket(ctx, s3Bucket, minio.MakeBucketOptions{Region: s3Region}); err != nil {
			return fmt.Errorf("creating S3 bucket %s: %w", s3Bucket, err)
		}
	}
	cache, err := os.MkdirTemp("", "tidemark-e2e-repository-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cache)
	r, err := repository.Open(ctx, c.s3Config(addr, cache))
	if err != nil {
		return fmt.Errorf("creating the repository in S3: %w", err)
	}
	if err := r.Close(ctx); err != nil {
		return err
	}
	t.Logf("S3 server Available, bucket and repository ready %v after it was applied", time.Since(start).Round(time.Millisecond))
	return nil
}

// openRepository opens the repository in the cluster's S3 bucket from
// this process, through a port-forward to the S3 server, until the test
// ends. It creates nothing.
func (c *cluster) openRepository(t *testing.T) *repository.Repository {
	t.Helper()
	ctx := context.Background()
	pod, err := c.s3Pod(ctx)
	if err != nil {
		t.Fatal(err)
	}
	addr := c.portForward(t, namespace, pod, s3Port)
	cfg := c.s3Config(addr, t.TempDir())
	cfg.NoCreate = true
	r, err := repository.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("opening the repository in S3 through %s: %v", addr, err)
	}
	t.Cleanup(func() {
		if err := r.Close(context.Background()); err != nil {
			t.Errorf("closing the repository: %v", err)
		}
	})
	return r
}

package repository

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/blob/s3"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// DefaultS3Endpoint is the endpoint of an S3 repository that names none.
const DefaultS3Endpoint = "s3.amazonaws.com"

// S3 says where an S3 repository is: a bucket (and a prefix in it) on any
// S3-compatible server. The bucket must exist; Tidemark creates the
// repository in it, not the bucket.
type S3 struct {
	// Endpoint is host[:port] (DefaultS3Endpoint when empty). An
	// "http://" or "https://" prefix is accepted and sets DisableTLS.
	Endpoint string
	Bucket   string
	// Prefix is put before every object name, e.g. "tidemark/" to share a
	// bucket.
	Prefix string
	// Region is sent in request signatures; most servers other than AWS
	// ignore it.
	Region string
	// AccessKeyID and SecretAccessKey sign the requests. When both are
	// empty, the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY variables or
	// the instance's role are used instead. The secret is never logged,
	// put in an error, nor written to disk by Tidemark.
	AccessKeyID     string
	SecretAccessKey string
	// DisableTLS speaks plain HTTP to the endpoint.
	DisableTLS bool
	// RootCA is PEM certificates trusted for the endpoint's TLS
	// certificate, besides the system's (a private CA).
	RootCA []byte
}

// normalize applies the defaults and the scheme prefix of the endpoint.
func (s S3) normalize() S3 {
	switch {
	case strings.HasPrefix(s.Endpoint, "http://"):
		s.Endpoint, s.DisableTLS = strings.TrimPrefix(s.Endpoint, "http://"), true
	case strings.HasPrefix(s.Endpoint, "https://"):
		s.Endpoint, s.DisableTLS = strings.TrimPrefix(s.Endpoint, "https://"), false
	}
	s.Endpoint = strings.TrimSuffix(s.Endpoint, "/")
	if s.Endpoint == "" {
		s.Endpoint = DefaultS3Endpoint
	}
	return s
}

func (s S3) validate() error {
	switch {
	case s.Bucket == "":
		return fmt.Errorf("%w: an S3 repository needs a bucket (%s)", ErrInvalidConfig, EnvS3Bucket)
	case strings.Contains(s.Endpoint, "/"):
		return fmt.Errorf("%w: S3 endpoint %q: want host[:port], optionally after http:// or https:// (%s)", ErrInvalidConfig, s.Endpoint, EnvS3Endpoint)
	case (s.AccessKeyID == "") != (s.SecretAccessKey == ""):
		return fmt.Errorf("%w: an S3 access key needs its secret and the other way round (%s and %s, or their _FILE variants)", ErrInvalidConfig, EnvS3AccessKey, EnvS3SecretKey)
	}
	return nil
}

// location is how the repository is named in messages: no credentials.
func (s S3) location() string {
	return "s3://" + s.Endpoint + "/" + s.Bucket + "/" + s.Prefix
}

func (s S3) kopiaOptions() *s3.Options {
	return &s3.Options{
		BucketName: s.Bucket, Prefix: s.Prefix, Endpoint: s.Endpoint, Region: s.Region,
		DoNotUseTLS: s.DisableTLS, RootCA: s.RootCA,
		AccessKeyID: s.AccessKeyID, SecretAccessKey: s.SecretAccessKey,
	}
}

// checkBucket asks the endpoint whether the bucket exists, which also
// checks that it is reachable, speaks the expected protocol and accepts
// the credentials: each failure gets its own message instead of one from
// deep inside kopia.
func (s S3) checkBucket(ctx context.Context) error {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if len(s.RootCA) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(s.RootCA) {
			return fmt.Errorf("%w: the S3 CA file holds no PEM certificate (%s)", ErrInvalidConfig, EnvS3CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	cli, err := minio.New(s.Endpoint, &minio.Options{
		Creds: credentials.NewChainCredentials([]credentials.Provider{
			&credentials.Static{Value: credentials.Value{AccessKeyID: s.AccessKeyID, SecretAccessKey: s.SecretAccessKey, SignerType: credentials.SignatureV4}},
			&credentials.EnvAWS{},
			&credentials.IAM{Client: &http.Client{Transport: http.DefaultTransport}},
		}),
		Secure: !s.DisableTLS, Region: s.Region, Transport: tr, MaxRetries: 2,
	})
	if err != nil {
		return fmt.Errorf("%w: S3 endpoint %q: %v", ErrInvalidConfig, s.Endpoint, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ok, err := cli.BucketExists(ctx, s.Bucket)
	if err != nil {
		return explain(s.location(), err)
	}
	if !ok {
		return fmt.Errorf("%w: bucket %q does not exist at %s: create it (Tidemark creates the repository inside a bucket, not the bucket), or correct %s",
			ErrNoBucket, s.Bucket, s.Endpoint, EnvS3Bucket)
	}
	return nil
}

// The connection file kopia writes (in the cache directory) holds the
// storage's connection info, and the S3 one holds the secret key. So the
// S3 storage Tidemark hands to kopia names itself as a storage of type
// s3RefType instead, whose connection info is the same options without
// the secrets, plus a reference to the credentials kept in this process's
// memory for as long as the Repository is open. A stale connection file
// is useless: its reference dies with the process.
const s3RefType = "tidemark-s3"

type s3Ref struct {
	s3.Options
	Ref string `json:"tidemarkCredentialsRef"`
}

var s3Credentials sync.Map // ref -> S3

func init() {
	blob.AddSupportedStorage(s3RefType, s3Ref{}, func(ctx context.Context, o *s3Ref, create bool) (blob.Storage, error) {
		v, ok := s3Credentials.Load(o.Ref)
		if !ok {
			return nil, fmt.Errorf("%w: this connection's S3 credentials are gone (the repository was closed); open it again", ErrInvalidConfig)
		}
		return newS3Storage(ctx, v.(S3), o.Ref, create)
	})
}

// registerS3 keeps s's credentials in memory under a new reference, until
// the returned release is called.
func registerS3(s S3) (ref string, release func()) {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	ref = hex.EncodeToString(b)
	s3Credentials.Store(ref, s)
	return ref, func() { s3Credentials.Delete(ref) }
}

func newS3Storage(ctx context.Context, s S3, ref string, create bool) (blob.Storage, error) {
	st, err := s3.New(ctx, s.kopiaOptions(), create)
	if err != nil {
		return nil, explain(s.location(), err)
	}
	ro := *s.kopiaOptions()
	ro.SecretAccessKey, ro.SessionToken = "", ""
	return secretless{Storage: st, info: blob.ConnectionInfo{Type: s3RefType, Config: &s3Ref{Options: ro, Ref: ref}}}, nil
}

// secretless is a storage whose connection info keeps no secret.
type secretless struct {
	blob.Storage
	info blob.ConnectionInfo
}

func (s secretless) ConnectionInfo() blob.ConnectionInfo { return s.info }

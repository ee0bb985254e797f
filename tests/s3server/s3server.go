// Package s3server starts a real S3 server on loopback for tests: Versity's
// S3 gateway (versitygw) with its posix backend, a directory under
// t.TempDir(), built from the Go module proxy at a pinned version by
// tests/toolbuild and cached across test runs. Nothing is mocked: requests
// go over TCP to the real server, signed with real credentials.
//
// When versitygw cannot be built, the test is skipped with the reason,
// unless TIDEMARK_REQUIRE_DB is set (then it fails).
package s3server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/tidemark-dev/tidemark/tests/toolbuild"
)

// Versitygw is the pinned S3 server.
var Versitygw = toolbuild.Program{
	Name:    "versitygw",
	Module:  "github.com/versity/versitygw",
	Version: "v1.8.0",
	Package: "github.com/versity/versitygw/cmd/versitygw",
}

// startTimeout bounds one start of the server.
const startTimeout = 30 * time.Second

// Options configure a server.
type Options struct {
	// TLS serves HTTPS with a certificate for 127.0.0.1 signed by a CA
	// made for this server (Server.CAPEM).
	TLS bool
}

// Server is a running versitygw.
type Server struct {
	// Endpoint is host:port, without a scheme.
	Endpoint  string
	AccessKey string
	SecretKey string
	Region    string
	TLS       bool
	// CAPEM is the CA that signed the server's certificate (TLS only).
	CAPEM []byte
	// Root is the posix backend's directory: one subdirectory per bucket.
	Root string

	bin, dir, logPath string
	certFile, keyFile string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts versitygw on a free loopback port with random root
// credentials and returns when it answers. It is stopped in t.Cleanup.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bin := toolbuild.Binary(t, Versitygw)
	dir := t.TempDir()
	s := &Server{
		AccessKey: "tidemark" + randHex(6), SecretKey: randHex(20), Region: "us-east-1", TLS: opts.TLS,
		Root: filepath.Join(dir, "root"), bin: bin, dir: dir, logPath: filepath.Join(dir, "versitygw.log"),
	}
	if err := os.Mkdir(s.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	if opts.TLS {
		if err := s.makeCertificate(); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	for range 3 { // a free port may be taken before the server binds it
		if err = s.start(freePort(t)); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("s3server: %v\n%s", err, s.logTail())
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("s3server: versitygw log:\n%s", s.logTail())
		}
	})
	return s
}

// URL is the endpoint with its scheme.
func (s *Server) URL() string {
	if s.TLS {
		return "https://" + s.Endpoint
	}
	return "http://" + s.Endpoint
}

func (s *Server) start(port int) error {
	endpoint := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	args := []string{"--port", endpoint, "--region", s.Region, "--quiet"}
	if s.TLS {
		args = append(args, "--cert", s.certFile, "--key", s.keyFile)
	}
	args = append(args, "posix", s.Root)
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, args...)
	// The credentials go through the environment, not the command line
	// that anyone on the machine can read.
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+s.AccessKey, "ROOT_SECRET_ACCESS_KEY="+s.SecretKey)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting versitygw: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done, s.Endpoint = cmd, done, endpoint
	s.mu.Unlock()

	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("versitygw exited at start (%v)", cmd.ProcessState)
		default:
		}
		if s.answers() {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.Stop()
	return fmt.Errorf("versitygw did not answer on %s within %v", endpoint, startTimeout)
}

// answers reports whether the server answers an S3 request (any answer,
// even "access denied", means it is serving).
func (s *Server) answers() bool {
	client := &http.Client{Timeout: time.Second, Transport: s.transport()}
	resp, err := client.Get(s.URL() + "/")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}

func (s *Server) transport() *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if s.TLS {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(s.CAPEM)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return tr
}

// Client returns an S3 client with the server's root credentials.
func (s *Server) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := minio.New(s.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Secure: s.TLS, Region: s.Region, Transport: s.transport(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// CreateBucket creates a bucket through the S3 API.
func (s *Server) CreateBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Client(t).MakeBucket(ctx, name, minio.MakeBucketOptions{Region: s.Region}); err != nil {
		t.Fatalf("s3server: creating bucket %s: %v", name, err)
	}
}

// Stop stops the server (SIGTERM, then SIGKILL after 10 s) and waits for
// it. The data stays; Restart serves it again.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	killGroup(cmd, sigterm)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		killGroup(cmd, sigkill)
		<-done
	}
}

// Restart starts the stopped server again on the same port, root and
// credentials.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	_, port, _ := net.SplitHostPort(s.Endpoint)
	p, _ := strconv.Atoi(port)
	if err := s.start(p); err != nil {
		t.Fatalf("s3server: restarting: %v\n%s", err, s.logTail())
	}
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(s.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// makeCertificate writes a CA and a server certificate for 127.0.0.1
// signed by it.
func (s *Server) makeCertificate() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tidemark test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	s.CAPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	s.certFile, s.keyFile = filepath.Join(s.dir, "cert.pem"), filepath.Join(s.dir, "key.pem")
	var certPEM bytes.Buffer
	_ = pem.Encode(&certPEM, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(s.certFile, certPEM.Bytes(), 0o644); err != nil {
		return err
	}
	return os.WriteFile(s.keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// The layer tar is read twice by go-containerregistry (digest, then
// blob); a stream that changed between reads made every import fail.
func TestTarDirIsReproducible(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "etc", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc", "sub", "f"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "etc", "sub", "f"), filepath.Join(dir, "hard")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("etc/sub/f", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	var a, b bytes.Buffer
	if err := tarDir(dir, &a); err != nil {
		t.Fatal(err)
	}
	if err := tarDir(dir, &b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two tar streams of the same unchanged directory differ")
	}
}

func TestCertificatesChainToTheCA(t *testing.T) {
	c := &cluster{dir: t.TempDir(), hostIP: net.ParseIP("192.0.2.7").To4(), node: "node-a"}
	p, err := c.writePKI()
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(p.caCert)
	load := func(name string) *x509.Certificate {
		b, err := os.ReadFile(p.path(name, "crt"))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	for _, v := range []struct{ cert, host string }{
		{"apiserver", "192.0.2.7"}, {"apiserver", "10.96.0.1"}, {"apiserver", "kubernetes.default.svc.cluster.local"},
		{"kubelet", "192.0.2.7"}, {"kubelet", "node-a"},
	} {
		if _, err := load(v.cert).Verify(x509.VerifyOptions{DNSName: v.host, Roots: pool}); err != nil {
			t.Errorf("%s certificate for %s: %v", v.cert, v.host, err)
		}
	}
	if _, err := load("admin").Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("admin client certificate: %v", err)
	}

	// A second run keeps every certificate; a new host address reissues
	// the serving ones under the same CA.
	before := load("apiserver").SerialNumber
	if _, err := c.writePKI(); err != nil {
		t.Fatal(err)
	}
	if load("apiserver").SerialNumber.Cmp(before) != 0 {
		t.Error("an unchanged host got a new apiserver certificate")
	}
	c.hostIP = net.ParseIP("192.0.2.8").To4()
	if _, err := c.writePKI(); err != nil {
		t.Fatal(err)
	}
	if _, err := load("apiserver").Verify(x509.VerifyOptions{DNSName: "192.0.2.8", Roots: pool}); err != nil {
		t.Errorf("after the host's address changed: %v", err)
	}
}

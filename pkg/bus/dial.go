package bus

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// DialConfig says how to reach an external NATS cluster.
type DialConfig struct {
	// URL is one or more comma-separated server URLs (nats://, tls://).
	URL string
	// CredsFile is a NATS credentials file (JWT and NKey seed).
	CredsFile string
	// TLSCAFile, TLSCertFile and TLSKeyFile configure TLS; the certificate
	// and key come together.
	TLSCAFile   string
	TLSCertFile string
	TLSKeyFile  string
	// Name identifies the connection in the server's monitoring.
	Name string
}

// Validate reports the first setting that cannot work, by its flag name.
func (c DialConfig) Validate() error {
	if c.URL == "" {
		return errors.New("--nats-url is empty")
	}
	for _, u := range strings.Split(c.URL, ",") {
		p, err := url.Parse(strings.TrimSpace(u))
		if err != nil || p.Host == "" {
			return fmt.Errorf("--nats-url %q is not a URL such as nats://127.0.0.1:4222", u)
		}
		switch p.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return fmt.Errorf("--nats-url %q: scheme %q is not one of nats, tls, ws, wss", u, p.Scheme)
		}
	}
	for flag, path := range map[string]string{"--nats-creds": c.CredsFile, "--nats-tls-ca": c.TLSCAFile, "--nats-tls-cert": c.TLSCertFile, "--nats-tls-key": c.TLSKeyFile} {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("%s: %w", flag, err)
		}
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("--nats-tls-cert and --nats-tls-key go together; set both or neither")
	}
	return nil
}

// Dial connects to an external NATS cluster and keeps reconnecting for as
// long as the process runs.
func Dial(c DialConfig) (*nats.Conn, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	opts := []nats.Option{
		nats.Name(c.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.Timeout(10 * time.Second),
	}
	if c.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	if c.TLSCAFile != "" {
		opts = append(opts, nats.RootCAs(c.TLSCAFile))
	}
	if c.TLSCertFile != "" {
		opts = append(opts, nats.ClientCert(c.TLSCertFile, c.TLSKeyFile))
	}
	nc, err := nats.Connect(c.URL, opts...)
	if err != nil {
		// The URL may carry a user and password; report only its hosts.
		return nil, fmt.Errorf("connecting to NATS at %s: %w", redactURL(c.URL), err)
	}
	return nc, nil
}

// redactURL drops user information from a comma-separated URL list so a
// password never reaches a log or an error.
func redactURL(list string) string {
	parts := strings.Split(list, ",")
	for i, u := range parts {
		if p, err := url.Parse(strings.TrimSpace(u)); err == nil && p.User != nil {
			p.User = url.User("REDACTED")
			parts[i] = p.String()
		}
	}
	return strings.Join(parts, ",")
}

// Package application describes an application Tidemark protects on the
// local platform: its blueprint, its volumes and the connections its steps
// use. Passwords are referenced, never written inline, and never leave the
// process that resolves them.
package application

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/yaml"
)

// APIVersion and Kind of an application file.
const (
	APIVersion = "tidemark.io/v1alpha1"
	Kind       = "Application"
)

// Drivers a connection may use.
const (
	DriverMySQL    = "mysql"
	DriverPostgres = "postgres"
	DriverMongoDB  = "mongodb"
)

// Application is one `kind: Application` document.
type Application struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   Metadata `json:"metadata"`
	Spec       Spec     `json:"spec"`
}

// Metadata names the application.
type Metadata struct {
	Name string `json:"name"`
}

// Spec is what Tidemark needs to protect the application.
type Spec struct {
	Blueprint string `json:"blueprint"`
	// Volumes maps volume names to directories.
	Volumes map[string]string `json:"volumes,omitempty"`
	// Connections are the database sessions the blueprint's sql steps use.
	Connections map[string]Connection `json:"connections,omitempty"`
	// Secrets are the values of the blueprint's declared secrets
	// (.Secrets.<name>), each referenced from env or a file. The hookrunner
	// fills them in on this side; they never travel in events.
	Secrets map[string]SecretRef `json:"secrets,omitempty"`
	// Params override the blueprint's parameters (.Params.<name>).
	Params map[string]string `json:"params,omitempty"`
}

// Connection is how to reach a database. DSN carries no password.
type Connection struct {
	Driver       string     `json:"driver"`
	DSN          string     `json:"dsn"`
	PasswordFrom *SecretRef `json:"passwordFrom,omitempty"`
}

// SecretRef points at a secret held outside Tidemark's files and events.
type SecretRef struct {
	Env  string `json:"env,omitempty"`
	File string `json:"file,omitempty"`
}

// ErrNotFound is returned for an application no file defines.
var ErrNotFound = errors.New("application not found")

// Parse reads and validates one application document.
func Parse(name string, data []byte) (*Application, error) {
	var a Application
	if err := yaml.UnmarshalStrict(data, &a); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := a.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &a, nil
}

var mysqlInlinePassword = regexp.MustCompile(`^[^@/]*:[^@]*@`)

// Validate reports every problem, each naming its field and the fix.
func (a *Application) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if a.APIVersion != APIVersion {
		add("apiVersion %q: want %s", a.APIVersion, APIVersion)
	}
	if a.Kind != Kind {
		add("kind %q: want %s", a.Kind, Kind)
	}
	if a.Metadata.Name == "" {
		add("metadata.name is empty: name the application, such as shop/postgres")
	}
	if a.Spec.Blueprint == "" {
		add("spec.blueprint is empty: name the blueprint that makes this application consistent")
	}
	for name, dir := range a.Spec.Volumes {
		if !filepath.IsAbs(dir) {
			add("spec.volumes.%s: %q must be an absolute directory", name, dir)
		}
	}
	names := make([]string, 0, len(a.Spec.Connections))
	for n := range a.Spec.Connections {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c := a.Spec.Connections[n]
		field := "spec.connections." + n
		switch c.Driver {
		case DriverMySQL, DriverPostgres, DriverMongoDB:
		default:
			add("%s.driver %q: want mysql, postgres or mongodb", field, c.Driver)
		}
		if c.DSN == "" {
			add("%s.dsn is empty", field)
		}
		if hasInlinePassword(c) {
			add("%s.dsn holds a password: remove it and set %s.passwordFrom (env or file) instead", field, field)
		}
		if c.PasswordFrom != nil && (c.PasswordFrom.Env == "") == (c.PasswordFrom.File == "") {
			add("%s.passwordFrom: set exactly one of env and file", field)
		}
	}
	secretNames := make([]string, 0, len(a.Spec.Secrets))
	for n := range a.Spec.Secrets {
		secretNames = append(secretNames, n)
	}
	sort.Strings(secretNames)
	for _, n := range secretNames {
		r := a.Spec.Secrets[n]
		if (r.Env == "") == (r.File == "") {
			add("spec.secrets.%s: set exactly one of env and file", n)
		}
	}
	return errors.Join(errs...)
}

// Secret reads the value of a declared secret.
func (a *Application) Secret(name string) (string, error) {
	r, ok := a.Spec.Secrets[name]
	if !ok {
		return "", fmt.Errorf("application %s declares no secret %q (add spec.secrets.%s with env or file)", a.Metadata.Name, name, name)
	}
	return r.read()
}

func (r SecretRef) read() (string, error) {
	if r.Env != "" {
		v, ok := os.LookupEnv(r.Env)
		if !ok {
			return "", fmt.Errorf("variable %s is not set", r.Env)
		}
		return v, nil
	}
	b, err := os.ReadFile(r.File)
	if err != nil {
		// The path is not secret; its content is, and it is not in this error.
		return "", fmt.Errorf("secret file: %w", err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

func hasInlinePassword(c Connection) bool {
	if u, err := url.Parse(c.DSN); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			return true
		}
	}
	return c.Driver == DriverMySQL && mysqlInlinePassword.MatchString(c.DSN)
}

// Password reads the connection's password; empty when none is referenced.
func (c Connection) Password() (string, error) {
	if c.PasswordFrom == nil {
		return "", nil
	}
	v, err := c.PasswordFrom.read()
	if err != nil {
		return "", fmt.Errorf("password: %w", err)
	}
	return v, nil
}

// DSN returns the data source name with the password filled in. The result
// is a secret: pass it to a driver, never to a log or an event.
func (c Connection) ResolvedDSN() (string, error) {
	pw, err := c.Password()
	if err != nil || pw == "" {
		return c.DSN, err
	}
	switch c.Driver {
	case DriverMySQL:
		user, rest, ok := strings.Cut(c.DSN, "@")
		if !ok {
			return "", errors.New("mysql dsn has no user@ part to attach the password to")
		}
		return user + ":" + pw + "@" + rest, nil
	default:
		u, err := url.Parse(c.DSN)
		if err != nil || u.User == nil {
			return "", errors.New("dsn has no user to attach the password to (want scheme://user@host/db)")
		}
		u.User = url.UserPassword(u.User.Username(), pw)
		return u.String(), nil
	}
}

// Source finds applications by name.
type Source interface {
	Application(name string) (*Application, error)
}

// Dir is a directory of application files (*.yaml, *.yml). Each lookup
// looks at the directory again, so edits apply without a restart; a file is
// parsed again only when its size or modification time changed, so a
// directory of thousands of applications stays cheap to search. Other
// documents (blueprints) may share the directory.
type Dir string

type parsedFile struct {
	mod  time.Time
	size int64
	app  *Application // nil when the file is not an Application
	err  error
}

var parsed sync.Map // path -> parsedFile

func parseCached(path string, info fs.FileInfo) parsedFile {
	if v, ok := parsed.Load(path); ok {
		pf := v.(parsedFile)
		if pf.mod.Equal(info.ModTime()) && pf.size == info.Size() {
			return pf
		}
	}
	pf := parsedFile{mod: info.ModTime(), size: info.Size()}
	data, err := os.ReadFile(path)
	if err != nil {
		pf.err = err
		return pf
	}
	var head struct {
		Kind string `json:"kind"`
	}
	if yaml.Unmarshal(data, &head) == nil && head.Kind != "" && head.Kind != Kind {
		parsed.Store(path, pf)
		return pf
	}
	pf.app, pf.err = Parse(path, data)
	parsed.Store(path, pf)
	return pf
}

// located remembers which file defined an application, so a lookup checks
// one file instead of the whole directory while that file still says so.
var located sync.Map // dir + "\x00" + name -> path

// Application implements Source.
func (d Dir) Application(name string) (*Application, error) {
	key := string(d) + "\x00" + name
	if v, ok := located.Load(key); ok {
		path := v.(string)
		if info, err := os.Stat(path); err == nil {
			if pf := parseCached(path, info); pf.err == nil && pf.app != nil && pf.app.Metadata.Name == name {
				a := *pf.app
				return &a, nil
			}
		}
		located.Delete(key)
	}
	entries, err := os.ReadDir(string(d))
	if err != nil {
		return nil, fmt.Errorf("%w: %q (reading %s: %v)", ErrNotFound, name, d, err)
	}
	var broken []error
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || !(strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		path := filepath.Join(string(d), n)
		pf := parseCached(path, info)
		if pf.err != nil {
			broken = append(broken, pf.err)
			continue
		}
		if pf.app != nil {
			located.Store(string(d)+"\x00"+pf.app.Metadata.Name, path)
		}
		if pf.app != nil && pf.app.Metadata.Name == name {
			a := *pf.app
			return &a, nil
		}
	}
	if len(broken) > 0 {
		return nil, fmt.Errorf("%w: %q (no valid file in %s names it; these files are invalid: %w)", ErrNotFound, name, d, errors.Join(broken...))
	}
	return nil, fmt.Errorf("%w: %q (no file in %s names it)", ErrNotFound, name, d)
}

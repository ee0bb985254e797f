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
	// Resolved is set by a platform that finds the application itself
	// (Kubernetes); never read from a file.
	Resolved *Resolved `json:"-"`
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

// SecretRef points at a secret held outside Tidemark's files and events:
// an environment variable or a file of the process that reads it, or, on
// Kubernetes, a key of a Secret in the application's namespace.
type SecretRef struct {
	Env          string        `json:"env,omitempty"`
	File         string        `json:"file,omitempty"`
	SecretKeyRef *SecretKeyRef `json:"secretKeyRef,omitempty"`

	// fetch reads a SecretKeyRef; set by the platform that found the
	// application (ReadSecretsWith).
	fetch func(SecretKeyRef) (string, error)
}

// SecretKeyRef names a key of a Kubernetes Secret, as a pod's
// env[].valueFrom.secretKeyRef does.
type SecretKeyRef struct {
	Name string `json:"name"`
	Key  string `json:"key"`
}

// ReadSecretsWith makes the application's secretKeyRef references
// readable through fetch (the Kubernetes platform reads Secrets).
func (a *Application) ReadSecretsWith(fetch func(SecretKeyRef) (string, error)) {
	for n, c := range a.Spec.Connections {
		if c.PasswordFrom != nil {
			r := *c.PasswordFrom
			r.fetch = fetch
			c.PasswordFrom = &r
			a.Spec.Connections[n] = c
		}
	}
	for n, r := range a.Spec.Secrets {
		r.fetch = fetch
		a.Spec.Secrets[n] = r
	}
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
	errs = append(errs, ValidateConnections("spec.connections", a.Spec.Connections, "spec.secrets", a.Spec.Secrets)...)
	return errors.Join(errs...)
}

// ValidateConnections reports every problem of connections and secrets
// declared under the fields named (an Application file's spec.connections,
// or a Kubernetes annotation), each naming its field and the fix.
func ValidateConnections(connField string, conns map[string]Connection, secretField string, secrets map[string]SecretRef) []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	names := make([]string, 0, len(conns))
	for n := range conns {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c := conns[n]
		field := connField + "." + n
		switch c.Driver {
		case DriverMySQL, DriverPostgres, DriverMongoDB:
		default:
			add("%s.driver %q: want mysql, postgres or mongodb", field, c.Driver)
		}
		if c.DSN == "" {
			add("%s.dsn is empty", field)
		}
		if hasInlinePassword(c) {
			add("%s.dsn holds a password: remove it and set %s.passwordFrom (env, file or secretKeyRef) instead", field, field)
		}
		if c.PasswordFrom != nil {
			if err := c.PasswordFrom.validate(field + ".passwordFrom"); err != nil {
				errs = append(errs, err)
			}
		}
	}
	secretNames := make([]string, 0, len(secrets))
	for n := range secrets {
		secretNames = append(secretNames, n)
	}
	sort.Strings(secretNames)
	for _, n := range secretNames {
		if err := secrets[n].validate(secretField + "." + n); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func (r SecretRef) validate(field string) error {
	set := 0
	for _, ok := range []bool{r.Env != "", r.File != "", r.SecretKeyRef != nil} {
		if ok {
			set++
		}
	}
	if set != 1 {
		return fmt.Errorf("%s: set exactly one of env, file and secretKeyRef (secretKeyRef on Kubernetes only)", field)
	}
	if k := r.SecretKeyRef; k != nil && (k.Name == "" || k.Key == "") {
		return fmt.Errorf("%s.secretKeyRef: set both name (a Secret in the application's namespace) and key", field)
	}
	return nil
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
	if k := r.SecretKeyRef; k != nil {
		if r.fetch == nil {
			return "", fmt.Errorf("secretKeyRef %s[%s] is read only on Kubernetes (serve --platform kube); on the local platform use env or file", k.Name, k.Key)
		}
		return r.fetch(*k)
	}
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

var scanning sync.Map // dir -> *sync.Mutex

// Warm parses every application file of the directory ahead of the first
// lookup, so a service that starts with thousands of applications pays for
// that once at start rather than in its first requests. It returns how many
// applications it found and the files that are not valid.
func (d Dir) Warm() (int, error) {
	unlock := d.lockScan()
	defer unlock()
	n, broken, err := d.scan()
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return n, errors.Join(broken...)
}

// lockScan makes scans of d one at a time: a burst of requests for names
// not yet located (a coordinator's first minute) would otherwise parse the
// whole directory once per request.
func (d Dir) lockScan() (unlock func()) {
	mu, _ := scanning.LoadOrStore(string(d), &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	return mu.(*sync.Mutex).Unlock
}

// scan parses every application file of d (again only where it changed)
// and records where each application is defined. It returns how many
// applications there are and the files that are not valid.
func (d Dir) scan() (int, []error, error) {
	entries, err := os.ReadDir(string(d))
	if err != nil {
		return 0, nil, err
	}
	n := 0
	var broken []error
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !(strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		path := filepath.Join(string(d), name)
		switch pf := parseCached(path, info); {
		case pf.err != nil:
			broken = append(broken, pf.err)
		case pf.app != nil:
			located.Store(string(d)+"\x00"+pf.app.Metadata.Name, path)
			n++
		}
	}
	return n, broken, nil
}

// lookup returns the application name where the directory was last seen to
// define it, if that file still does.
func (d Dir) lookup(name string) (*Application, bool) {
	v, ok := located.Load(string(d) + "\x00" + name)
	if !ok {
		return nil, false
	}
	info, err := os.Stat(v.(string))
	if err != nil {
		return nil, false
	}
	pf := parseCached(v.(string), info)
	if pf.err != nil || pf.app == nil || pf.app.Metadata.Name != name {
		return nil, false
	}
	a := *pf.app
	return &a, true
}

// Application implements Source.
func (d Dir) Application(name string) (*Application, error) {
	if a, ok := d.lookup(name); ok {
		return a, nil
	}
	unlock := d.lockScan()
	defer unlock()
	if a, ok := d.lookup(name); ok {
		return a, nil // another request's scan found it meanwhile
	}
	located.Delete(string(d) + "\x00" + name)
	_, broken, err := d.scan()
	if err != nil {
		return nil, fmt.Errorf("%w: %q (reading %s: %v)", ErrNotFound, name, d, err)
	}
	if a, ok := d.lookup(name); ok {
		return a, nil
	}
	if len(broken) > 0 {
		return nil, fmt.Errorf("%w: %q (no valid file in %s names it; these files are invalid: %w)", ErrNotFound, name, d, errors.Join(broken...))
	}
	return nil, fmt.Errorf("%w: %q (no file in %s names it)", ErrNotFound, name, d)
}

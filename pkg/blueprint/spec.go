package blueprint

import "github.com/tidemark-dev/tidemark/events"

// Step kinds. The registry in kinds.go is open: the Kubernetes platform adds
// scale and apply.
const (
	KindExec     = "exec"
	KindSQL      = "sql"
	KindHTTP     = "http"
	KindWait     = "wait"
	KindSnapshot = "snapshot"
	KindDump     = "dump"
)

// The *Spec types below are the rendered, kind-specific arguments of a step:
// what travels in events.HookRequested.Spec (as JSON) from the coordinator
// to the hookrunner. Every string in them has already been rendered from
// the blueprint's templates; the hookrunner never renders anything.

// ExecSpec runs one command, an argv array: nothing goes through a shell
// unless the blueprint itself says ["sh", "-c", "..."].
type ExecSpec struct {
	// Target selects where the command runs: ignored on the local platform
	// (the application's host), a pod name on Kubernetes.
	Target    string            `json:"target,omitempty"`
	Container string            `json:"container,omitempty"`
	Command   []string          `json:"command"`
	Env       map[string]string `json:"env,omitempty"`
	WorkDir   string            `json:"workDir,omitempty"`
}

// SQLSpec runs statements on one of the application's named connections.
// Connection details and passwords never travel in events: the hookrunner
// resolves Connection from the Application definition on its own side.
type SQLSpec struct {
	Connection string   `json:"connection"`
	Statements []string `json:"statements"`
	// Hold keeps the session open after Statements, holding whatever they
	// took (FLUSH TABLES WITH READ LOCK, pg_backup_start), until a release
	// command (or the dead man's switch) runs Release on the same session.
	Hold    bool     `json:"hold,omitempty"`
	Release []string `json:"release,omitempty"`
}

// HTTPSpec calls a URL, checks the status and captures JSON fields.
type HTTPSpec struct {
	Method       string            `json:"method,omitempty"`
	URL          string            `json:"url"`
	Headers      map[string]string `json:"headers,omitempty"`
	Body         string            `json:"body,omitempty"`
	ExpectStatus []int             `json:"expectStatus,omitempty"`
	// Capture maps output names to JSON pointers into the response body
	// ("/snapshot/state").
	Capture map[string]string `json:"capture,omitempty"`
}

// WaitSpec polls one condition until it holds or the step's timeout passes.
// Exactly one of HTTP, SQL and Exec is set.
type WaitSpec struct {
	Interval events.Duration `json:"interval,omitempty"`
	HTTP     *HTTPSpec       `json:"http,omitempty"`
	SQL      *SQLQuerySpec   `json:"sql,omitempty"`
	Exec     *ExecSpec       `json:"exec,omitempty"`
}

// SQLQuerySpec is a query whose first column of the first row must equal
// Expect for a wait to be over.
type SQLQuerySpec struct {
	Connection string `json:"connection"`
	Query      string `json:"query"`
	Expect     string `json:"expect"`
}

// DumpSpec is a command whose stdout is a logical backup stream handed to
// the datamover as the artifact Artifact.
// SnapshotSpec is the snapshot step's, in a restore: edits made in the
// restored volumes once their files are in and verified, before any
// later step — what must be written into a volume before its application
// starts when no pod of it runs yet to exec into (on Kubernetes the
// workload is stopped while its volumes are filled), such as PostgreSQL's
// backup label and WAL. A backup's snapshot step takes none.
type SnapshotSpec struct {
	Edits []VolumeEditSpec `json:"edits,omitempty"`
}

// VolumeEditSpec is one volume's edits (events.VolumeEdits, with
// artifacts by name).
type VolumeEditSpec struct {
	// Volume names the restored volume (on Kubernetes its PVC).
	Volume string `json:"volume"`
	// Dir, relative to the volume's root, is where the edits apply.
	Dir    string            `json:"dir,omitempty"`
	Remove []string          `json:"remove,omitempty"`
	Files  map[string]string `json:"files,omitempty"`
	// Extract unpacks tar artifacts of the restore point (by artifact
	// name, such as pg_wal.tar) into directories relative to Dir.
	Extract []ExtractSpec `json:"extract,omitempty"`
}

// ExtractSpec is one tar artifact unpacked into a volume.
type ExtractSpec struct {
	Artifact string `json:"artifact"`
	Into     string `json:"into"`
}

type DumpSpec struct {
	ExecSpec
	Artifact string `json:"artifact"`
	// FromArtifact feeds the stored artifact to the command's stdin (a
	// logical restore) instead of storing the command's stdout (a backup).
	// The coordinator sets it for the dump steps of restore actions.
	FromArtifact bool `json:"fromArtifact,omitempty"`
}

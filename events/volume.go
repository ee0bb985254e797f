package events

import "time"

func init() {
	register[VolumeExportRequested](Command, "Asks a data mover to copy one snapshot or dump stream into the repository.")
	register[VolumeExportProgress](Fact, "Bytes and files exported so far, about once a second.")
	register[VolumeExported](Fact, "A volume or dump is in the repository.")
	register[VolumeExportFailed](Fact, "Exporting a volume failed.")
	register[VolumeImportRequested](Command, "Asks a data mover to copy one artifact from the repository back to a volume or command.")
	register[VolumeImportProgress](Fact, "Bytes and files imported so far, about once a second.")
	register[VolumeImported](Fact, "A volume or dump was restored from the repository.")
	register[VolumeImportFailed](Fact, "Importing a volume failed.")
}

// VolumeExportRequested is one work item for a data mover.
type VolumeExportRequested struct {
	RunID       RunID  `json:"runId"`
	Application string `json:"application"`
	Volume      string `json:"volume"`
	// SourceKind is "snapshot" (SnapshotID is set) or "dump" (DumpStep is set).
	SourceKind     string     `json:"sourceKind"`
	SnapshotID     SnapshotID `json:"snapshotId,omitempty"`
	DumpStep       string     `json:"dumpStep,omitempty"`
	Repository     string     `json:"repository"`
	IdempotencyKey string     `json:"idempotencyKey"`
}

// EventType implements Payload.
func (VolumeExportRequested) EventType() Type { return "io.tidemark.volume.export.requested.v1" }

// TransferProgress is shared by export and import progress.
type TransferProgress struct {
	RunID      RunID  `json:"runId"`
	Volume     string `json:"volume"`
	BytesDone  int64  `json:"bytesDone"`
	BytesTotal int64  `json:"bytesTotal"`
	FilesDone  int64  `json:"filesDone"`
	FilesTotal int64  `json:"filesTotal"`
}

// VolumeExportProgress reports export progress.
type VolumeExportProgress TransferProgress

// EventType implements Payload.
func (VolumeExportProgress) EventType() Type { return "io.tidemark.volume.export.progress.v1" }

// VolumeExported reports a volume stored in the repository.
type VolumeExported struct {
	RunID  RunID  `json:"runId"`
	Volume string `json:"volume"`
	// SourceKind echoes the request: "snapshot" or "dump".
	SourceKind string     `json:"sourceKind,omitempty"`
	ManifestID ManifestID `json:"manifestId"`
	Files      int64      `json:"files"`
	Bytes      int64      `json:"bytes"`
	// BytesUploaded is what was new after deduplication.
	BytesUploaded int64     `json:"bytesUploaded"`
	StartedAt     time.Time `json:"startedAt"`
	FinishedAt    time.Time `json:"finishedAt"`
}

// EventType implements Payload.
func (VolumeExported) EventType() Type { return "io.tidemark.volume.exported.v1" }

// TransferFailed is shared by export and import failures.
type TransferFailed struct {
	RunID     RunID  `json:"runId"`
	Volume    string `json:"volume"`
	Error     string `json:"error"`
	Permanent bool   `json:"permanent"`
}

// VolumeExportFailed reports a failed export.
type VolumeExportFailed TransferFailed

// EventType implements Payload.
func (VolumeExportFailed) EventType() Type { return "io.tidemark.volume.export.failed.v1" }

// VolumeImportRequested is one restore work item for a data mover.
type VolumeImportRequested struct {
	RunID      RunID      `json:"runId"`
	Volume     string     `json:"volume"`
	ManifestID ManifestID `json:"manifestId"`
	Repository string     `json:"repository"`
	// TargetKind is "directory" (Target is a path or PVC), "replace"
	// (Target is an existing directory whose contents are replaced: staged
	// beside it, verified, swapped in; the previous contents are kept
	// beside it) or "stream" (Target names the hook step whose stdin
	// receives the data).
	TargetKind string `json:"targetKind"`
	Target     string `json:"target"`
	// Check only opens the repository and the snapshot, writing nothing:
	// a restore's pre-flight, so a wrong password or a deleted snapshot
	// fails the restore before any of its steps changes anything.
	Check bool `json:"check,omitempty"`
	// ReadBy, for a stream, is when its reader stops reading (the
	// coordinator reading a restore's objects waits a bounded time): a data
	// mover that takes the request later moves nothing, and one that takes
	// it earlier gives up then, instead of waiting for a reader that is gone.
	ReadBy *time.Time `json:"readBy,omitempty"`
	// Edits, for a directory or replace import, change the volume once its
	// files are restored and verified, before any later restore step.
	Edits          *VolumeEdits `json:"edits,omitempty"`
	IdempotencyKey string       `json:"idempotencyKey"`
}

// VolumeEdits are changes made to a restored volume before its
// application starts: what a blueprint must write into a volume when no
// pod of the application runs yet to exec into (on Kubernetes the
// workload is stopped while its volumes are filled), such as PostgreSQL's
// backup label and the WAL segments the backup needs.
type VolumeEdits struct {
	// Dir is the directory the edits apply in, relative to the volume's
	// root ("" is the root). It must exist.
	Dir string `json:"dir,omitempty"`
	// Remove are glob patterns (path.Match syntax, one path element each
	// side of a /), relative to Dir, of files to remove; none matching is
	// fine.
	Remove []string `json:"remove,omitempty"`
	// Files are written (replaced), relative to Dir, mode 0600, owned like
	// Dir.
	Files map[string]string `json:"files,omitempty"`
	// Extract unpacks tar streams of the restore point (dump artifacts)
	// into directories relative to Dir, owned like Dir.
	Extract []TarExtract `json:"extract,omitempty"`
}

// TarExtract is one tar artifact unpacked into a volume.
type TarExtract struct {
	ManifestID ManifestID `json:"manifestId"`
	Into       string     `json:"into"`
}

// EventType implements Payload.
func (VolumeImportRequested) EventType() Type { return "io.tidemark.volume.import.requested.v1" }

// VolumeImportProgress reports import progress.
type VolumeImportProgress TransferProgress

// EventType implements Payload.
func (VolumeImportProgress) EventType() Type { return "io.tidemark.volume.import.progress.v1" }

// VolumeImported reports a restored volume.
type VolumeImported struct {
	RunID      RunID      `json:"runId"`
	Volume     string     `json:"volume"`
	ManifestID ManifestID `json:"manifestId"`
	Files      int64      `json:"files"`
	Bytes      int64      `json:"bytes"`
	StartedAt  time.Time  `json:"startedAt"`
	FinishedAt time.Time  `json:"finishedAt"`
	// Previous is where a replaced directory's previous contents were kept
	// (targetKind replace).
	Previous string `json:"previous,omitempty"`
	// Checked: the request was a check; the snapshot was opened, nothing
	// was written, and Files and Bytes are what it holds.
	Checked bool `json:"checked,omitempty"`
}

// EventType implements Payload.
func (VolumeImported) EventType() Type { return "io.tidemark.volume.imported.v1" }

// VolumeImportFailed reports a failed import.
type VolumeImportFailed TransferFailed

// EventType implements Payload.
func (VolumeImportFailed) EventType() Type { return "io.tidemark.volume.import.failed.v1" }

package blueprint

import "time"

// TemplateContext is what a blueprint's templates see ("." in a template).
// It is documented for blueprint authors in blueprints/README.md; Lint
// checks every field reference against this type, so a field added here is
// usable in blueprints at once.
type TemplateContext struct {
	// App is the application being backed up or restored.
	App App
	// Namespace is the application's namespace (same as App.Namespace).
	Namespace string
	// Targets are where exec steps can run: pod names on Kubernetes, the
	// host on the local platform.
	Targets []string
	// StatefulSet is the application's StatefulSet, nil when it has none.
	StatefulSet *Workload
	// Deployment is the application's Deployment, nil when it has none.
	Deployment *Workload
	// Object is the workload object the blueprint is bound to (the one
	// annotated tidemark.io/blueprint), as unstructured JSON:
	// .Object.spec.serviceName.
	Object map[string]any
	// Steps holds the results of the steps of this action that already
	// ran, by step name: .Steps.lock.Output.labelfile.
	Steps map[string]StepResult
	// Backup is what the backup being restored (or deleted) recorded; nil
	// during a backup: .Backup.Steps.lock.Output.labelfile.
	Backup *BackupRecord
	// Restore says where a restore goes; nil during a backup or delete:
	// {{ if eq .Restore.Mode "production" }}.
	Restore *RestoreInfo
	// Secrets holds, for each secret the blueprint declares in spec.secrets,
	// a placeholder (SecretPlaceholders): .Secrets.password, or
	// index .Secrets "db-pass" for names that are not identifiers. The
	// hookrunner replaces placeholders with the values from the
	// Application's spec.secrets just before it runs the step, so secret
	// values never travel in events. Insert a secret on its own; lint
	// refuses functions applied to one.
	Secrets map[string]string
	// Params holds the blueprint's parameters (spec.params, overridden by
	// the Application definition), by name: .Params.database.
	Params map[string]string
	// Time is when the run started; the same for every step of a run, so a
	// label rendered twice is the same label: .Time.Unix, .Time.Format "2006-01-02".
	Time time.Time
}

// App describes the application a blueprint runs against.
type App struct {
	Name      string
	Namespace string
	// Volumes maps the application's volume names to where they are: a
	// directory on the local platform, a PersistentVolumeClaim on Kubernetes.
	Volumes map[string]string
}

// Workload is a StatefulSet or Deployment and what it consists of. Lists
// are in ordinal order for a StatefulSet (pod-0 first).
type Workload struct {
	Name                   string
	Namespace              string
	Pods                   []string
	Containers             []string
	PersistentVolumeClaims []string
}

// StepResult is what a step that ran left for later steps.
type StepResult struct {
	// Output holds the step's outputs by name.
	Output map[string]string
}

// RestoreInfo describes the restore a restore action is running for.
type RestoreInfo struct {
	// Mode is "new" (a copy beside the original, which must not be
	// touched) or "production" (the original, overwritten in place: stop
	// the application before the snapshot step, start it after).
	Mode string
	// Target is where a restore to new goes (a directory, a namespace);
	// empty for production.
	Target string
}

// BackupRecord is what a backup run recorded with its restore point, as
// restore and delete actions see it.
type BackupRecord struct {
	// Steps are the backup action's step results, by step name.
	Steps map[string]StepResult
	// Time is when the backup run started (its .Time).
	Time time.Time
}

// Package blueprint is Tidemark's blueprint language: how one kind of
// application is made consistent for a backup, and brought back by a
// restore.
//
// A blueprint is a YAML file (apiVersion tidemark.io/v1alpha1, kind
// Blueprint) with actions backup, restore and optionally delete, each an
// ordered list of steps. A step has a name, a kind (exec, sql, http, wait,
// snapshot, dump, and whatever platforms Register), a block named after its
// kind holding the kind's arguments as templates, and optionally inverse,
// noInverse, onError, timeout, retry, when and outputs. The authors' guide
// and reference is blueprints/README.md in the repository.
//
// The life of a blueprint:
//
//   - Parse reads a file, checking it against the Go types it decodes
//     into: syntax, unknown fields, values of the wrong type, durations
//     without a unit ("60" is refused, "60s" is meant), unknown kinds. Every
//     problem comes back at once as Diagnostics with file:line:column.
//   - Lint checks what it means without running anything: every template is
//     parsed and each field reference followed through TemplateContext; a
//     reference to an output must name an output its step promises, of a
//     step that is sure to have run; steps of backup before the snapshot
//     step quiesce the application and need an inverse (or noInverse with a
//     reason); template output must not become shell syntax.
//   - Step.Render renders a step just before it runs, with
//     missingkey=error, into the kind's spec type from spec.go: what
//     travels to the hookrunner. Template output is always data; an argv
//     element stays one element whatever it contains.
//
// # Template context
//
// Templates are Go text/template over TemplateContext:
//
//	.App.Name, .App.Namespace, .App.Volumes.<name>   the application
//	.Namespace                                      its namespace
//	.Targets                                        where exec steps can run (pod names)
//	.StatefulSet / .Deployment                      *Workload: .Name .Namespace .Pods .Containers .PersistentVolumeClaims
//	.Object.<field>...                              the annotated workload object, unstructured
//	.Steps.<step>.Output.<key>                      outputs of earlier steps of this action
//	.Backup.Steps.<step>.Output.<key>, .Backup.Time what the backup being restored recorded
//	.Secrets.<name>                                 secrets declared in spec.secrets (placeholders, filled in by the hookrunner)
//	.Params.<name>                                  parameters declared in spec.params
//	.Time                                           when the run started (time.Time)
//
// Besides text/template's builtins, templates may call join (strings.Join).
// index is replaced by a strict one that fails on a missing map key, like
// field access does under missingkey=error: index .Secrets "db-pass".
//
// # Outputs
//
// A step lists the outputs it promises in outputs. They come from the
// columns of the first row of an sql step's last statement (of its release,
// for a held session: pg_backup_stop's labelfile, spcmapfile), from an http
// step's capture keys (promised implicitly), and from key=value lines an
// exec step prints on stdout (a dump step, whose stdout is the backup
// stream, prints them on stderr). The outputs of a held sql step are
// known only after its release, that is after the snapshot step.
package blueprint

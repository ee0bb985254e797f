package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tidemark-dev/tidemark/events"
)

func newRestoreCommand() *cobra.Command {
	var (
		nopts   natsOptions
		to      string
		target  string
		only    []string
		params  map[string]string
		wait    bool
		force   bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "restore POINT_ID --to new|production [--target DIR|NAMESPACE] [--param k=v] [--only NAME,...] [--wait]",
		Short: "Restore a restore point",
		Long: `Restore a restore point. On the local platform a restore to new writes each
volume of the point into DIR/<volume> (DIR must be absent or empty), then runs
the restore steps of the blueprint the backup used, with what the backup
recorded (a backup label, positions). Each restored volume is checked against
what the backup stored (every file's size and content); a mismatch fails the
restore, naming the files.

On Kubernetes (tidemark serve --platform kube) --target is a namespace: the
objects the backup captured with the application (its StatefulSet or
Deployment, PVCs, ConfigMaps, ...) are created there, its workloads stopped;
each volume is imported into the PVC of the same name there by a mover pod;
the workloads are started at the replica count they had; then the
blueprint's restore steps run on that copy (.Namespace and .Restore.Target
are the namespace; the run and its events name the copy, such as
shop-restored/db). The namespace is created if missing; one that holds
objects of the same names is refused unless --force, which updates them and
replaces their volumes' contents.

A logical dump is loaded where the blueprint's restore steps say, by its
parameters: --param database=shop_copy loads a PostgreSQL dump into another
database (which must exist). A point with only dumps needs no --target.

A restore to production (--to production, no --target) overwrites the
application in place: the blueprint's restore steps stop it first (if
anything fails from then on, the stop's inverse starts it again), each volume
is restored beside its directory, verified, and swapped in, and the
application is started again. The previous contents of each directory are
kept beside it (<dir>.tidemark-previous-<run>; on Kubernetes, inside each PVC,
in .tidemark-previous-<run>) until you delete them. Nothing
else may run against the application meanwhile: a running backup makes the
restore refused, and the restore makes backups refused.

--only restores just the named volumes and dumps. Bad requests (an unknown
point, a non-empty target without --force, an unknown name) are refused
before anything is written.

With --wait, follow the restore to its end with progress, and exit 1 if it
fails.`,
		Example: `  tidemark restore 01JD3Z6X8K2M4N6P8Q0R2S4T6V --to new --target /srv/restore/shop --wait
  tidemark restore 01JD3Z6X8K2M4N6P8Q0R2S4T6V --to new --target shop-restored --wait   # Kubernetes
  tidemark restore 01JD3Z6X8K2M4N6P8Q0R2S4T6V --to new --target /srv/restore/logs --only logs
  tidemark restore 01JD3Z6X8K2M4N6P8Q0R2S4T6V --to new --param database=shop_copy --wait
  tidemark restore 01JD3Z6X8K2M4N6P8Q0R2S4T6V --to production --wait`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch to {
			case "new":
				// A path is made absolute here, where it was typed; a bare
				// name is a namespace on Kubernetes, and sent as it is.
				if isPath(target) {
					abs, err := filepath.Abs(target)
					if err != nil {
						return err
					}
					target = abs
				}
			case "production":
				if target != "" {
					return usageError{errors.New("--target: a restore to production goes back where the application's volumes are; drop --target (or use --to new)")}
				}
			default:
				return usageError{fmt.Errorf("--to %q: want new or production", to)}
			}
			c, err := connect(nopts, "tidemark restore")
			if err != nil {
				return err
			}
			defer c.close()
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			followCtx, stop := context.WithCancel(ctx)
			defer stop()
			facts, err := c.follow(followCtx)
			if err != nil {
				return err
			}
			req := events.RestoreRequested{RestorePointID: events.RestorePointID(args[0]), Target: events.RestoreTarget{Mode: to, Name: target}, Only: only, Params: params, Force: force, RequestedBy: requester()}
			ev := events.New("/tidemark/cli", args[0], req, time.Now())
			if _, err := c.bus.Publish(ctx, ev); err != nil {
				return err
			}
			return watchRestore(ctx, cmd.OutOrStdout(), facts, ev.ID, wait)
		},
	}
	addNATSFlags(cmd, &nopts)
	f := cmd.Flags()
	f.StringVar(&to, "to", "new", "new (beside the original) or production (in place)")
	f.StringVar(&target, "target", "", "where a restore to new goes: a directory on the local platform (absolute, or a path such as ./restored), a namespace on Kubernetes")
	f.StringSliceVar(&only, "only", nil, "restore only these volumes or dumps (comma-separated)")
	f.StringToStringVar(&params, "param", nil, "override a blueprint parameter for the restore steps, such as --param database=shop_copy (repeatable)")
	f.BoolVar(&wait, "wait", false, "follow the restore to its end; exit 1 if it fails")
	f.BoolVar(&force, "force", false, "restore to new into a target that is not empty: replace the volumes' directories there (their previous contents are kept beside them)")
	f.DurationVar(&timeout, "timeout", 0, "give up waiting after this long (the restore goes on)")
	return cmd
}

// isPath says whether a --target is a path (made absolute where it was
// typed), not a name: it has a separator or starts with . or ~.
func isPath(target string) bool {
	return strings.ContainsRune(target, filepath.Separator) || strings.HasPrefix(target, ".") || strings.HasPrefix(target, "~")
}

func watchRestore(ctx context.Context, w io.Writer, facts <-chan events.Event, requestID string, wait bool) error {
	meter := newTransferMeter()
	return runWatch{
		what: "restore",
		answer: func(ev events.Event) (events.RunID, error) {
			switch p := ev.Data.(type) {
			case events.RestoreFailed:
				return "", fmt.Errorf("restore refused: %s", p.Reason)
			case events.RestoreAccepted:
				fmt.Fprintf(w, "run %s: restoring point %s of %s to %s %s\n", p.RunID, p.RestorePointID, p.Application, p.Target.Mode, p.Target.Name)
				return p.RunID, nil
			}
			return "", nil
		},
		show: func(ev events.Event) (bool, error) {
			switch p := ev.Data.(type) {
			case events.VolumeImportProgress:
				if line := meter.line(ev.Time, p.Volume, p.BytesDone, p.BytesTotal, p.FilesDone, p.FilesTotal); line != "" {
					fmt.Fprintf(w, "    import %s %s\n", p.Volume, line)
				}
			case events.VolumeImported:
				if p.Checked {
					fmt.Fprintf(w, "  ✓ %s is readable in the repository: %d files, %s\n", p.Volume, p.Files, humanBytes(p.Bytes))
					return false, nil
				}
				fmt.Fprintf(w, "  ✓ restored %s: %d files, %s in %s\n", p.Volume, p.Files, humanBytes(p.Bytes), p.FinishedAt.Sub(p.StartedAt).Round(time.Millisecond))
				if p.Previous != "" {
					fmt.Fprintf(w, "    its previous contents are kept at %s\n", p.Previous)
				}
			case events.HookSucceeded:
				fmt.Fprintf(w, "  ✓ %s %s\n", p.Step, p.FinishedAt.Sub(p.StartedAt).Round(time.Millisecond))
			case events.HookFailed:
				fmt.Fprintf(w, "  ✗ %s: %s\n", p.Step, p.Error)
			case events.RestoreCompleted:
				fmt.Fprintf(w, "restore completed: %s restored in %s\n", humanBytes(p.BytesRestored), p.FinishedAt.Sub(p.StartedAt).Round(time.Millisecond))
				return true, nil
			case events.RestoreFailed:
				printCompensations(w, p.Compensations)
				return true, fmt.Errorf("restore failed: %s", p.Reason)
			case events.RestoreCancelled:
				printCompensations(w, p.Compensations)
				return true, fmt.Errorf("restore cancelled by %s", orSomeone(p.CancelledBy))
			}
			return false, nil
		},
	}.follow(ctx, w, facts, requestID, wait)
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/cenats"
	"github.com/tidemark-dev/tidemark/services/coordinator"
)

func addNATSFlags(cmd *cobra.Command, o *natsOptions) {
	f := cmd.PersistentFlags()
	f.StringVar(&o.url, "nats-url", defaultNATSURL, "NATS server URLs, comma-separated")
	f.StringVar(&o.creds, "nats-creds", "", "NATS credentials file")
	f.StringVar(&o.tlsCA, "nats-tls-ca", "", "CA bundle to verify the NATS servers")
	f.StringVar(&o.tlsCert, "nats-tls-cert", "", "client certificate for NATS")
	f.StringVar(&o.tlsKey, "nats-tls-key", "", "client key for NATS")
}

// connection is a bus client for one CLI command.
type connection struct {
	nc  *nats.Conn
	bus *bus.Bus
}

func connect(o natsOptions, name string) (*connection, error) {
	nc, err := bus.Dial(o.dialConfig(name))
	if err != nil {
		return nil, fmt.Errorf("%w (is `tidemark serve` running, and --nats-url right?)", err)
	}
	b, err := bus.New(nc, bus.WithSource("/tidemark/cli"))
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &connection{nc: nc, bus: b}, nil
}

func (c *connection) close() { c.nc.Close() }

// follow delivers every fact published from now on, decoded, until ctx ends.
func (c *connection) follow(ctx context.Context) (<-chan events.Event, error) {
	js, err := jetstream.New(c.nc)
	if err != nil {
		return nil, err
	}
	cons, err := js.OrderedConsumer(ctx, bus.StreamEvents, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return nil, fmt.Errorf("following events (is `tidemark serve` running?): %w", err)
	}
	out := make(chan events.Event, 256)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		ev, err := cenats.Decode(ctx, &nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
		if err != nil {
			return
		}
		select {
		case out <- ev:
		case <-ctx.Done():
		}
	})
	if err != nil {
		return nil, err
	}
	go func() { <-ctx.Done(); cc.Stop() }()
	return out, nil
}

func newBackupCommand() *cobra.Command {
	var (
		nopts     natsOptions
		app, bp   string
		wait      bool
		maxFreeze time.Duration
		labels    map[string]string
		timeout   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "backup --app NAME [--blueprint FILE|NAME] [--wait]",
		Short: "Back up one application",
		Long: `Publish a backup request for one application. The coordinator renders the
application's blueprint, quiesces the application, snapshots its volumes,
releases it at once, moves the data into the repository and records a
restore point.

With --wait, follow the run to its end, showing each step and the exports'
progress, and exit 1 if the run fails (with its cause and what was undone).

--app names the application. On the local platform it is the metadata.name
of an Application file. On Kubernetes (serve --platform kube) it is one of:
  NAMESPACE             every object of the namespace
  NAMESPACE:SELECTOR    the objects matching a label selector (shop:app=db)
  NAMESPACE/NAME        the StatefulSet or Deployment NAME, or the object NAME
                        carrying a blueprint annotation, and what it owns
  NAMESPACE/KIND/NAME   the same with the kind given (shop/statefulset/db,
                        shop/perconaservermongodb/orders)
and its blueprint is the one its tidemark.io/blueprint (or Kanister's
kanister.kasten.io/blueprint) annotation names: a Blueprint object in its
namespace or Tidemark's, else a bundled blueprint (docs/kubernetes.md). Name
an application the same way every time: the name is what its runs and
restore points are listed under.

--blueprint overrides the application's blueprint: a bundled blueprint's
name (mariadb, postgres, ...) or a YAML file the coordinator can read.`,
		Example: `  tidemark backup --app shop/mariadb --wait
  tidemark backup --app shop/postgres --blueprint ./pg-custom.yaml --max-freeze 20s
  tidemark backup --app shop/statefulset/postgres --wait     # on Kubernetes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if app == "" {
				return usageError{errors.New("--app is required: name the application to back up (as in its Application file's metadata.name)")}
			}
			if maxFreeze < 0 {
				return usageError{fmt.Errorf("--max-freeze %s must be positive", maxFreeze)}
			}
			if bp != "" && (strings.HasSuffix(bp, ".yaml") || strings.HasSuffix(bp, ".yml") || strings.ContainsRune(bp, os.PathSeparator)) {
				abs, err := filepath.Abs(bp)
				if err != nil {
					return err
				}
				if _, err := os.Stat(abs); err != nil {
					return usageError{fmt.Errorf("--blueprint: %w", err)}
				}
				bp = abs
			}
			req := events.BackupRequested{Application: app, Blueprint: bp, Labels: labels, RequestedBy: requester()}
			if maxFreeze > 0 {
				d := events.Duration(maxFreeze)
				req.MaxFreeze = &d
			}
			c, err := connect(nopts, "tidemark backup")
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
			ev := events.New("/tidemark/cli", app, req, time.Now())
			if _, err := c.bus.Publish(ctx, ev); err != nil {
				return err
			}
			return watchBackup(ctx, cmd.OutOrStdout(), facts, ev.ID, wait)
		},
	}
	addNATSFlags(cmd, &nopts)
	f := cmd.Flags()
	f.StringVar(&app, "app", "", "application to back up (required): an Application's name, or on Kubernetes NAMESPACE, NAMESPACE:SELECTOR, NAMESPACE/NAME or NAMESPACE/KIND/NAME")
	f.StringVar(&bp, "blueprint", "", "blueprint to use instead of the application's: a bundled name or a YAML file")
	f.BoolVar(&wait, "wait", false, "follow the run to its end; exit 1 if it fails")
	f.DurationVar(&maxFreeze, "max-freeze", 0, "bound on how long the application may stay quiesced (default: the blueprint's maxFreeze)")
	f.StringToStringVar(&labels, "label", nil, "label copied onto the restore point (key=value, repeatable)")
	f.DurationVar(&timeout, "timeout", 0, "give up waiting after this long (the run goes on)")
	return cmd
}

func requester() string {
	if u := os.Getenv("USER"); u != "" {
		return "cli:" + u
	}
	return "cli"
}

// runWatch follows one request: answer reads the facts the request caused
// until one names its run (or refuses it), and show reads the run's facts
// until it says the run ended.
type runWatch struct {
	what   string // "backup" or "restore", for messages
	answer func(events.Event) (events.RunID, error)
	show   func(events.Event) (done bool, err error)
}

func (rw runWatch) follow(ctx context.Context, w io.Writer, facts <-chan events.Event, requestID string, wait bool) error {
	var run events.RunID
	for {
		var ev events.Event
		select {
		case <-ctx.Done():
			if run != "" {
				return fmt.Errorf("stopped waiting; %s %s goes on (see `tidemark runs show %s`)", rw.what, run, run)
			}
			return fmt.Errorf("no answer to the %s request: is a coordinator running? (%w)", rw.what, ctx.Err())
		case ev = <-facts:
		}
		if run == "" {
			if ev.CausationID != requestID {
				continue
			}
			accepted, err := rw.answer(ev)
			if err != nil {
				return err
			}
			if accepted == "" {
				continue
			}
			run = accepted
			if !wait {
				fmt.Fprintf(w, "follow it with: tidemark runs show %s\n", run)
				return nil
			}
			continue
		}
		if ev.CorrelationID != string(run) && ev.Subject != string(run) {
			continue
		}
		if done, err := rw.show(ev); done || err != nil {
			return err
		}
	}
}

// watchBackup reports a backup request's fate: accepted or rejected, and
// with wait, every step until the run ends.
func watchBackup(ctx context.Context, w io.Writer, facts <-chan events.Event, requestID string, wait bool) error {
	meter := newTransferMeter()
	return runWatch{
		what: "backup",
		answer: func(ev events.Event) (events.RunID, error) {
			switch p := ev.Data.(type) {
			case events.BackupRejected:
				return "", fmt.Errorf("backup rejected: %s", p.Reason)
			case events.BackupAccepted:
				fmt.Fprintf(w, "run %s: backing up %s with blueprint %s (steps: %s)\n", p.RunID, p.Application, p.Blueprint, strings.Join(p.Steps, ", "))
				return p.RunID, nil
			}
			return "", nil
		},
		show: func(ev events.Event) (bool, error) {
			switch p := ev.Data.(type) {
			case events.HookSucceeded:
				note := ""
				if p.Holding {
					note = " (holding its lock)"
				}
				fmt.Fprintf(w, "  ✓ %s %s%s\n", p.Step, p.FinishedAt.Sub(p.StartedAt).Round(time.Millisecond), note)
			case events.HookFailed:
				fmt.Fprintf(w, "  ✗ %s: %s\n", p.Step, p.Error)
			case events.HookReleased:
				fmt.Fprintf(w, "  ✓ released %s after %s\n", p.Step, p.HeldFor.Std().Round(time.Millisecond))
			case events.SnapshotReady:
				for _, s := range p.Snapshots {
					fmt.Fprintf(w, "  ✓ snapshot %s (%s, %s, %s)\n", s.Volume, s.Method, humanBytes(s.Bytes), s.Duration.Std().Round(time.Millisecond))
				}
			case events.VolumeExportProgress:
				if line := meter.line(ev.Time, p.Volume, p.BytesDone, p.BytesTotal, p.FilesDone, p.FilesTotal); line != "" {
					fmt.Fprintf(w, "    export %s %s\n", p.Volume, line)
				}
			case events.VolumeExported:
				fmt.Fprintf(w, "  ✓ exported %s: %d files, %s read, %s new\n", p.Volume, p.Files, humanBytes(p.Bytes), humanBytes(p.BytesUploaded))
			case events.BackupCompleted:
				fmt.Fprintf(w, "  ✓ freeze window %s; %s read, %s uploaded\n", p.FreezeWindow.Std().Round(time.Millisecond), humanBytes(p.BytesRead), humanBytes(p.BytesUploaded))
			case events.RestorePointRecorded:
				fmt.Fprintf(w, "restore point %s recorded (%s-consistent)\n", p.RestorePointID, p.Consistency)
				return true, nil
			case events.RunCompensationFailed:
				fmt.Fprintf(w, "  !! COMPENSATION FAILED: %s after %d attempts: %s — a human must act; retrying at %s\n", p.Step, p.Attempts, p.Error, p.NextRetryAt.Format(time.RFC3339))
			case events.BackupFailed:
				printCompensations(w, p.Compensations)
				return true, fmt.Errorf("backup failed: %s", p.Reason)
			case events.BackupCancelled:
				printCompensations(w, p.Compensations)
				return true, fmt.Errorf("backup cancelled by %s", orSomeone(p.CancelledBy))
			}
			return false, nil
		},
	}.follow(ctx, w, facts, requestID, wait)
}

func orSomeone(s string) string {
	if s == "" {
		return "someone"
	}
	return s
}

func printCompensations(w io.Writer, cs []events.Compensation) {
	for _, c := range cs {
		line := fmt.Sprintf("  undo %s: %s", c.Step, c.Outcome)
		if c.Attempts > 1 {
			line += fmt.Sprintf(" after %d attempts", c.Attempts)
		}
		if c.Error != "" {
			line += " (" + c.Error + ")"
		}
		fmt.Fprintln(w, line)
	}
}

func progressBar(done, total, files, filesTotal int64) string {
	const width = 24
	if total <= 0 {
		return fmt.Sprintf("%s, %d files", humanBytes(done), files)
	}
	frac := min(float64(done)/float64(total), 1)
	n := int(frac * width)
	return fmt.Sprintf("[%s%s] %3.0f%% %s/%s, %d/%d files", strings.Repeat("#", n), strings.Repeat(".", width-n), frac*100, humanBytes(done), humanBytes(total), files, filesTotal)
}

// transferMeter draws a volume's progress at most every two seconds, with
// the rate since its first report and the time left at that rate. Times
// are the events' own, so a slow terminal does not skew the rate.
type transferMeter struct {
	first map[string]meterSample
	drawn map[string]time.Time
}

type meterSample struct {
	at    time.Time
	bytes int64
}

func newTransferMeter() *transferMeter {
	return &transferMeter{first: map[string]meterSample{}, drawn: map[string]time.Time{}}
}

// line returns what to print for this report, or "" to stay quiet.
func (m *transferMeter) line(at time.Time, volume string, done, total, files, filesTotal int64) string {
	first, seen := m.first[volume]
	if !seen {
		m.first[volume] = meterSample{at: at, bytes: done}
		first = m.first[volume]
	}
	if last, ok := m.drawn[volume]; ok && at.Sub(last) < 2*time.Second && done < total {
		return ""
	}
	m.drawn[volume] = at
	line := progressBar(done, total, files, filesTotal)
	if elapsed := at.Sub(first.at); elapsed >= time.Second && done > first.bytes {
		rate := float64(done-first.bytes) / elapsed.Seconds()
		line += fmt.Sprintf(", %s/s", humanBytes(int64(rate)))
		if total > done {
			line += ", ETA " + time.Duration(float64(total-done)/rate*float64(time.Second)).Round(time.Second).String()
		}
	}
	return line
}

func newRunsCommand() *cobra.Command {
	var nopts natsOptions
	cmd := &cobra.Command{
		Use:   "runs",
		Short: "List, inspect and cancel backup and restore runs",
	}
	addNATSFlags(cmd, &nopts)

	var app, output string
	var all bool
	list := &cobra.Command{
		Use:     "list",
		Short:   "List runs, newest first",
		Example: "  tidemark runs list --app shop/mariadb\n  tidemark runs list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return usageError{fmt.Errorf("--output %q: want text or json", output)}
			}
			return withRuns(cmd.Context(), nopts, func(ctx context.Context, kv bus.KV) error {
				runs, err := coordinator.ListRuns(ctx, kv)
				if err != nil {
					return err
				}
				var shown []coordinator.Run
				for _, r := range runs {
					if app != "" && r.Application != app {
						continue
					}
					shown = append(shown, r)
					if !all && len(shown) >= 50 {
						break
					}
				}
				return printRuns(cmd.OutOrStdout(), shown, output)
			})
		},
	}
	list.Flags().StringVar(&app, "app", "", "only this application's runs")
	list.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	list.Flags().BoolVar(&all, "all", false, "every run, not only the latest 50")

	var showOutput string
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show one run: its steps, what was undone, and its history",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withRuns(cmd.Context(), nopts, func(ctx context.Context, kv bus.KV) error {
				r, err := coordinator.LoadRun(ctx, kv, events.RunID(args[0]))
				if err != nil {
					return err
				}
				if showOutput == "json" {
					r.BlueprintSource = nil
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(r)
				}
				printRun(cmd.OutOrStdout(), r)
				return nil
			})
		},
	}
	show.Flags().StringVarP(&showOutput, "output", "o", "text", "output format: text or json")

	var reason string
	var waitCancel bool
	cancel := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a run: its owed inverse steps run (unlock, scale back up) and it ends cancelled",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := events.RunID(args[0])
			c, err := connect(nopts, "tidemark runs cancel")
			if err != nil {
				return err
			}
			defer c.close()
			ctx := cmd.Context()
			kv, err := c.bus.KeyValue(ctx, bus.BucketRuns)
			if err != nil {
				return err
			}
			r, err := coordinator.LoadRun(ctx, kv, id)
			if err != nil {
				return err
			}
			if r.Status.Terminal() {
				return fmt.Errorf("run %s has already ended (%s)", id, r.Status)
			}
			followCtx, stop := context.WithCancel(ctx)
			defer stop()
			facts, err := c.follow(followCtx)
			if err != nil {
				return err
			}
			if _, err := c.bus.Publish(ctx, events.New("/tidemark/cli", string(id), events.RunCancelRequested{RunID: id, Reason: reason, RequestedBy: requester()}, time.Now())); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cancel of run %s requested\n", id)
			if !waitCancel {
				return nil
			}
			for {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case ev := <-facts:
					switch p := ev.Data.(type) {
					case events.BackupCancelled:
						if p.RunID == id {
							printCompensations(cmd.OutOrStdout(), p.Compensations)
							fmt.Fprintf(cmd.OutOrStdout(), "run %s cancelled\n", id)
							return nil
						}
					case events.BackupFailed:
						if p.RunID == id {
							printCompensations(cmd.OutOrStdout(), p.Compensations)
							return fmt.Errorf("run %s failed before the cancel: %s", id, p.Reason)
						}
					case events.RestorePointRecorded:
						if p.RunID == id {
							return fmt.Errorf("run %s completed before the cancel took effect (restore point %s)", id, p.RestorePointID)
						}
					case events.RestoreCancelled:
						if p.RunID == id {
							printCompensations(cmd.OutOrStdout(), p.Compensations)
							fmt.Fprintf(cmd.OutOrStdout(), "run %s cancelled\n", id)
							return nil
						}
					case events.RestoreFailed:
						if p.RunID == id {
							printCompensations(cmd.OutOrStdout(), p.Compensations)
							return fmt.Errorf("run %s failed before the cancel: %s", id, p.Reason)
						}
					case events.RestoreCompleted:
						if p.RunID == id {
							return fmt.Errorf("run %s completed before the cancel took effect", id)
						}
					}
				}
			}
		},
	}
	cancel.Flags().StringVar(&reason, "reason", "", "why, recorded with the run")
	cancel.Flags().BoolVar(&waitCancel, "wait", false, "wait until the run has been compensated")
	cmd.AddCommand(list, show, cancel)
	return cmd
}

func withRuns(ctx context.Context, o natsOptions, fn func(context.Context, bus.KV) error) error {
	c, err := connect(o, "tidemark runs")
	if err != nil {
		return err
	}
	defer c.close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	kv, err := c.bus.KeyValue(ctx, bus.BucketRuns)
	if err != nil {
		return fmt.Errorf("reading runs (is `tidemark serve` running, and --nats-url right?): %w", err)
	}
	return fn(ctx, kv)
}

func printRuns(w io.Writer, runs []coordinator.Run, output string) error {
	if output == "json" {
		if runs == nil {
			runs = []coordinator.Run{}
		}
		for i := range runs {
			runs[i].BlueprintSource = nil
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(runs)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAPPLICATION\tSTATUS\tSTAGE\tSTARTED\tFREEZE\tCAUSE")
	for _, r := range runs {
		freeze := "-"
		if d := r.FreezeWindow(); d > 0 {
			freeze = d.Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Application, r.Status, r.Stage, r.CreatedAt.UTC().Format(time.RFC3339), freeze, r.Cause)
	}
	return tw.Flush()
}

func printRun(w io.Writer, r coordinator.Run) {
	fmt.Fprintf(w, "Run:          %s\n", r.ID)
	fmt.Fprintf(w, "Application:  %s\n", r.Application)
	fmt.Fprintf(w, "Blueprint:    %s\n", r.Blueprint)
	fmt.Fprintf(w, "Status:       %s (%s)\n", r.Status, r.Stage)
	fmt.Fprintf(w, "Started:      %s\n", r.CreatedAt.UTC().Format(time.RFC3339))
	if r.FinishedAt != nil {
		fmt.Fprintf(w, "Finished:     %s (%s)\n", r.FinishedAt.UTC().Format(time.RFC3339), r.FinishedAt.Sub(r.CreatedAt).Round(time.Millisecond))
	}
	fmt.Fprintf(w, "Max freeze:   %s\n", r.MaxFreeze)
	if d := r.FreezeWindow(); d > 0 {
		fmt.Fprintf(w, "Freeze:       %s\n", d.Round(time.Millisecond))
	}
	if r.Cause != "" {
		fmt.Fprintf(w, "Cause:        %s\n", r.Cause)
	}
	if r.RestorePointID != "" {
		fmt.Fprintf(w, "Restore point: %s\n", r.RestorePointID)
	}
	if len(r.Unresolved) > 0 {
		fmt.Fprintf(w, "UNRESOLVED:   %d inverse step(s) failed every retry; a human must act\n", len(r.Unresolved))
	}
	fmt.Fprintln(w, "\nTasks:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  NAME\tROLE\tSTATE\tATTEMPTS\tERROR")
	for _, t := range r.Tasks {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\n", t.Name, t.Role, t.State, t.Attempt, t.Error)
	}
	tw.Flush()
	if len(r.Compensations) > 0 {
		fmt.Fprintln(w, "\nUndone:")
		printCompensations(w, r.Compensations)
	}
	fmt.Fprintln(w, "\nHistory:")
	for _, h := range r.History {
		fmt.Fprintf(w, "  %s  %s\n", h.At.UTC().Format("15:04:05.000"), h.Message)
	}
}

// Command tidemark runs Tidemark's services and talks to a running Tidemark.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "tidemark:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError is a bad flag, setting or argument: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

type globalOptions struct {
	configFile string
	logLevel   string
	logFormat  string
}

func newRootCommand() *cobra.Command {
	g := &globalOptions{}
	root := &cobra.Command{
		Use:   "tidemark",
		Short: "Application-consistent backups for Kubernetes that restart cleanly",
		Long: `Tidemark prepares an application (locks, backup mode, a dump), snapshots its
volumes, releases the application at once, and only then copies the data into
a deduplicated, encrypted repository. Its services exchange CloudEvents over
NATS JetStream; "tidemark serve" runs any of them.

Every flag can also be set in the environment as TIDEMARK_<FLAG> (dashes become
underscores: --data-dir is TIDEMARK_DATA_DIR) or in a YAML file given by
--config, keyed by flag name. A flag on the command line wins over the
environment, which wins over the file.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.configFile, "config", "", "YAML file of settings keyed by flag name")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		if err := applySettings(cmd, os.LookupEnv); err != nil {
			return usageError{err}
		}
		return nil
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see %s --help)", err, cmd.CommandPath())}
	})
	root.AddCommand(newServeCommand(g), newEventsCommand(g), newBlueprintCommand(g), newAppCommand(), newPointsCommand(), newCatalogCommand(), newBackupCommand(), newRestoreCommand(), newRunsCommand(), newDemoCommand(), newMoverCommand(g))
	annotateEnv(root)
	return root
}

func (g *globalOptions) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)}
	}
	opts := &slog.HandlerOptions{Level: level}
	switch g.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usageError{fmt.Errorf("--log-format %q: want text or json", g.logFormat)}
}

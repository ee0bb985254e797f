package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/services/catalog"
)

func newPointsCommand() *cobra.Command {
	var nopts natsOptions
	cmd := &cobra.Command{
		Use:   "points",
		Short: "List, inspect and delete restore points",
	}
	cmd.PersistentFlags().StringVar(&nopts.url, "nats-url", defaultNATSURL, "NATS server URLs, comma-separated")
	cmd.PersistentFlags().StringVar(&nopts.creds, "nats-creds", "", "NATS credentials file")
	cmd.PersistentFlags().StringVar(&nopts.tlsCA, "nats-tls-ca", "", "CA bundle to verify the NATS servers")
	cmd.PersistentFlags().StringVar(&nopts.tlsCert, "nats-tls-cert", "", "client certificate for NATS")
	cmd.PersistentFlags().StringVar(&nopts.tlsKey, "nats-tls-key", "", "client key for NATS")

	var app, output string
	list := &cobra.Command{
		Use:     "list",
		Short:   "List restore points, newest first",
		Example: "  tidemark points list --app shop/postgres\n  tidemark points list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return usageError{fmt.Errorf("--output %q: want text or json", output)}
			}
			return withCatalog(cmd.Context(), nopts, func(ctx context.Context, s *catalog.Store) error {
				points, err := s.List(ctx, app)
				if err != nil {
					return err
				}
				return printPoints(cmd.OutOrStdout(), points, output)
			})
		},
	}
	list.Flags().StringVar(&app, "app", "", "only this application's restore points")
	list.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")

	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show one restore point: its artifacts and the step outputs a restore needs",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withCatalog(cmd.Context(), nopts, func(ctx context.Context, s *catalog.Store) error {
				p, err := s.Get(ctx, events.RestorePointID(args[0]))
				if err != nil {
					return err
				}
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(p)
			})
		},
	}
	var ropts repoOptions
	del := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a restore point and its snapshots in the repository",
		Long: `Delete a restore point: its kopia snapshots and its record in the repository,
then the point itself, and announce it with restorepoint.deleted. There is no
confirmation; the point cannot be restored afterwards. The space its data used
is reclaimed by the next full repository maintenance.

The repository is opened like "tidemark serve" opens it: under --data-dir, or
--repository-path, with the password from TIDEMARK_REPOSITORY_PASSWORD,
--repository-password-file, or the one serve generated in the data directory.
If the repository fails midway, the point stays listed with status "deleting"
and the catalog service finishes the deletion later.`,
		Example: "  tidemark points delete 01JD1B2C3D4E5F6G7H8J9K0M1N",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := events.RestorePointID(args[0])
			return withCatalogBus(cmd.Context(), nopts, 5*time.Minute, func(ctx context.Context, b *bus.Bus, s *catalog.Store) error {
				// An unknown id is refused before the repository is
				// opened: no password is needed to learn of a typo.
				if _, err := s.Get(ctx, id); err != nil {
					if errors.Is(err, catalog.ErrNotFound) {
						return fmt.Errorf("%w (see tidemark points list)", err)
					}
					return err
				}
				repo, closeRepo, err := ropts.open(ctx, "tidemark points delete")
				if err != nil {
					return err
				}
				defer closeRepo()
				p, deleted, err := catalog.DeletePoint(ctx, s, repo, b, id, "deleted by tidemark points delete")
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				fmt.Fprintf(w, "Deleted restore point %s of %s (created %s) from the catalog and from the repository in %s.\n",
					p.ID, p.Application, p.CreatedAt.UTC().Format(time.RFC3339), repo.Path())
				names := map[events.ManifestID]string{}
				for _, a := range p.Artifacts {
					names[a.ManifestID] = a.Name
				}
				for _, m := range deleted {
					fmt.Fprintf(w, "  deleted snapshot %s (%s)\n", m, names[m])
				}
				if kept := len(p.Artifacts) - len(deleted); kept > 0 {
					fmt.Fprintf(w, "  kept %d snapshot(s) another restore point also uses\n", kept)
				}
				return nil
			})
		},
	}
	ropts.register(del)
	cmd.AddCommand(list, show, del)
	return cmd
}

func withCatalog(ctx context.Context, o natsOptions, fn func(context.Context, *catalog.Store) error) error {
	return withCatalogBus(ctx, o, 30*time.Second, func(ctx context.Context, _ *bus.Bus, s *catalog.Store) error {
		return fn(ctx, s)
	})
}

// withCatalogBus connects to NATS and opens the catalog's bucket, giving
// fn at most timeout.
func withCatalogBus(ctx context.Context, o natsOptions, timeout time.Duration, fn func(context.Context, *bus.Bus, *catalog.Store) error) error {
	nc, err := bus.Dial(o.dialConfig("tidemark points"))
	if err != nil {
		return err
	}
	defer nc.Close()
	b, err := bus.New(nc, bus.WithSource("tidemark/cli"))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	kv, err := b.KeyValue(ctx, bus.BucketCatalog)
	if err != nil {
		return fmt.Errorf("reading the catalog (is `tidemark serve` running, and --nats-url right?): %w", err)
	}
	return fn(ctx, b, catalog.NewStore(kv))
}

// repoOptions say where the repository is, for the commands that open it
// themselves (`points delete`, `catalog rebuild`).
type repoOptions struct {
	dataDir, path, passwordFile string
}

func (o *repoOptions) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", defaultDataDir(), "data directory of `tidemark serve`: the repository and its generated password are found there")
	f.StringVar(&o.path, "repository-path", "", "the repository's directory (default <data-dir>/repository)")
	f.StringVar(&o.passwordFile, "repository-password-file", "", "file holding the repository password (or set "+repository.EnvPassword+"; default: the password serve generated in <data-dir>)")
}

// open opens the existing repository (never creating one) with a kopia
// cache of its own, removed by the returned close.
func (o *repoOptions) open(ctx context.Context, purpose string) (*repository.Repository, func(), error) {
	cfg, err := repository.Resolve(o.dataDir, o.path, os.Getenv(repository.EnvPassword), o.passwordFile, false, nil)
	if err != nil {
		return nil, nil, err
	}
	cache, err := os.MkdirTemp("", "tidemark-repository-cache-")
	if err != nil {
		return nil, nil, err
	}
	cfg.CacheDir, cfg.NoCreate = cache, true
	repo, err := repository.Open(ctx, cfg)
	if err != nil {
		os.RemoveAll(cache)
		if errors.Is(err, repository.ErrNoRepository) {
			return nil, nil, fmt.Errorf("%s: %w (set --repository-path, or --data-dir to the data directory of `tidemark serve`)", purpose, err)
		}
		return nil, nil, fmt.Errorf("%s: %w", purpose, err)
	}
	return repo, func() {
		_ = repo.Close(context.WithoutCancel(ctx))
		os.RemoveAll(cache)
	}, nil
}

func printPoints(w io.Writer, points []catalog.RestorePoint, output string) error {
	if output == "json" {
		if points == nil {
			points = []catalog.RestorePoint{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(points)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAPPLICATION\tCREATED\tCONSISTENCY\tSTATUS\tARTIFACTS\tSIZE")
	for _, p := range points {
		names := make([]string, 0, len(p.Artifacts))
		var size int64
		for _, a := range p.Artifacts {
			names = append(names, a.Name)
			size += a.Bytes
		}
		sort.Strings(names)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.Application, p.CreatedAt.UTC().Format(time.RFC3339), p.Consistency, p.Status, strings.Join(names, ","), humanBytes(size))
	}
	return tw.Flush()
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

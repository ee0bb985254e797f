package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/services/catalog"
)

func newPointsCommand() *cobra.Command {
	var nopts natsOptions
	cmd := &cobra.Command{
		Use:   "points",
		Short: "List and inspect restore points",
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
	cmd.AddCommand(list, show)
	return cmd
}

func withCatalog(ctx context.Context, o natsOptions, fn func(context.Context, *catalog.Store) error) error {
	nc, err := bus.Dial(o.dialConfig("tidemark points"))
	if err != nil {
		return err
	}
	defer nc.Close()
	b, err := bus.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	kv, err := b.KeyValue(ctx, bus.BucketCatalog)
	if err != nil {
		return fmt.Errorf("reading the catalog (is `tidemark serve` running, and --nats-url right?): %w", err)
	}
	return fn(ctx, catalog.NewStore(kv))
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
	fmt.Fprintln(tw, "ID\tAPPLICATION\tCREATED\tCONSISTENCY\tARTIFACTS\tSIZE")
	for _, p := range points {
		names := make([]string, 0, len(p.Artifacts))
		var size int64
		for _, a := range p.Artifacts {
			names = append(names, a.Name)
			size += a.Bytes
		}
		sort.Strings(names)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.Application, p.CreatedAt.UTC().Format(time.RFC3339), p.Consistency, strings.Join(names, ","), humanBytes(size))
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

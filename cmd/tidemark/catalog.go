package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/services/catalog"
)

// newCatalogCommand is `tidemark catalog`: work on the catalog as a whole.
func newCatalogCommand() *cobra.Command {
	var nopts natsOptions
	var ropts repoOptions
	cmd := &cobra.Command{
		Use:   "catalog",
		Short: "Work on the catalog of restore points as a whole",
	}
	rebuild := &cobra.Command{
		Use:   "rebuild",
		Short: "Rebuild the catalog of restore points from the repository alone",
		Long: `Rebuild the catalog from the repository: every restore point whose record is
in the repository and that the catalog does not have is written back into the
catalog, with its artifacts and the step outputs a restore needs. Use it after
a fresh install on a new cluster, pointed at the old repository, or when the
catalog's bucket was lost. Points the catalog already has are left as they
are, so running it twice changes nothing.

"tidemark serve" must be running (it creates the catalog's bucket). The
repository is opened as "tidemark points delete" opens it.`,
		Example: "  TIDEMARK_REPOSITORY_PASSWORD_FILE=/secrets/repo tidemark catalog rebuild --repository-path /backups/tidemark",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withCatalogBus(cmd.Context(), nopts, 30*time.Minute, func(ctx context.Context, _ *bus.Bus, s *catalog.Store) error {
				repo, closeRepo, err := ropts.open(ctx, "tidemark catalog rebuild")
				if err != nil {
					return err
				}
				defer closeRepo()
				rep, err := catalog.Rebuild(ctx, s, repo)
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				fmt.Fprintf(w, "Rebuilt the catalog from the repository in %s: %d restore point(s) restored, %d already in the catalog.\n",
					repo.Path(), len(rep.Restored), len(rep.Present))
				for _, id := range rep.Restored {
					fmt.Fprintf(w, "  restored %s\n", id)
				}
				if len(rep.Problems) > 0 {
					for _, p := range rep.Problems {
						fmt.Fprintf(cmd.ErrOrStderr(), "  could not restore: %s\n", p)
					}
					return fmt.Errorf("%d record(s) in the repository could not be restored (listed above); the others were", len(rep.Problems))
				}
				return nil
			})
		},
	}
	f := rebuild.Flags()
	f.StringVar(&nopts.url, "nats-url", defaultNATSURL, "NATS server URLs, comma-separated")
	f.StringVar(&nopts.creds, "nats-creds", "", "NATS credentials file")
	f.StringVar(&nopts.tlsCA, "nats-tls-ca", "", "CA bundle to verify the NATS servers")
	f.StringVar(&nopts.tlsCert, "nats-tls-cert", "", "client certificate for NATS")
	f.StringVar(&nopts.tlsKey, "nats-tls-key", "", "client key for NATS")
	ropts.register(rebuild)
	cmd.AddCommand(rebuild)
	return cmd
}

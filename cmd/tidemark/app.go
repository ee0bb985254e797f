package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/tidemark-dev/tidemark/pkg/application"
)

func newAppCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "app",
		Short: "Work with Application files (the local platform's applications)",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "lint FILE...",
		Short: "Validate Application files without running anything",
		Long: `Validate Application files: known fields only, a blueprint named, absolute
volume directories, known drivers, and passwords referenced through
passwordFrom (env or file), never written into a DSN. Exit code 1 on any problem.`,
		Example: `  tidemark app lint apps/*.yaml`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			problems := 0
			for _, f := range args {
				data, err := os.ReadFile(f)
				if err == nil {
					_, err = application.Parse(f, data)
				}
				if err != nil {
					problems++
					fmt.Fprintln(cmd.OutOrStdout(), err)
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", f)
			}
			if problems > 0 {
				return fmt.Errorf("%d of %d files have problems", problems, len(args))
			}
			return nil
		},
	})
	return cmd
}

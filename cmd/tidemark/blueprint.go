package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

func newBlueprintCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "blueprint",
		Short: "Check and inspect blueprints",
	}
	cmd.AddCommand(newBlueprintLintCommand(), newBlueprintShowCommand())
	return cmd
}

func newBlueprintLintCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "lint FILE|DIR...",
		Short: "Check blueprints without running them",
		Long: `Check blueprint files without running anything: YAML syntax, unknown fields,
durations without a unit, unknown step kinds, every template (syntax, fields
of the template context, declared secrets and parameters, outputs of steps
that are sure to have run), quiesce steps without an inverse, and inverses
that use outputs of steps that may not have run.

A directory stands for every blueprint.yaml beneath it. Each problem is
printed as file:line:column: field: message (how to fix it). The exit code is
1 when there is any problem.`,
		Example: `  tidemark blueprint lint blueprints/postgres/blueprint.yaml
  tidemark blueprint lint blueprints/`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError{fmt.Errorf("name at least one blueprint file or directory (see %s --help)", cmd.CommandPath())}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return lintBlueprints(cmd.OutOrStdout(), args)
		},
	}
}

// lintBlueprints prints every problem in the files named by args, one per
// line, and returns an error (exit code 1) when there was any.
func lintBlueprints(w io.Writer, args []string) error {
	files, err := blueprintFiles(args)
	if err != nil {
		return usageError{err}
	}
	problems, bad := 0, 0
	for _, f := range files {
		diags := lintBlueprintFile(f)
		for _, d := range diags {
			fmt.Fprintln(w, d.String())
		}
		if len(diags) > 0 {
			problems += len(diags)
			bad++
		}
	}
	if problems > 0 {
		return fmt.Errorf("%s in %s", plural(problems, "problem"), plural(bad, "file"))
	}
	fmt.Fprintf(w, "no problems in %s\n", plural(len(files), "file"))
	return nil
}

func lintBlueprintFile(path string) blueprint.Diagnostics {
	b, err := blueprint.ParseFile(path)
	var diags blueprint.Diagnostics
	switch {
	case errors.As(err, &diags):
		return diags
	case err != nil:
		return blueprint.Diagnostics{{File: path, Message: err.Error()}}
	}
	return blueprint.Lint(b)
}

// blueprintFiles expands directories into the blueprint.yaml files beneath
// them, keeping files as given.
func blueprintFiles(args []string) ([]string, error) {
	var files []string
	for _, a := range args {
		st, err := os.Stat(a)
		if err != nil || !st.IsDir() {
			files = append(files, a) // a missing file is reported as a problem of its own
			continue
		}
		var found []string
		err = filepath.WalkDir(a, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && (d.Name() == "blueprint.yaml" || d.Name() == "blueprint.yml") {
				found = append(found, p)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if len(found) == 0 {
			return nil, fmt.Errorf("%s: no blueprint.yaml in this directory or beneath it", a)
		}
		sort.Strings(found)
		files = append(files, found...)
	}
	return files, nil
}

func plural(n int, word string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}

func newBlueprintShowCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show FILE",
		Short: "Print a blueprint's actions and steps in order",
		Long: `Print the steps of each action in the order they run, with their kind,
timeout, error handling and what undoes them. Defaults are filled in, so this
shows what will really apply. Steps before the snapshot step of a backup
quiesce the application and are marked with *.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{fmt.Errorf("name one blueprint file (see %s --help)", cmd.CommandPath())}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := blueprint.ParseFile(args[0])
			if err != nil {
				return err
			}
			return showBlueprint(cmd.OutOrStdout(), b)
		},
	}
}

func showBlueprint(out io.Writer, b *blueprint.Blueprint) error {
	fmt.Fprintf(out, "%s: %s\n", b.Metadata.Name, b.Metadata.Description)
	fmt.Fprintf(out, "maxFreeze %s", b.MaxFreeze())
	if len(b.Spec.Secrets) > 0 {
		fmt.Fprintf(out, "; secrets: %s", strings.Join(b.Spec.Secrets, ", "))
	}
	if len(b.Spec.Params) > 0 {
		names := make([]string, 0, len(b.Spec.Params))
		for n := range b.Spec.Params {
			names = append(names, n)
		}
		sort.Strings(names)
		for i, n := range names {
			names[i] = n + "=" + b.Spec.Params[n]
		}
		fmt.Fprintf(out, "; params: %s", strings.Join(names, " "))
	}
	fmt.Fprintln(out)
	for _, name := range []string{blueprint.ActionBackup, blueprint.ActionRestore, blueprint.ActionDelete} {
		a := b.Action(name)
		if len(a) == 0 {
			continue
		}
		fmt.Fprintf(out, "\n%s:\n", name)
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "  #\tSTEP\tKIND\tTIMEOUT\tON ERROR\tUNDONE BY")
		snap := a.SnapshotIndex()
		for i := range a {
			s := &a[i]
			mark := " "
			if name == blueprint.ActionBackup && i < snap {
				mark = "*"
			}
			kind := s.Kind
			if s.Holds() {
				kind += " (hold)"
			}
			if s.When != "" {
				kind += " when " + s.When
			}
			fmt.Fprintf(w, "%s %d\t%s\t%s\t%s\t%s\t%s\n", mark, i+1, s.Name, kind, s.TimeoutOrDefault(), s.OnError, undoneBy(s))
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	return nil
}

func undoneBy(s *blueprint.Step) string {
	switch {
	case s.Inverse != nil:
		return fmt.Sprintf("%s (%s, timeout %s)", s.Inverse.Name, s.Inverse.Kind, s.Inverse.TimeoutOrDefault())
	case s.HasInverse():
		return "its release"
	case s.NoInverse != "":
		return "nothing: " + s.NoInverse
	}
	return "-"
}

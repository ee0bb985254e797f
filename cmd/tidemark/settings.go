package main

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

const envPrefix = "TIDEMARK_"

func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// annotateEnv adds each flag's environment variable to its help text, so
// --help shows every way to set it.
func annotateEnv(cmd *cobra.Command) {
	mark := func(f *pflag.Flag) {
		if f.Name == "help" || strings.Contains(f.Usage, envPrefix) {
			return
		}
		f.Usage += " [env " + envName(f.Name) + "]"
	}
	cmd.LocalFlags().VisitAll(mark)
	cmd.PersistentFlags().VisitAll(mark)
	for _, c := range cmd.Commands() {
		annotateEnv(c)
	}
}

// applySettings fills every flag the command line left unset from the
// environment, then from the --config file: flags > env > file. A value
// that does not parse is reported with the flag's name and where it came from.
func applySettings(cmd *cobra.Command, lookupEnv func(string) (string, bool)) error {
	flags := cmd.Flags()
	configFile, _ := flags.GetString("config")
	if !flags.Changed("config") {
		if v, ok := lookupEnv(envName("config")); ok {
			configFile = v
		}
	}
	file, err := readSettingsFile(configFile)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	var errs []string
	flags.VisitAll(func(f *pflag.Flag) {
		known[f.Name] = true
		if f.Changed || f.Name == "help" || f.Name == "config" {
			return
		}
		if v, ok := lookupEnv(envName(f.Name)); ok {
			if err := setFlag(flags, f, v); err != nil {
				errs = append(errs, fmt.Sprintf("%s=%q (for --%s): %v", envName(f.Name), v, f.Name, err))
			}
			return
		}
		if v, ok := file[f.Name]; ok {
			if err := setFlag(flags, f, v); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %s: %q: %v", configFile, f.Name, v, err))
			}
		}
	})
	var unknown []string
	for k := range file {
		if !known[k] && !globalSetting(cmd, k) {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		errs = append(errs, fmt.Sprintf("%s: unknown setting %q for %q (settings are flag names; see %s --help)", configFile, k, cmd.CommandPath(), cmd.CommandPath()))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// globalSetting reports whether key is a flag of any command, so one config
// file can serve `serve` and `events tail` alike.
func globalSetting(cmd *cobra.Command, key string) bool {
	found := false
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Flags().Lookup(key) != nil || c.PersistentFlags().Lookup(key) != nil {
			found = true
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(cmd.Root())
	return found
}

func setFlag(flags *pflag.FlagSet, f *pflag.Flag, v string) error {
	if err := flags.Set(f.Name, v); err != nil {
		return err
	}
	// Values from env and file are defaults, not command-line choices.
	f.Changed = false
	return nil
}

// readSettingsFile reads a YAML mapping of flag names to values; lists
// become comma-separated values.
func readSettingsFile(path string) (map[string]string, error) {
	if path == "" {
		return nil, nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("--config %s: %w", path, err)
	}
	out := map[string]string{}
	for k, v := range doc {
		switch x := v.(type) {
		case []any:
			parts := make([]string, len(x))
			for i, p := range x {
				parts[i] = fmt.Sprint(p)
			}
			out[k] = strings.Join(parts, ",")
		case map[string]any:
			return nil, fmt.Errorf("--config %s: %s: want a value or a list, got a mapping", path, k)
		case nil:
			out[k] = ""
		case float64:
			out[k] = strconv.FormatFloat(x, 'f', -1, 64)
		default:
			out[k] = fmt.Sprint(x)
		}
	}
	return out, nil
}

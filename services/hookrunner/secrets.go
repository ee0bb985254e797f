package hookrunner

import (
	"fmt"
	"strings"

	"github.com/tidemark-dev/tidemark/pkg/application"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
)

// secretFiller fills secret placeholders from one application's secrets and
// remembers every value it handed out, so they can be scrubbed from output
// before anything leaves the hookrunner.
type secretFiller struct {
	app    *application.Application
	appErr error
	values []string
	err    error
}

func (f *secretFiller) fill(field, s string) string {
	if f.err != nil {
		return s
	}
	out, err := blueprint.ResolveSecrets(s, func(name string) (string, error) {
		if f.app == nil {
			return "", f.appErr
		}
		v, err := f.app.Secret(name)
		if err == nil && v != "" {
			f.values = append(f.values, v)
		}
		return v, err
	})
	if err != nil {
		f.err = fmt.Errorf("%s: %w", field, err)
	}
	return out
}

func (f *secretFiller) fillMap(field string, m map[string]string) map[string]string {
	if len(m) == 0 {
		return m
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = f.fill(field+"."+k, v)
	}
	return out
}

// exec fills an exec spec. A secret on the command line is refused: any
// process on the machine can read a command line.
func (f *secretFiller) exec(spec blueprint.ExecSpec) blueprint.ExecSpec {
	for i, a := range spec.Command {
		if strings.Contains(a, "${TIDEMARK_SECRET:") && f.err == nil {
			f.err = fmt.Errorf("command[%d]: a secret on a command line; pass it in env instead", i)
		}
	}
	spec.Env = f.fillMap("env", spec.Env)
	return spec
}

func (f *secretFiller) http(spec blueprint.HTTPSpec) blueprint.HTTPSpec {
	spec.URL = f.fill("url", spec.URL)
	spec.Body = f.fill("body", spec.Body)
	spec.Headers = f.fillMap("headers", spec.Headers)
	return spec
}

// scrub replaces every secret value handed out with REDACTED.
func (f *secretFiller) scrub(s string) string {
	for _, v := range f.values {
		s = strings.ReplaceAll(s, v, "REDACTED")
	}
	return s
}

func (f *secretFiller) scrubMap(m map[string]string) map[string]string {
	for k, v := range m {
		m[k] = f.scrub(v)
	}
	return m
}

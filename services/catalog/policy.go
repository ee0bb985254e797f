package catalog

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/tidemark-dev/tidemark/pkg/retention"
)

// RetentionFile is the retention policy file's name in the data directory;
// EnvRetentionFile names another one.
const (
	RetentionFile    = "retention.yaml"
	EnvRetentionFile = "TIDEMARK_RETENTION_FILE"
)

// DefaultRetentionInterval is how often every application's points are
// evaluated when the file does not say (they are also evaluated after each
// new point).
const DefaultRetentionInterval = time.Hour

// Retention says which restore points to keep, per application. The zero
// value keeps every point: nothing is ever deleted unless a policy asks.
//
// It is read from a YAML file (see LoadRetention):
//
//	interval: 1h          # how often to evaluate (also after each new point)
//	timezone: Europe/Paris  # whose hours, days, weeks… (default UTC)
//	default:              # every application not listed below (optional)
//	  keepLast: 7
//	  daily: 14
//	applications:
//	  shop/postgres:
//	    keepLast: 3
//	    daily: 7
//	    weekly: 4
//	    monthly: 12
type Retention struct {
	// Default applies to applications without their own policy; nil
	// keeps their points.
	Default *retention.Policy
	// Applications are policies by application name.
	Applications map[string]retention.Policy
	Location     *time.Location
	Interval     time.Duration
}

// PolicyFor returns app's policy; ok is false when its points are all kept.
func (r Retention) PolicyFor(app string) (retention.Policy, bool) {
	if p, ok := r.Applications[app]; ok {
		return p, true
	}
	if r.Default != nil {
		return *r.Default, true
	}
	return retention.Policy{}, false
}

// Describe is one line for the log: what is kept of whom.
func (r Retention) Describe() string {
	if r.Default == nil && len(r.Applications) == 0 {
		return "no retention policy: every restore point is kept"
	}
	var parts []string
	names := make([]string, 0, len(r.Applications))
	for n := range r.Applications {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		parts = append(parts, n+": "+describePolicy(r.Applications[n]))
	}
	if r.Default != nil {
		parts = append(parts, "others: "+describePolicy(*r.Default))
	} else {
		parts = append(parts, "others: keep every point")
	}
	return strings.Join(parts, "; ")
}

func describePolicy(p retention.Policy) string {
	var parts []string
	for _, c := range []struct {
		n    int
		what string
	}{{p.KeepLast, "last"}, {p.Hourly, "hourly"}, {p.Daily, "daily"}, {p.Weekly, "weekly"}, {p.Monthly, "monthly"}, {p.Yearly, "yearly"}} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", c.what, c.n))
		}
	}
	return "keep " + strings.Join(parts, ", ")
}

type retentionFile struct {
	Interval     string                      `json:"interval,omitempty"`
	Timezone     string                      `json:"timezone,omitempty"`
	Default      *retention.Policy           `json:"default,omitempty"`
	Applications map[string]retention.Policy `json:"applications,omitempty"`
}

// LoadRetention reads a retention file. A missing file is no policy (every
// point kept) unless required. Every mistake is reported with the file,
// the field and what to write instead.
func LoadRetention(path string, required bool) (Retention, error) {
	r := Retention{Location: time.UTC, Interval: DefaultRetentionInterval}
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !required {
		return r, nil
	}
	if err != nil {
		return Retention{}, fmt.Errorf("retention policy: %w", err)
	}
	var f retentionFile
	if err := yaml.UnmarshalStrict(raw, &f); err != nil {
		return Retention{}, fmt.Errorf("retention policy %s: %v (fields: interval, timezone, default, applications; a policy has keepLast, hourly, daily, weekly, monthly, yearly)", path, err)
	}
	if f.Interval != "" {
		d, err := time.ParseDuration(f.Interval)
		if err != nil || d < time.Minute {
			return Retention{}, fmt.Errorf("retention policy %s: interval %q: want a duration of at least 1m, such as \"1h\"", path, f.Interval)
		}
		r.Interval = d
	}
	if f.Timezone != "" {
		loc, err := time.LoadLocation(f.Timezone)
		if err != nil {
			return Retention{}, fmt.Errorf("retention policy %s: timezone %q: %v (want an IANA name such as \"Europe/Paris\", or \"UTC\")", path, f.Timezone, err)
		}
		r.Location = loc
	}
	if f.Default != nil {
		if err := f.Default.Validate(); err != nil {
			return Retention{}, fmt.Errorf("retention policy %s: default: %w (remove default to keep every point of applications not listed)", path, err)
		}
		r.Default = f.Default
	}
	for app, p := range f.Applications {
		if app == "" {
			return Retention{}, fmt.Errorf("retention policy %s: applications: an empty application name", path)
		}
		if err := p.Validate(); err != nil {
			return Retention{}, fmt.Errorf("retention policy %s: applications.%s: %w", path, app, err)
		}
	}
	r.Applications = f.Applications
	return r, nil
}

package catalog

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemark-dev/tidemark/pkg/retention"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "retention.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWithoutARetentionFileEveryPointIsKept(t *testing.T) {
	r, err := LoadRetention(filepath.Join(t.TempDir(), "retention.yaml"), false)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.PolicyFor("shop/postgres"); ok {
		t.Error("an application has a policy although no file was written")
	}
	if !strings.Contains(r.Describe(), "every restore point is kept") || r.Interval != DefaultRetentionInterval {
		t.Errorf("%s, every %s", r.Describe(), r.Interval)
	}
	// A file named explicitly must exist.
	if _, err := LoadRetention(filepath.Join(t.TempDir(), "missing.yaml"), true); err == nil {
		t.Error("a missing, explicitly named retention file was accepted")
	}
}

func TestRetentionFile(t *testing.T) {
	r, err := LoadRetention(writeFile(t, `
interval: 30m
timezone: Europe/Paris
default:
  keepLast: 7
applications:
  shop/postgres:
    keepLast: 3
    daily: 7
    weekly: 4
`), true)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := r.PolicyFor("shop/postgres"); !ok || p != (retention.Policy{KeepLast: 3, Daily: 7, Weekly: 4}) {
		t.Errorf("shop/postgres: %+v %v", p, ok)
	}
	if p, ok := r.PolicyFor("shop/other"); !ok || p != (retention.Policy{KeepLast: 7}) {
		t.Errorf("default: %+v %v", p, ok)
	}
	if r.Interval != 30*time.Minute || r.Location.String() != "Europe/Paris" {
		t.Errorf("interval %s location %s", r.Interval, r.Location)
	}
	if d := r.Describe(); d != "shop/postgres: keep last 3, daily 7, weekly 4; others: keep last 7" {
		t.Errorf("Describe() = %q", d)
	}
}

func TestBadRetentionFilesNameTheFieldAndTheFix(t *testing.T) {
	for _, c := range []struct{ name, yaml, want string }{
		{"empty policy", "applications:\n  shop/pg: {}\n", "applications.shop/pg: retention policy keeps nothing: set at least one of keepLast"},
		{"zero counts", "default:\n  keepLast: 0\n", "default: retention policy keeps nothing"},
		{"negative", "applications:\n  shop/pg: {keepLast: 2, daily: -1}\n", "applications.shop/pg: retention.daily is -1; counts cannot be negative"},
		{"unknown field", "applications:\n  shop/pg: {keep: 2}\n", `unknown field "keep"`},
		{"typo at the top", "default: {keepLast: 1}\napplication: {}\n", `unknown field "application"`},
		{"interval", "interval: 10\n", `interval "10": want a duration of at least 1m, such as "1h"`},
		{"timezone", "timezone: Mars/Olympus\n", `timezone "Mars/Olympus"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := writeFile(t, c.yaml)
			_, err := LoadRetention(path, true)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("got %v, want an error naming %s and saying %q", err, path, c.want)
			}
		})
	}
}

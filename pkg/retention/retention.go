// Package retention decides which restore points a grandfather-father-son
// (GFS) policy keeps. It is pure arithmetic over times, with no clock of its
// own, so every rule is tested with fixed times.
package retention

import (
	"errors"
	"fmt"
	"sort"
	"time"
)

// Policy keeps the KeepLast newest points, and the newest point of each of
// the last Hourly hours, Daily days, Weekly ISO weeks, Monthly months and
// Yearly years that have points. A point any rule keeps is kept.
type Policy struct {
	KeepLast int `json:"keepLast,omitempty"`
	Hourly   int `json:"hourly,omitempty"`
	Daily    int `json:"daily,omitempty"`
	Weekly   int `json:"weekly,omitempty"`
	Monthly  int `json:"monthly,omitempty"`
	Yearly   int `json:"yearly,omitempty"`
}

// ErrKeepsNothing is returned for a policy that would expire every point.
var ErrKeepsNothing = errors.New("retention policy keeps nothing")

// Validate rejects negative counts and a policy that keeps nothing: an
// empty policy must never be read as "delete every backup".
func (p Policy) Validate() error {
	for name, n := range map[string]int{"keepLast": p.KeepLast, "hourly": p.Hourly, "daily": p.Daily, "weekly": p.Weekly, "monthly": p.Monthly, "yearly": p.Yearly} {
		if n < 0 {
			return fmt.Errorf("retention.%s is %d; counts cannot be negative", name, n)
		}
	}
	if p.KeepLast+p.Hourly+p.Daily+p.Weekly+p.Monthly+p.Yearly == 0 {
		return fmt.Errorf("%w: set at least one of keepLast, hourly, daily, weekly, monthly, yearly", ErrKeepsNothing)
	}
	return nil
}

// Point is one restore point.
type Point struct {
	ID   string
	Time time.Time
}

// Kept is a point the policy keeps, with every rule that keeps it.
type Kept struct {
	Point
	Reasons []string
}

// Decision is the outcome of a policy over a set of points.
type Decision struct {
	Keep   []Kept  // newest first
	Expire []Point // newest first
}

type rule struct {
	name   string
	count  int
	bucket func(time.Time) string
}

// Apply sorts points newest first and decides. Buckets (hours, days, …) are
// reckoned in loc, so "daily" means the user's days, not UTC's.
func Apply(p Policy, points []Point, loc *time.Location) (Decision, error) {
	if err := p.Validate(); err != nil {
		return Decision{}, err
	}
	if loc == nil {
		loc = time.UTC
	}
	sorted := append([]Point(nil), points...)
	sort.SliceStable(sorted, func(i, j int) bool {
		if sorted[i].Time.Equal(sorted[j].Time) {
			return sorted[i].ID > sorted[j].ID
		}
		return sorted[i].Time.After(sorted[j].Time)
	})
	reasons := make([][]string, len(sorted))
	for i := 0; i < p.KeepLast && i < len(sorted); i++ {
		reasons[i] = append(reasons[i], fmt.Sprintf("last %d", p.KeepLast))
	}
	rules := []rule{
		{"hourly", p.Hourly, func(t time.Time) string { return t.In(loc).Format("2006-01-02T15") }},
		{"daily", p.Daily, func(t time.Time) string { return t.In(loc).Format("2006-01-02") }},
		{"weekly", p.Weekly, func(t time.Time) string {
			y, w := t.In(loc).ISOWeek()
			return fmt.Sprintf("%d-W%02d", y, w)
		}},
		{"monthly", p.Monthly, func(t time.Time) string { return t.In(loc).Format("2006-01") }},
		{"yearly", p.Yearly, func(t time.Time) string { return t.In(loc).Format("2006") }},
	}
	for _, r := range rules {
		if r.count == 0 {
			continue
		}
		seen := map[string]bool{}
		for i, pt := range sorted {
			b := r.bucket(pt.Time)
			if seen[b] {
				continue
			}
			if len(seen) == r.count {
				break
			}
			seen[b] = true
			// Newest first, so the first point of a bucket is its newest.
			reasons[i] = append(reasons[i], r.name+" "+b)
		}
	}
	var d Decision
	for i, pt := range sorted {
		if len(reasons[i]) > 0 {
			d.Keep = append(d.Keep, Kept{Point: pt, Reasons: reasons[i]})
		} else {
			d.Expire = append(d.Expire, pt)
		}
	}
	return d, nil
}

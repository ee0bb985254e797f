package retention

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

var base = time.Date(2026, 11, 22, 21, 30, 0, 0, time.UTC) // a Sunday

func at(offset time.Duration) Point {
	t := base.Add(-offset)
	return Point{ID: t.Format("0102-1504"), Time: t}
}

func ids(ps []Point) []string {
	out := []string{}
	for _, p := range ps {
		out = append(out, p.ID)
	}
	return out
}

func keptIDs(ks []Kept) []string {
	out := []string{}
	for _, k := range ks {
		out = append(out, k.ID)
	}
	return out
}

// hourly points over the last n hours, newest first
func hourly(n int) []Point {
	var ps []Point
	for i := 0; i < n; i++ {
		ps = append(ps, at(time.Duration(i)*time.Hour))
	}
	return ps
}

func TestApply(t *testing.T) {
	day := 24 * time.Hour
	cases := []struct {
		name   string
		policy Policy
		points []Point
		keep   []string
	}{
		{"keep last 3 of 5", Policy{KeepLast: 3}, hourly(5), []string{"1122-2130", "1122-2030", "1122-1930"}},
		{"fewer points than kept", Policy{KeepLast: 10}, hourly(2), []string{"1122-2130", "1122-2030"}},
		{"hourly keeps the newest in each hour",
			Policy{Hourly: 2},
			[]Point{at(0), at(10 * time.Minute), at(40 * time.Minute), at(70 * time.Minute), at(3 * time.Hour)},
			// 21:30 (hour 21), 20:50 is the newest of hour 20; 20:20 and older lose
			[]string{"1122-2130", "1122-2050"}},
		{"daily over 4 days, 3 kept",
			Policy{Daily: 3},
			[]Point{at(0), at(5 * time.Hour), at(day), at(day + time.Hour), at(2 * day), at(3 * day)},
			[]string{"1122-2130", "1121-2130", "1120-2130"}},
		{"days without points do not count",
			Policy{Daily: 2},
			[]Point{at(0), at(5 * day), at(9 * day)},
			[]string{"1122-2130", "1117-2130"}},
		{"weekly uses ISO weeks (Monday starts a week)",
			Policy{Weekly: 2},
			// Sun 22 Nov (week 47), Mon 16 Nov (week 47), Sun 15 Nov (week 46), Sun 8 Nov (week 45)
			[]Point{at(0), at(6*day + 21*time.Hour), at(7 * day), at(14 * day)},
			[]string{"1122-2130", "1115-2130"}},
		{"monthly and yearly",
			Policy{Monthly: 2, Yearly: 2},
			[]Point{at(0), at(10 * day), at(30 * day), at(60 * day), at(400 * day)},
			// Nov (22nd), Oct (23rd) monthly; 2026 newest (22 Nov), 2025 newest (18 Oct 2025)
			[]string{"1122-2130", "1023-2130", "1018-2130"}},
		{"rules combine", Policy{KeepLast: 1, Daily: 2},
			[]Point{at(0), at(time.Hour), at(day), at(day + time.Hour), at(2 * day)},
			[]string{"1122-2130", "1121-2130"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := Apply(c.policy, c.points, time.UTC)
			if err != nil {
				t.Fatal(err)
			}
			if got := keptIDs(d.Keep); !slices.Equal(got, c.keep) {
				t.Fatalf("kept %v, want %v (expired %v)", got, c.keep, ids(d.Expire))
			}
			if len(d.Keep)+len(d.Expire) != len(c.points) {
				t.Fatalf("%d kept + %d expired != %d points", len(d.Keep), len(d.Expire), len(c.points))
			}
		})
	}
}

func TestDaysAreTheUsersDays(t *testing.T) {
	tokyo := time.FixedZone("JST", 9*3600)
	// 20:00 and 16:00 UTC on the 22nd are the 23rd and the 23rd in Tokyo;
	// 14:00 UTC is 23:00 on the 22nd there.
	pts := []Point{
		{ID: "a", Time: time.Date(2026, 11, 22, 20, 0, 0, 0, time.UTC)},
		{ID: "b", Time: time.Date(2026, 11, 22, 16, 0, 0, 0, time.UTC)},
		{ID: "c", Time: time.Date(2026, 11, 22, 14, 0, 0, 0, time.UTC)},
	}
	utc, _ := Apply(Policy{Daily: 2}, pts, time.UTC)
	jst, _ := Apply(Policy{Daily: 2}, pts, tokyo)
	if got := keptIDs(utc.Keep); !slices.Equal(got, []string{"a"}) {
		t.Errorf("UTC kept %v", got)
	}
	if got := keptIDs(jst.Keep); !slices.Equal(got, []string{"a", "c"}) {
		t.Errorf("Tokyo kept %v", got)
	}
}

func TestReasonsSayWhyAPointIsKept(t *testing.T) {
	d, _ := Apply(Policy{KeepLast: 1, Daily: 1, Monthly: 1}, hourly(3), time.UTC)
	if r := strings.Join(d.Keep[0].Reasons, ", "); r != "last 1, daily 2026-11-22, monthly 2026-11" {
		t.Fatalf("reasons %q", r)
	}
}

func TestAPolicyThatKeepsNothingIsRefused(t *testing.T) {
	_, err := Apply(Policy{}, hourly(3), time.UTC)
	if !errors.Is(err, ErrKeepsNothing) {
		t.Fatalf("err = %v", err)
	}
	if err := (Policy{Daily: -1}).Validate(); err == nil || !strings.Contains(err.Error(), "retention.daily") {
		t.Fatalf("err = %v", err)
	}
}

func ExampleApply() {
	d, _ := Apply(Policy{KeepLast: 2}, hourly(4), time.UTC)
	fmt.Println(len(d.Keep), "kept,", len(d.Expire), "expired")
	// Output: 2 kept, 2 expired
}

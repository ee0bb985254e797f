// Command benchratio summarises `go test -bench` output: the median of each
// reported metric per benchmark, and the ratio of every sub-benchmark to a
// baseline sibling measured in the same run. Medians over interleaved runs
// (go test -count N) keep a noisy machine from deciding the result.
//
//	go test ./pkg/bus -run '^$' -bench . -count 6 | go run ./tools/benchratio -baseline raw
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(-\d+)?\s+\d+\s+(.*)$`)

func main() {
	baseline := flag.String("baseline", "raw", "sub-benchmark name every sibling is compared with")
	flag.Parse()
	if err := run(os.Stdin, os.Stdout, *baseline); err != nil {
		fmt.Fprintln(os.Stderr, "benchratio:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer, baseline string) error {
	samples := map[string]map[string][]float64{} // benchmark -> unit -> values
	var order []string
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		name := m[1]
		if samples[name] == nil {
			samples[name] = map[string][]float64{}
			order = append(order, name)
		}
		fields := strings.Fields(m[3])
		for i := 0; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				continue
			}
			samples[name][fields[i+1]] = append(samples[name][fields[i+1]], v)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(order) == 0 {
		return fmt.Errorf("no benchmark lines on stdin")
	}
	fmt.Fprintf(out, "| benchmark | runs | metric | median | vs %s |\n|---|---|---|---|---|\n", baseline)
	for _, name := range order {
		parent, _, _ := strings.Cut(name, "/")
		base := samples[parent+"/"+baseline]
		units := make([]string, 0, len(samples[name]))
		for u := range samples[name] {
			units = append(units, u)
		}
		sort.Strings(units)
		for _, u := range units {
			vals := samples[name][u]
			med := median(vals)
			ratio := ""
			if b, ok := base[u]; ok && median(b) != 0 {
				ratio = fmt.Sprintf("%.2f×", med/median(b))
			}
			fmt.Fprintf(out, "| %s | %d | %s | %.4g | %s |\n", name, len(vals), u, med, ratio)
		}
	}
	return nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

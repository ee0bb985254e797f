package main

import (
	"strings"
	"testing"
)

func TestRatiosAreMediansAgainstTheBaseline(t *testing.T) {
	in := `BenchmarkThroughput/raw-2   1000  100 ns/op  10000 msgs/s
BenchmarkThroughput/bus-2   1000  125 ns/op   8000 msgs/s
BenchmarkThroughput/raw-2   1000  100 ns/op  30000 msgs/s
BenchmarkThroughput/bus-2   1000  125 ns/op  90000 msgs/s
BenchmarkThroughput/raw-2   1000  100 ns/op  20000 msgs/s
BenchmarkThroughput/bus-2   1000  125 ns/op  16000 msgs/s
`
	var out strings.Builder
	if err := run(strings.NewReader(in), &out, "raw"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "| BenchmarkThroughput/bus | 3 | msgs/s | 1.6e+04 | 0.80× |") {
		t.Fatalf("table:\n%s", out.String())
	}
}

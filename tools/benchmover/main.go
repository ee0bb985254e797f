// Command benchmover benchmarks Tidemark's data mover against the stock
// kopia CLI and tar | zstd on the same data and the same disk, and prints
// the results as Markdown (docs/benchmarks.md, "services/datamover").
//
//	go run ./tools/benchmover -dir /var/tmp/tidemark-bench          # every phase
//	go run ./tools/benchmover -dir ... -only export,import          # some phases
//	go run ./tools/benchmover -dir ... -sweep                       # repository parameters
//
// The data sets are generated once into -dir and reused. The stock kopia
// CLI is built from the module proxy at the version go.mod requires and
// cached (as the tests do). zstd must be installed (apt-get install zstd).
// Keep -dir on one disk: every variant writes there.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

var start = time.Now()

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%7.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

func fatal(err error) {
	logf("error: %v", err)
	os.Exit(1)
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "mover" {
		os.Exit(moverMain(os.Args[2:]))
	}
	dir := flag.String("dir", filepath.Join(os.TempDir(), "tidemark-bench"), "directory for the data sets and every repository (one disk)")
	rounds := flag.Int("rounds", 3, "interleaved rounds of each measurement")
	only := flag.String("only", "export,reexport,import,volumes", "phases to run: export, reexport, import, volumes")
	sweep := flag.Bool("sweep", false, "measure repository parameters (hash, splitter, compression, parallelism) instead")
	volumes := flag.Int("volumes", 1000, "volumes of 1 MiB in the work-queue phase")
	flag.Parse()

	abs, err := filepath.Abs(*dir)
	if err != nil {
		fatal(err)
	}
	b := &bench{dir: abs, rounds: *rounds, volumes: *volumes, phases: map[string]bool{}}
	for _, p := range strings.Split(*only, ",") {
		b.phases[strings.TrimSpace(p)] = true
	}
	if err := b.setup(); err != nil {
		fatal(err)
	}
	if *sweep {
		err = b.sweep()
	} else {
		err = b.run()
	}
	if err != nil {
		fatal(err)
	}
}

// machine describes where the numbers come from.
func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	kv, _ := exec.Command("uname", "-r").Output()
	return fmt.Sprintf("%s, %d cores, Linux %s", cpu, numCPU(), strings.TrimSpace(string(kv)))
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/tests/kopiacli"
	"github.com/tidemark-dev/tidemark/tests/toolbuild"
)

const password = "benchmark-password"

func numCPU() int { return runtime.NumCPU() }

type bench struct {
	dir     string
	rounds  int
	volumes int
	phases  map[string]bool

	kopia string // the stock CLI
	self  string // this program, built, for mover processes
	data  []dataset
	work  string
}

func (b *bench) setup() error {
	b.work = filepath.Join(b.dir, "work")
	if err := os.RemoveAll(b.work); err != nil {
		return err
	}
	if err := os.MkdirAll(b.work, 0o755); err != nil {
		return err
	}
	if _, err := exec.LookPath("zstd"); err != nil {
		return fmt.Errorf("zstd is not installed (apt-get install zstd): %w", err)
	}
	v, err := toolbuild.ModuleVersion(kopiacli.Module)
	if err != nil {
		return err
	}
	logf("building (or finding in the cache) the kopia CLI %s", v)
	if b.kopia, err = toolbuild.Build(kopiacli.Program(v)); err != nil {
		return err
	}
	// Mover processes run this program, so build it rather than rely on
	// `go run`'s temporary binary staying put.
	b.self = filepath.Join(b.work, "benchmover")
	logf("building the mover binary")
	build := exec.Command("go", "build", "-o", b.self, "./tools/benchmover")
	build.Dir = moduleRoot()
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./tools/benchmover: %v\n%s", err, out)
	}
	for _, d := range []struct {
		name string
		gen  func(string) error
	}{{"mixed-1GiB", mixedData}, {"small-10k", smallFiles}} {
		ds, err := ensure(filepath.Join(b.dir, "data"), d.name, d.gen)
		if err != nil {
			return err
		}
		b.data = append(b.data, ds)
	}
	return nil
}

// moduleRoot is the directory of the project's go.mod.
func moduleRoot() string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "."
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// kopiaCLI runs the stock kopia CLI with a connection of its own.
type kopiaCLI struct {
	bin, dir string
}

func (k kopiaCLI) run(args ...string) (string, error) {
	out, _, err := k.runCPU(args...)
	return out, err
}

// runCPU is run, also returning the CPU time (user and system) kopia used.
func (k kopiaCLI) runCPU(args ...string) (string, time.Duration, error) {
	cmd := exec.Command(k.bin, append(args, "--config-file="+filepath.Join(k.dir, "kopia.config"),
		"--log-dir="+filepath.Join(k.dir, "logs"))...)
	cmd.Env = append(os.Environ(), "KOPIA_PASSWORD="+password, "KOPIA_CHECK_FOR_UPDATES=false",
		"KOPIA_PERSIST_CREDENTIALS_ON_CONNECT=false", "KOPIA_USE_KEYRING=false")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", 0, fmt.Errorf("kopia %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// timed runs fn and returns how long it took.
func timed(fn func() error) (time.Duration, error) {
	t := time.Now()
	err := fn()
	return time.Since(t), err
}

// shell runs a shell pipeline (for tar | zstd).
func shell(script string) error {
	cmd := exec.Command("sh", "-c", script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", script, err, out)
	}
	return nil
}

// diskUsage is the space the files under dir take.
func diskUsage(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// warm reads every file under dir so each tool starts with the data in
// the page cache (all of them then measure the same thing: CPU and
// writes, not the first read from disk).
func warm(dir string) {
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if f, err := os.Open(p); err == nil {
				_, _ = io.Copy(io.Discard, f)
				f.Close()
			}
		}
		return nil
	})
}

func syncDisk() { syscall.Sync() }

// ---------------------------------------------------------------------------
// results

type sample struct {
	d     time.Duration
	bytes int64 // stored size, where it applies
	extra float64
}

// results are samples by measurement name.
type results map[string][]sample

func (r results) add(name string, s sample) {
	r[name] = append(r[name], s)
	logf("  %-45s %8.2fs", name, s.d.Seconds())
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (r results) seconds(name string) float64 {
	var xs []float64
	for _, s := range r[name] {
		xs = append(xs, s.d.Seconds())
	}
	return median(xs)
}

func (r results) size(name string) int64 {
	var xs []float64
	for _, s := range r[name] {
		xs = append(xs, float64(s.bytes))
	}
	return int64(median(xs))
}

func (r results) extra(name string) float64 {
	var xs []float64
	for _, s := range r[name] {
		xs = append(xs, s.extra)
	}
	return median(xs)
}

// ratio is the median over rounds of a/b measured in the same round.
func (r results) ratio(a, b string) float64 {
	var xs []float64
	for i := range min(len(r[a]), len(r[b])) {
		if r[a][i].d > 0 {
			xs = append(xs, r[b][i].d.Seconds()/r[a][i].d.Seconds())
		}
	}
	return median(xs)
}

func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

func rate(bytes int64, secs float64) string {
	if secs == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f MB/s", float64(bytes)/secs/1e6)
}

// newRepoDir returns a fresh directory under the work directory.
func (b *bench) fresh(name string) string {
	p := filepath.Join(b.work, name)
	_ = os.RemoveAll(p)
	return p
}

func (b *bench) clean(paths ...string) {
	for _, p := range paths {
		_ = os.RemoveAll(p)
	}
}

// tuningByName are the variants -sweep measures.
func sweepVariants() []struct {
	name string
	t    repository.Tuning
} {
	none := []string{}
	return []struct {
		name string
		t    repository.Tuning
	}{
		{"kopia's defaults: BLAKE2B, BUZHASH, no compression", repository.Tuning{Hash: "BLAKE2B-256-128", Splitter: "DYNAMIC-4M-BUZHASH", Compression: "none", NeverCompress: none, ParallelUploadAboveSize: -1}},
		{"BLAKE3, BUZHASH, no compression", repository.Tuning{Hash: "BLAKE3-256-128", Splitter: "DYNAMIC-4M-BUZHASH", Compression: "none", NeverCompress: none, ParallelUploadAboveSize: -1}},
		{"BLAKE3, BUZHASH, zstd-fastest", repository.Tuning{Hash: "BLAKE3-256-128", Splitter: "DYNAMIC-4M-BUZHASH", Compression: "zstd-fastest", NeverCompress: none, ParallelUploadAboveSize: -1}},
		{"BLAKE3, BUZHASH, zstd-fastest, skip compressed types", repository.Tuning{Hash: "BLAKE3-256-128", Splitter: "DYNAMIC-4M-BUZHASH", Compression: "zstd-fastest", ParallelUploadAboveSize: -1}},
		{"BLAKE3, BUZHASH, s2-default, skip compressed types", repository.Tuning{Hash: "BLAKE3-256-128", Splitter: "DYNAMIC-4M-BUZHASH", Compression: "s2-default", ParallelUploadAboveSize: -1}},
		{"BLAKE3, BUZHASH, zstd-fastest, skip, parallel > 32 MiB", repository.Tuning{Hash: "BLAKE3-256-128", Splitter: "DYNAMIC-4M-BUZHASH", Compression: "zstd-fastest", ParallelUploadAboveSize: 32 << 20}},
		{"BLAKE3, BUZHASH, s2-default, skip, parallel > 32 MiB", repository.Tuning{Hash: "BLAKE3-256-128", Splitter: "DYNAMIC-4M-BUZHASH", Compression: "s2-default", ParallelUploadAboveSize: 32 << 20}},
		{"BLAKE3, RABINKARP, s2-default, skip, parallel > 32 MiB", repository.Tuning{Hash: "BLAKE3-256-128", Splitter: "DYNAMIC-4M-RABINKARP", Compression: "s2-default", ParallelUploadAboveSize: 32 << 20}},
		{"BLAKE2B, BUZHASH, s2-default, skip, parallel > 32 MiB", repository.Tuning{Hash: "BLAKE2B-256-128", Splitter: "DYNAMIC-4M-BUZHASH", Compression: "s2-default", ParallelUploadAboveSize: 32 << 20}},
		{"BLAKE3, BUZHASH, no compression, parallel > 32 MiB", repository.Tuning{Hash: "BLAKE3-256-128", Splitter: "DYNAMIC-4M-BUZHASH", Compression: "none", NeverCompress: none, ParallelUploadAboveSize: 32 << 20}},
	}
}

// sweep exports each data set into a fresh repository with each variant,
// in process, interleaved, and prints the medians.
func (b *bench) sweep() error {
	ctx := context.Background()
	res := results{}
	variants := sweepVariants()
	for round := range b.rounds {
		for _, ds := range b.data {
			warm(ds.Dir)
			for i, v := range variants {
				logf("sweep round %d, %s, %s", round+1, ds.Name, v.name)
				path := b.fresh("sweep-repo")
				cache := b.fresh("sweep-cache")
				r, err := repository.Open(ctx, repository.Config{Path: path, Password: password, CacheDir: cache, Tuning: v.t})
				if err != nil {
					return err
				}
				syncDisk()
				cpu0 := cpuTime()
				d, err := timed(func() error {
					var err error
					// With progress, as a mover exports (it estimates the
					// totals by walking the tree alongside).
					_, err = r.ExportDir(ctx, repository.ExportRequest{App: "bench/sweep", Volume: "data", RunID: "sweep", Dir: ds.Dir,
						Progress: func(repository.Progress) {}})
					return err
				})
				if err != nil {
					return err
				}
				cpu := cpuTime() - cpu0
				_ = r.Close(ctx)
				res.add(fmt.Sprintf("%s|%d", ds.Name, i), sample{d: d, bytes: diskUsage(path), extra: cpu.Seconds()})
				b.clean(path, cache)
			}
			// The stock CLI in the same round, for reference.
			k := kopiaCLI{bin: b.kopia, dir: b.fresh("sweep-kopia")}
			path := b.fresh("sweep-kopia-repo")
			if _, err := k.run("repository", "create", "filesystem", "--path="+path); err != nil {
				return err
			}
			syncDisk()
			var cpu time.Duration
			d, err := timed(func() error { _, c, err := k.runCPU("snapshot", "create", ds.Dir); cpu = c; return err })
			if err != nil {
				return err
			}
			res.add(ds.Name+"|cli", sample{d: d, bytes: diskUsage(path), extra: cpu.Seconds()})
			b.clean(path, k.dir)
		}
	}
	fmt.Printf("Repository parameters, measured with `go run ./tools/benchmover -sweep` (%s), median of %d interleaved rounds; export into a new filesystem repository, in process.\n\n", machine(), b.rounds)
	fmt.Printf("| variant |")
	for _, ds := range b.data {
		fmt.Printf(" %s: wall | vs CLI | CPU | stored |", ds.Name)
	}
	fmt.Printf("\n|---|")
	for range b.data {
		fmt.Printf("---|---|---|---|")
	}
	fmt.Println()
	for i, v := range variants {
		fmt.Printf("| %s |", v.name)
		for _, ds := range b.data {
			n := fmt.Sprintf("%s|%d", ds.Name, i)
			fmt.Printf(" %.2f s | %.2f× | %.2f s | %s |", res.seconds(n), res.ratio(n, ds.Name+"|cli"), res.extra(n), mib(res.size(n)))
		}
		fmt.Println()
	}
	fmt.Printf("| stock kopia CLI, defaults |")
	for _, ds := range b.data {
		n := ds.Name + "|cli"
		fmt.Printf(" %.2f s | 1.00× | %.2f s | %s |", res.seconds(n), res.extra(n), mib(res.size(n)))
	}
	fmt.Println()
	return nil
}

// lines sends each line read from r to fn.
func lines(r io.Reader, fn func(string)) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fn(sc.Text())
	}
}

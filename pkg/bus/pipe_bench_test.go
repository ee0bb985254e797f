package bus

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"syscall"
	"testing"
	"time"
)

// BenchmarkPipe streams 256 MiB through a pipe on the embedded server into
// io.Discard, for each message size, and reports the throughput and the
// process's CPU (both ends and the server) per GiB: what a logical
// restore pays for the pipe on top of the repository read and the command.
func BenchmarkPipe(b *testing.B) {
	data := bytes.Repeat(randomBytes(1<<20), 256)
	for _, size := range []int{64 << 10, 256 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("message=%dKiB", size>>10), func(b *testing.B) {
			old := pipeMessageSize
			pipeMessageSize = size
			defer func() { pipeMessageSize = old }()
			env := newTestEnv(b)
			b.SetBytes(int64(len(data)))
			var cpu time.Duration
			for i := range b.N {
				name := fmt.Sprintf("bench/%d", i)
				c0 := processCPU(b)
				wrote := make(chan error, 1)
				go func() {
					_, err := env.bus.WritePipe(context.Background(), name, bytes.NewReader(data))
					wrote <- err
				}()
				r := env.bus.ReadPipe(context.Background(), name, time.Minute)
				if n, err := io.Copy(io.Discard, r); err != nil || n != int64(len(data)) {
					b.Fatalf("copied %d bytes: %v", n, err)
				}
				r.Close()
				if err := <-wrote; err != nil {
					b.Fatal(err)
				}
				cpu += processCPU(b) - c0
			}
			b.ReportMetric(cpu.Seconds()/float64(b.N)*float64(1<<30)/float64(len(data)), "cpu-s/GiB")
		})
	}
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

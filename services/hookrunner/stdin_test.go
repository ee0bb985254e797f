package hookrunner

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A command reads everything fed into stdinStream, in order, and sees its
// end when the feeder closes.
func TestStdinStreamCarriesTheWholeStream(t *testing.T) {
	data := make([]byte, 3<<20+5)
	_, _ = rand.Read(data)
	stdin, feeder, err := stdinStream()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_, _ = feeder.Write(data)
		feeder.Close()
	}()
	cmd := exec.Command("sha256sum")
	cmd.Stdin = stdin
	out, err := cmd.Output()
	stdin.Close()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if got := strings.Fields(string(out)); len(got) == 0 || got[0] != hex.EncodeToString(sum[:]) {
		t.Fatalf("the command read %q, want the digest of the %d bytes fed", out, len(data))
	}
}

// A command that exits without reading all of its stdin makes the feeder's
// writes fail once the step closes its end, instead of blocking forever.
func TestStdinStreamFailsTheFeederOfAnExitedCommand(t *testing.T) {
	stdin, feeder, err := stdinStream()
	if err != nil {
		t.Fatal(err)
	}
	defer feeder.Close()
	cmd := exec.Command("head", "-c", "10")
	cmd.Stdin = stdin
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := feeder.Write(make([]byte, 64<<20))
		wrote <- err
	}()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	select {
	case err := <-wrote:
		if err == nil {
			t.Fatal("64 MiB were written into the stdin of a command that read 10 bytes")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the feeder is still blocked after the command exited")
	}
}

// readOnly hides a reader's WriteTo, as the step's stream reader was
// before, so os/exec copies it through its own 32 KiB buffer.
type readOnly struct{ io.Reader }

// BenchmarkStdinFeed feeds 64 MiB to a command that reads 4 KiB at a time
// and more slowly than it is fed, like pg_restore, and reports the CPU the
// feeding process spends: through the pipe os/exec makes, and through
// stdinStream.
func BenchmarkStdinFeed(b *testing.B) {
	data := make([]byte, 64<<20)
	_, _ = rand.Read(data)
	consumer := func() *exec.Cmd {
		return exec.Command("sh", "-c", "dd bs=4k status=none | gzip -1 > /dev/null")
	}
	for _, v := range []struct {
		name string
		run  func(b *testing.B)
	}{
		{"os-exec-pipe", func(b *testing.B) {
			cmd := consumer()
			cmd.Stdin = readOnly{bytes.NewReader(data)}
			if err := cmd.Run(); err != nil {
				b.Fatal(err)
			}
		}},
		{"socket-pair", func(b *testing.B) {
			stdin, feeder, err := stdinStream()
			if err != nil {
				b.Fatal(err)
			}
			cmd := consumer()
			cmd.Stdin = stdin
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			stdin.Close()
			if _, err := feeder.Write(data); err != nil {
				b.Fatal(err)
			}
			feeder.Close()
			if err := cmd.Wait(); err != nil {
				b.Fatal(err)
			}
		}},
	} {
		b.Run(v.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			var cpu time.Duration
			for range b.N {
				c0 := selfCPU(b)
				v.run(b)
				cpu += selfCPU(b) - c0
			}
			b.ReportMetric(cpu.Seconds()/float64(b.N), "feeder-cpu-s")
		})
	}
}

func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

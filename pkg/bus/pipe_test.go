package bus

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"hash/crc32"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// pipeEnv shrinks the pipe's messages, window and clocks so each case
// shows within a test's patience, on a real embedded server.
func pipeEnv(t *testing.T) *testEnv {
	t.Helper()
	oldSize, oldWindow, oldKeepalive := pipeMessageSize, pipeWindow, pipeKeepalive
	oldReader, oldReaderWait, oldStall, oldPoll := pipeReaderTimeout, pipeReaderWait, pipeStallTimeout, pipeOpenPoll
	pipeMessageSize, pipeWindow, pipeKeepalive = 64<<10, 2, 50*time.Millisecond
	pipeReaderTimeout, pipeReaderWait, pipeStallTimeout, pipeOpenPoll = time.Second, time.Minute, time.Minute, 100*time.Millisecond
	t.Cleanup(func() {
		pipeMessageSize, pipeWindow, pipeKeepalive = oldSize, oldWindow, oldKeepalive
		pipeReaderTimeout, pipeReaderWait, pipeStallTimeout, pipeOpenPoll = oldReader, oldReaderWait, oldStall, oldPoll
	})
	return newTestEnv(t)
}

// background runs f until the returned function cancels it and waits: a
// writer left blocked must not outlive its test (it reads the settings the
// next test changes).
func background(t *testing.T, f func(ctx context.Context)) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f(ctx) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

type pipeResult struct {
	info PipeInfo
	err  error
}

func writeInBackground(t *testing.T, b *Bus, name string, r io.Reader) <-chan pipeResult {
	t.Helper()
	res := make(chan pipeResult, 1)
	background(t, func(ctx context.Context) {
		info, err := b.WritePipe(ctx, name, r)
		res <- pipeResult{info, err}
	})
	return res
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// countingReader counts what the writer has taken from its source.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// The reader gets exactly the writer's bytes, and the writer stays within
// the reader's credit: while the reader takes nothing, the writer stops
// reading its source after the window.
func TestPipeStreamsWithinItsWindow(t *testing.T) {
	env := pipeEnv(t)
	ctx := context.Background()
	data := randomBytes(1<<20 + 123) // 16 messages and a bit
	src := &countingReader{r: bytes.NewReader(data)}
	wrote := writeInBackground(t, env.bus, "dumps/r1/db", src)

	r := env.bus.ReadPipe(ctx, "dumps/r1/db", time.Minute)
	defer r.Close()
	first := make([]byte, 10)
	if _, err := io.ReadFull(r, first); err != nil {
		t.Fatal(err)
	}
	// The reader holds one message and has credit for pipeWindow more; the
	// writer may have read one further message from its source, waiting
	// for credit to send it.
	limit := int64((1 + pipeWindow + 1) * (pipeMessageSize - pipeHeader))
	time.Sleep(300 * time.Millisecond)
	if n := src.n.Load(); n > limit {
		t.Fatalf("the writer took %d bytes from its source with the reader holding one message (limit %d)", n, limit)
	}
	select {
	case res := <-wrote:
		t.Fatalf("the writer finished with the reader taking nothing: %v", res.err)
	default:
	}

	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if got := append(first, rest...); !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, want the %d written", len(got), len(data))
	}
	res := <-wrote
	if res.err != nil {
		t.Fatal(res.err)
	}
	if want := crc32.Checksum(data, castagnoli); res.info.Size != int64(len(data)) || res.info.CRC32C != want || res.info.Messages != 17 {
		t.Errorf("writer's info = %+v, want %d bytes in 17 messages, CRC %x", res.info, len(data), want)
	}
}

// io.Copy (as os/exec uses for a command's stdin) takes the messages
// through WriteTo, and ends cleanly only at the verified end.
func TestPipeWriteToDeliversTheWholeStream(t *testing.T) {
	env := pipeEnv(t)
	data := randomBytes(300<<10 + 7)
	wrote := writeInBackground(t, env.bus, "dumps/r8/db", bytes.NewReader(data))
	r := env.bus.ReadPipe(context.Background(), "dumps/r8/db", time.Minute)
	defer r.Close()
	if _, ok := r.(io.WriterTo); !ok {
		t.Fatal("the pipe reader does not implement io.WriterTo")
	}
	var got bytes.Buffer
	if n, err := io.Copy(&got, r); err != nil || n != int64(len(data)) || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("copied %d bytes (%v), want the %d written", n, err, len(data))
	}
	if res := <-wrote; res.err != nil {
		t.Fatal(res.err)
	}
}

type failingReader struct{ left int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.left <= 0 {
		return 0, errors.New("repository read failed: checksum mismatch")
	}
	n := min(len(p), f.left)
	f.left -= n
	return n, nil
}

// A writer that fails makes the reader fail with its reason, not end
// cleanly with a truncated stream.
func TestPipeWriterFailureReachesTheReader(t *testing.T) {
	env := pipeEnv(t)
	r := env.bus.ReadPipe(context.Background(), "dumps/r2/db", time.Minute)
	defer r.Close()
	wrote := writeInBackground(t, env.bus, "dumps/r2/db", &failingReader{left: 100 << 10})
	_, err := io.ReadAll(r)
	if !errors.Is(err, ErrPipeWriterFailed) || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("reader error = %v, want the writer's failure", err)
	}
	if res := <-wrote; res.err == nil || !strings.Contains(res.err.Error(), "checksum mismatch") {
		t.Fatalf("writer error = %v", res.err)
	}
}

// A reader that gives up (its command failed) stops the writer instead of
// leaving it waiting for credit.
func TestPipeReaderGivingUpStopsTheWriter(t *testing.T) {
	env := pipeEnv(t)
	wrote := writeInBackground(t, env.bus, "dumps/r3/db", bytes.NewReader(make([]byte, 1<<20)))
	r := env.bus.ReadPipe(context.Background(), "dumps/r3/db", time.Minute)
	if _, err := io.ReadFull(r, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-wrote:
		if !errors.Is(res.err, ErrPipeAborted) {
			t.Fatalf("writer error = %v, want ErrPipeAborted", res.err)
		}
	case <-time.After(pipeReaderTimeout / 2):
		t.Fatal("the writer did not stop when its reader closed the pipe")
	}
}

// A reader that disappears without a word (its process died, its
// connection dropped) fails the writer once it has been silent for
// pipeReaderTimeout, not after the whole restore's timeout.
func TestPipeWriterNoticesItsReaderIsGone(t *testing.T) {
	env := pipeEnv(t)
	nc, err := env.srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	other, err := New(nc)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	wrote := writeInBackground(t, env.bus, "dumps/r9/db", bytes.NewReader(make([]byte, 1<<20)))
	r := other.ReadPipe(context.Background(), "dumps/r9/db", time.Minute)
	if _, err := io.ReadFull(r, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	res := <-wrote
	if !errors.Is(res.err, ErrPipeReaderGone) || !strings.Contains(res.err.Error(), "has not been heard from") {
		t.Fatalf("writer error = %v, want ErrPipeReaderGone", res.err)
	}
	if took := time.Since(start); took > 5*pipeReaderTimeout {
		t.Errorf("the writer took %s to notice (timeout %s)", took, pipeReaderTimeout)
	}
}

// A reader that stays alive but consumes slowly (pg_restore building an
// index) is not taken for gone: its heartbeat keeps the writer waiting.
func TestPipeSlowReaderIsNotTakenForGone(t *testing.T) {
	env := pipeEnv(t)
	data := randomBytes(400 << 10)
	wrote := writeInBackground(t, env.bus, "dumps/r10/db", bytes.NewReader(data))
	r := env.bus.ReadPipe(context.Background(), "dumps/r10/db", time.Minute)
	defer r.Close()
	first := make([]byte, 10)
	if _, err := io.ReadFull(r, first); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * pipeReaderTimeout)
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(first, rest...), data) {
		t.Fatal("the stream differs from what was written")
	}
	if res := <-wrote; res.err != nil {
		t.Fatalf("writer error = %v after a slow reader", res.err)
	}
}

// blockingReader yields some bytes, then blocks like a repository read
// that hangs, until released; then it yields as many bytes again.
type blockingReader struct {
	left    int
	release chan struct{}
	after   int
}

func (b *blockingReader) Read(p []byte) (int, error) {
	if b.left == 0 && b.after > 0 {
		<-b.release
		b.left, b.after = b.after, 0
	}
	if b.left == 0 {
		return 0, io.EOF
	}
	n := min(len(p), b.left)
	b.left -= n
	return n, nil
}

// A writer that stalls mid-stream fails the reader within
// pipeStallTimeout with a reason, instead of leaving the command waiting
// on its stdin.
func TestPipeReaderNoticesAStalledWriter(t *testing.T) {
	env := pipeEnv(t)
	pipeStallTimeout = 500 * time.Millisecond
	src := &blockingReader{left: 100 << 10, release: make(chan struct{}), after: 100 << 10}
	wrote := writeInBackground(t, env.bus, "dumps/r11/db", src)
	r := env.bus.ReadPipe(context.Background(), "dumps/r11/db", time.Minute)
	start := time.Now()
	got, err := io.ReadAll(r)
	if !errors.Is(err, ErrPipeWriterGone) || !strings.Contains(err.Error(), "stalled") {
		t.Fatalf("reader error = %v after %d bytes, want ErrPipeWriterGone", err, len(got))
	}
	if took := time.Since(start); took > 5*pipeStallTimeout {
		t.Errorf("the reader took %s to notice (timeout %s)", took, pipeStallTimeout)
	}
	_ = r.Close()
	close(src.release)
	// The reader told the writer why it gave up: a writer that comes back
	// to life does not finish a stream nobody takes.
	if res := <-wrote; !errors.Is(res.err, ErrPipeAborted) || !strings.Contains(res.err.Error(), "stalled") {
		t.Fatalf("writer error = %v, want ErrPipeAborted with the reader's reason", res.err)
	}
}

// A writer whose reader never comes fails after pipeReaderWait, saying so,
// instead of holding a data mover forever.
func TestPipeWriterWithoutAReader(t *testing.T) {
	env := pipeEnv(t)
	pipeReaderWait = 300 * time.Millisecond
	_, err := env.bus.WritePipe(context.Background(), "dumps/r12/db", bytes.NewReader([]byte("x")))
	if !errors.Is(err, ErrPipeReaderGone) || !strings.Contains(err.Error(), "did not start") {
		t.Fatalf("err = %v", err)
	}
}

// A second writer (a redelivered import after a crash) must not feed a
// reader that may already have consumed part of the first attempt.
func TestPipeRefusesASecondWriter(t *testing.T) {
	env := pipeEnv(t)
	first := writeInBackground(t, env.bus, "dumps/r4/db", bytes.NewReader(make([]byte, 1<<20)))
	r := env.bus.ReadPipe(context.Background(), "dumps/r4/db", time.Minute)
	defer r.Close()
	if _, err := io.ReadFull(r, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if _, err := env.bus.WritePipe(context.Background(), "dumps/r4/db", bytes.NewReader([]byte("again"))); !errors.Is(err, ErrPipeRestarted) {
		t.Fatalf("second writer = %v, want ErrPipeRestarted", err)
	}
	// The refused writer did not disturb the first one's stream.
	if rest, err := io.ReadAll(r); err != nil || len(rest) != 1<<20-1000 {
		t.Fatalf("the first stream after a refused writer: %d bytes, %v", len(rest), err)
	}
	if res := <-first; res.err != nil {
		t.Fatal(res.err)
	}
}

// A reader whose artifact never starts arriving fails after startWait,
// saying so.
func TestPipeReaderWithoutAWriter(t *testing.T) {
	env := pipeEnv(t)
	r := env.bus.ReadPipe(context.Background(), "dumps/r5/db", 300*time.Millisecond)
	defer r.Close()
	if _, err := io.ReadAll(r); !errors.Is(err, ErrPipeWriterGone) || !strings.Contains(err.Error(), "has not been imported") {
		t.Fatalf("err = %v", err)
	}
}

// A reader that starts first is found by a writer that comes later.
func TestPipeReaderWaitsForALateWriter(t *testing.T) {
	env := pipeEnv(t)
	pipeOpenPoll = time.Minute // only the writer's hello can wake the reader in time
	r := env.bus.ReadPipe(context.Background(), "dumps/r13/db", time.Minute)
	defer r.Close()
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(r); got <- b }()
	time.Sleep(300 * time.Millisecond)
	wrote := writeInBackground(t, env.bus, "dumps/r13/db", strings.NewReader("late but whole"))
	select {
	case b := <-got:
		if string(b) != "late but whole" {
			t.Fatalf("read %q", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the reader did not notice the writer's arrival")
	}
	if res := <-wrote; res.err != nil {
		t.Fatal(res.err)
	}
}

// A second reader (a redelivered restore step) fails at once instead of
// waiting for messages the first one consumed, and does not disturb the
// first.
func TestPipeRefusesASecondReader(t *testing.T) {
	env := pipeEnv(t)
	ctx := context.Background()
	data := randomBytes(1 << 20)
	wrote := writeInBackground(t, env.bus, "dumps/r6/db", bytes.NewReader(data))
	first := env.bus.ReadPipe(ctx, "dumps/r6/db", time.Minute)
	defer first.Close()
	head := make([]byte, 1000)
	if _, err := io.ReadFull(first, head); err != nil {
		t.Fatal(err)
	}
	second := env.bus.ReadPipe(ctx, "dumps/r6/db", time.Minute)
	if _, err := second.Read(make([]byte, 10)); !errors.Is(err, ErrPipeRestarted) || !strings.Contains(err.Error(), "earlier attempt") {
		t.Fatalf("second reader = %v, want ErrPipeRestarted", err)
	}
	second.Close()
	rest, err := io.ReadAll(first)
	if err != nil || !bytes.Equal(append(head, rest...), data) {
		t.Fatalf("the first reader after a refused second one: %d bytes, %v", len(head)+len(rest), err)
	}
	if res := <-wrote; res.err != nil {
		t.Fatalf("writer error = %v", res.err)
	}
}

// fakeWriter plays the writer's side of the protocol by hand, so tests can
// send what a healthy writer never would: a gap, a short or altered end.
type fakeWriter struct {
	t       *testing.T
	nc      *nats.Conn
	reader  chan string
	control chan []byte
}

func newFakeWriter(t *testing.T, env *testEnv, name string) *fakeWriter {
	f := &fakeWriter{t: t, nc: env.nc, reader: make(chan string, 1), control: make(chan []byte, 100)}
	inbox := env.nc.NewInbox()
	csub, err := env.nc.Subscribe(inbox, func(m *nats.Msg) { f.control <- m.Data })
	if err != nil {
		t.Fatal(err)
	}
	osub, err := env.nc.Subscribe(pipeSubject(name)+".open", func(m *nats.Msg) {
		var req pipeOpen
		_ = json.Unmarshal(m.Data, &req)
		raw, _ := json.Marshal(pipeOpened{Control: inbox})
		_ = m.Respond(raw)
		f.reader <- req.Reader
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = csub.Unsubscribe(); _ = osub.Unsubscribe() })
	return f
}

// send waits for the reader to open, then publishes msgs to it.
func (f *fakeWriter) send(msgs ...[]byte) {
	reader := <-f.reader
	for _, m := range msgs {
		if err := f.nc.Publish(reader, m); err != nil {
			f.t.Error(err)
		}
	}
}

// aborted reports whether the reader told the writer to stop.
func (f *fakeWriter) aborted() string {
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-f.control:
			if kind, _, body, _ := parsePipeMessage(m); kind == pipeAbort {
				return string(body)
			}
		case <-deadline:
			return ""
		}
	}
}

func endMessage(seq uint64, info PipeInfo) []byte {
	raw, _ := json.Marshal(info)
	return pipeMessage(pipeEnd, seq, raw)
}

// The end is explicit and checked: a stream that lost a message, was cut
// short or altered on the way is never passed on as complete, and the
// writer is told.
func TestPipeNeverTakesAnIncompleteStreamForComplete(t *testing.T) {
	a, b, c := []byte("first part;"), []byte("second part;"), []byte("third part")
	whole := append(append(append([]byte{}, a...), b...), c...)
	sum := crc32.Checksum(whole, castagnoli)
	for _, tc := range []struct {
		name string
		msgs [][]byte
		want string
	}{
		{"a lost message", [][]byte{pipeMessage(pipeData, 0, a), pipeMessage(pipeData, 2, c), endMessage(3, PipeInfo{Size: int64(len(whole)), Messages: 3, CRC32C: sum})}, "message 2 arrived where 1 was due"},
		{"an end after fewer messages than it counts", [][]byte{pipeMessage(pipeData, 0, a), pipeMessage(pipeData, 1, b), endMessage(2, PipeInfo{Size: int64(len(whole)), Messages: 3, CRC32C: sum})}, "the writer sent"},
		{"altered content", [][]byte{pipeMessage(pipeData, 0, a), pipeMessage(pipeData, 1, bytes.ToUpper(b)), pipeMessage(pipeData, 2, c), endMessage(3, PipeInfo{Size: int64(len(whole)), Messages: 3, CRC32C: sum})}, "content differs"},
		{"no end at all", [][]byte{pipeMessage(pipeData, 0, a), pipeMessage(pipeData, 1, b), pipeMessage(pipeData, 2, c)}, "stalled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := pipeEnv(t)
			pipeStallTimeout = 500 * time.Millisecond
			f := newFakeWriter(t, env, "dumps/r7/db")
			go f.send(tc.msgs...)
			r := env.bus.ReadPipe(context.Background(), "dumps/r7/db", time.Minute)
			defer r.Close()
			_, err := io.ReadAll(r)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("reader error = %v, want one saying %q", err, tc.want)
			}
			if _, err := r.Read(make([]byte, 1)); err == nil || err == io.EOF {
				t.Fatalf("a later read returned %v", err)
			}
			if reason := f.aborted(); !strings.Contains(reason, tc.want) {
				t.Fatalf("the writer was told %q", reason)
			}
		})
	}
	// The same messages, whole, are accepted.
	env := pipeEnv(t)
	f := newFakeWriter(t, env, "dumps/r7/db")
	go f.send(pipeMessage(pipeData, 0, a), pipeMessage(pipeData, 1, b), pipeMessage(pipeData, 2, c), endMessage(3, PipeInfo{Size: int64(len(whole)), Messages: 3, CRC32C: sum}))
	r := env.bus.ReadPipe(context.Background(), "dumps/r7/db", time.Minute)
	defer r.Close()
	if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, whole) {
		t.Fatalf("read %q, %v", got, err)
	}
}

// Many pipes at once on one connection stay apart.
func TestPipesAreIndependent(t *testing.T) {
	env := pipeEnv(t)
	var wg sync.WaitGroup
	for i := range 4 {
		name := "dumps/many/" + string(rune('a'+i))
		data := randomBytes(200<<10 + i)
		wrote := writeInBackground(t, env.bus, name, bytes.NewReader(data))
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := env.bus.ReadPipe(context.Background(), name, time.Minute)
			defer r.Close()
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("%s: read %d bytes (%v), want %d", name, len(got), err, len(data))
			}
			if res := <-wrote; res.err != nil {
				t.Errorf("%s: %v", name, res.err)
			}
		}()
	}
	wg.Wait()
}

package bus

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func pipeEnv(t *testing.T) Objects {
	t.Helper()
	old := []any{pipeChunkSize, pipeWindow}
	pipeChunkSize, pipeWindow = 64<<10, 2
	t.Cleanup(func() { pipeChunkSize, pipeWindow = old[0].(int), old[1].(int) })
	env := newTestEnv(t)
	objs, err := env.bus.ObjectStore(context.Background(), BucketDumps)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// background runs f until the returned function cancels it and waits: a
// writer left blocked must not outlive its test (it reads the chunk
// settings the next test changes).
func background(t *testing.T, f func(ctx context.Context)) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f(ctx) }()
	return func() { cancel(); <-done }
}

func exists(t *testing.T, objs Objects, name string) bool {
	t.Helper()
	_, err := objs.Stat(context.Background(), name)
	if err != nil && !errors.Is(err, ErrObjectNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

// The reader gets the writer's bytes while the writer still writes, and
// the bucket holds at most the window: the writer waits for the reader.
func TestPipeStreamsWithinItsWindow(t *testing.T) {
	objs := pipeEnv(t)
	ctx := context.Background()
	data := make([]byte, 1<<20+123) // 16 chunks and a bit
	_, _ = rand.Read(data)
	wrote := make(chan error, 1)
	go func() {
		_, err := WritePipe(ctx, objs, "dumps/r1/db", bytes.NewReader(data))
		wrote <- err
	}()

	// Nobody reads yet: the writer stops at the window.
	for !exists(t, objs, pipeChunk("dumps/r1/db", pipeWindow-1)) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if exists(t, objs, pipeChunk("dumps/r1/db", pipeWindow)) {
		t.Fatal("the writer went past its window with nobody reading")
	}
	select {
	case err := <-wrote:
		t.Fatalf("the writer finished with nobody reading: %v", err)
	default:
	}

	r := ReadPipe(ctx, objs, "dumps/r1/db", time.Minute)
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, want the %d written", len(got), len(data))
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	for _, o := range []string{pipeChunk("dumps/r1/db", 0), pipeChunk("dumps/r1/db", 16), "dumps/r1/db/end", "dumps/r1/db/writer", "dumps/r1/db/reader", "dumps/r1/db/abort"} {
		if exists(t, objs, o) {
			t.Errorf("%s is left in the bucket", o)
		}
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
	objs := pipeEnv(t)
	ctx := context.Background()
	r := ReadPipe(ctx, objs, "dumps/r2/db", time.Minute)
	defer r.Close()
	wrote := make(chan error, 1)
	go func() {
		_, err := WritePipe(ctx, objs, "dumps/r2/db", &failingReader{left: 100 << 10})
		wrote <- err
	}()
	_, err := io.ReadAll(r)
	if !errors.Is(err, ErrPipeWriterFailed) || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("reader error = %v, want the writer's failure", err)
	}
	if err := <-wrote; err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("writer error = %v", err)
	}
}

// A reader that gives up (its command failed) stops the writer instead of
// leaving it waiting forever for room.
func TestPipeReaderGivingUpStopsTheWriter(t *testing.T) {
	objs := pipeEnv(t)
	ctx := context.Background()
	wrote := make(chan error, 1)
	go func() {
		_, err := WritePipe(ctx, objs, "dumps/r3/db", bytes.NewReader(make([]byte, 1<<20)))
		wrote <- err
	}()
	r := ReadPipe(ctx, objs, "dumps/r3/db", time.Minute)
	if _, err := io.ReadFull(r, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; !errors.Is(err, ErrPipeAborted) {
		t.Fatalf("writer error = %v, want ErrPipeAborted", err)
	}
}

// A second writer (a redelivered import after a crash) must not feed a
// reader that may already have consumed part of the first attempt.
func TestPipeRefusesASecondWriter(t *testing.T) {
	objs := pipeEnv(t)
	ctx := context.Background()
	stopFirst := background(t, func(ctx context.Context) {
		_, _ = WritePipe(ctx, objs, "dumps/r4/db", bytes.NewReader(make([]byte, 1<<20)))
	})
	defer stopFirst()
	for !exists(t, objs, "dumps/r4/db/writer") {
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := WritePipe(ctx, objs, "dumps/r4/db", bytes.NewReader([]byte("again"))); !errors.Is(err, ErrPipeRestarted) {
		t.Fatalf("second writer = %v, want ErrPipeRestarted", err)
	}
}

// A reader whose artifact never starts arriving fails after startWait,
// saying so.
func TestPipeReaderWithoutAWriter(t *testing.T) {
	objs := pipeEnv(t)
	r := ReadPipe(context.Background(), objs, "dumps/r5/db", 300*time.Millisecond)
	defer r.Close()
	if _, err := io.ReadAll(r); err == nil || !strings.Contains(err.Error(), "has not been imported") {
		t.Fatalf("err = %v", err)
	}
}

// A second reader (a redelivered restore step) fails at once instead of
// waiting for chunks the first one consumed.
func TestPipeRefusesASecondReader(t *testing.T) {
	objs := pipeEnv(t)
	ctx := context.Background()
	stopWriter := background(t, func(ctx context.Context) {
		_, _ = WritePipe(ctx, objs, "dumps/r6/db", bytes.NewReader(make([]byte, 1<<20)))
	})
	defer stopWriter()
	first := ReadPipe(ctx, objs, "dumps/r6/db", time.Minute)
	if _, err := io.ReadFull(first, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	second := ReadPipe(ctx, objs, "dumps/r6/db", time.Minute)
	if _, err := second.Read(make([]byte, 10)); !errors.Is(err, ErrPipeRestarted) {
		t.Fatalf("second reader = %v, want ErrPipeRestarted", err)
	}
	second.Close()
	// The refused reader did not stop the stream of the first.
	if exists(t, objs, "dumps/r6/db/abort") {
		t.Error("a refused second reader aborted the first one's stream")
	}
	first.Close()
}

// racingObjects plays a writer that finishes between the reader's look for
// a chunk (not there yet) and its look for the end (there already).
type racingObjects struct {
	Objects
	chunk  string
	finish func()
	once   bool
}

func (r *racingObjects) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	rc, err := r.Objects.Get(ctx, name)
	if name == r.chunk && errors.Is(err, ErrObjectNotFound) && !r.once {
		r.once = true
		r.finish()
	}
	return rc, err
}

func TestPipeReaderSeesAChunkWrittenJustBeforeTheEnd(t *testing.T) {
	objs := pipeEnv(t)
	ctx := context.Background()
	data := []byte("the whole stream, in one chunk")
	sum := sha256.Sum256(data)
	end, _ := json.Marshal(PipeInfo{Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:]), Chunks: 1})
	name := "dumps/r7/db"
	racing := &racingObjects{Objects: objs, chunk: pipeChunk(name, 0), finish: func() {
		for obj, content := range map[string][]byte{pipeChunk(name, 0): data, name + "/end": end} {
			if _, err := objs.Put(ctx, obj, bytes.NewReader(content)); err != nil {
				t.Error(err)
			}
		}
	}}
	r := ReadPipe(ctx, racing, name, time.Minute)
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %q, %v; want the stream", got, err)
	}
}

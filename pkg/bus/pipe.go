package bus

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// A pipe streams one large artifact from one service to another while both
// run: a restore streams a dump from the repository (a data mover) into a
// command's stdin (the hookrunner), which may be on another host. The
// bytes travel as core NATS messages, so they cross only the servers'
// memory: no JetStream store, no per-object digest, no copy on disk. The
// chunked object-store pipe this replaces spent most of a logical
// restore's Tidemark CPU on those (docs/benchmarks.md, "Logical restore").
//
// Core NATS delivers at most once and keeps no state, so the pipe brings
// its own: the reader grants credit (how many messages it can take), the
// writer never sends beyond it, every message is numbered, and the end
// message carries the size, count and CRC-32C of the whole stream, so a
// lost or altered message fails the stream instead of truncating it.
//
// Subjects, under PipeSubjectPrefix + a hash of the pipe's name:
//   - <p>.open: the writer answers requests here. A reader asks to open,
//     naming its private data inbox and its first credit; the writer
//     accepts the first reader only. A starting writer first asks whether
//     another writer already answers (a probe).
//   - <p>.hello: the writer announces itself, waking a reader that waits.
//   - the reader's data inbox: data, then end or error, from the writer.
//   - the writer's control inbox: credit (also sent every pipeKeepalive,
//     as the reader's heartbeat), done (the end was verified) or abort.

// PipeSubjectPrefix starts the subjects of every pipe; NATS permissions
// must let the data mover and the hookrunner publish and subscribe there
// and on their inboxes (_INBOX.>).
const PipeSubjectPrefix = "tidemark.pipe."

var (
	// pipeMessageSize bounds a data message, header included; the
	// server's max_payload may lower it. Of 64 KiB, 256 KiB and 1 MiB,
	// 256 KiB cost the least CPU per byte in BenchmarkPipe (a few percent
	// less than 1 MiB, about 10% less than 64 KiB), and it keeps the
	// window's memory small.
	pipeMessageSize = 256 << 10
	// pipeWindow is how many messages the writer may have sent that the
	// reader has not taken yet: the memory a pipe holds in flight (4 MiB),
	// enough to cover a repository read of a whole content.
	pipeWindow = 16
	// pipeKeepalive is how often a reader repeats its credit, which is
	// also how the writer knows it is alive while it consumes slowly.
	pipeKeepalive = time.Second
	// pipeReaderTimeout is how long a writer waits without hearing from
	// its reader before it takes the reader for gone.
	pipeReaderTimeout = 30 * time.Second
	// pipeReaderWait bounds how long a writer waits for a reader to open
	// the pipe (the step may queue behind other hook work). Core NATS
	// keeps no trace of a reader that gave up before the writer came: the
	// writer cannot tell it from one not started yet, and waits this long.
	pipeReaderWait = 30 * time.Minute
	// pipeStallTimeout is how long a reader waits for the next message,
	// with credit granted, before it takes the writer for stalled or gone.
	pipeStallTimeout = 2 * time.Minute
	// pipeOpenPoll is how often a reader retries opening a pipe whose
	// writer has not appeared; the writer's hello usually wakes it sooner.
	pipeOpenPoll = time.Second
)

var (
	// ErrPipeAborted: the reader gave up (its command failed, or what it
	// received was incomplete), so the writer stopped.
	ErrPipeAborted = errors.New("bus: the pipe's reader gave up")
	// ErrPipeRestarted: a second writer or reader found the pipe already
	// served by an earlier attempt. Part of the stream may already be
	// consumed, and it cannot be taken back, so the transfer must start
	// over from its beginning.
	ErrPipeRestarted = errors.New("bus: the pipe is already served by an earlier attempt")
	// ErrPipeWriterFailed: the writer reported a failure; the reader's
	// stream is incomplete.
	ErrPipeWriterFailed = errors.New("bus: the pipe's writer failed")
	// ErrPipeReaderGone: no reader opened the pipe in time, or the reader
	// went silent mid-stream.
	ErrPipeReaderGone = errors.New("bus: the pipe's reader never came or went away")
	// ErrPipeWriterGone: no writer served the pipe in time, or the writer
	// stopped sending mid-stream.
	ErrPipeWriterGone = errors.New("bus: the pipe's writer never came or went away")
	// ErrPipeCorrupt: messages were lost, or the stream does not match
	// the writer's end message. It is never passed on as complete.
	ErrPipeCorrupt = errors.New("bus: the pipe's stream arrived incomplete or altered")
)

// Pipes streams artifacts between services while both run.
type Pipes interface {
	// WritePipe streams everything r yields into the pipe name once a
	// reader opened it, and returns when the reader has verified the end.
	WritePipe(ctx context.Context, name string, r io.Reader) (PipeInfo, error)
	// ReadPipe returns the stream written into the pipe name.
	ReadPipe(ctx context.Context, name string, startWait time.Duration) io.ReadCloser
}

var _ Pipes = (*Bus)(nil)

// PipeInfo describes a stream that went through a pipe.
type PipeInfo struct {
	Size     int64  `json:"size"`
	Messages uint64 `json:"messages"`
	CRC32C   uint32 `json:"crc32c"`
}

// Message kinds, the first byte of every pipe message.
const (
	pipeData   byte = 'd' // writer: a numbered piece of the stream
	pipeEnd    byte = 'e' // writer: PipeInfo, numbered after the last piece
	pipeError  byte = 'x' // writer: why the stream failed
	pipeCredit byte = 'c' // reader: how many data messages it can take in all
	pipeDone   byte = 'f' // reader: the end matched
	pipeAbort  byte = 'a' // reader: why it gave up
)

// pipeHeader is a message's kind and a big-endian number: the sequence of
// a writer's message, the credit of a reader's.
const pipeHeader = 9

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func pipeSubject(name string) string {
	sum := sha256.Sum256([]byte(name))
	return PipeSubjectPrefix + hex.EncodeToString(sum[:16])
}

func pipeMessage(kind byte, n uint64, body []byte) []byte {
	m := make([]byte, pipeHeader+len(body))
	m[0] = kind
	binary.BigEndian.PutUint64(m[1:pipeHeader], n)
	copy(m[pipeHeader:], body)
	return m
}

func parsePipeMessage(m []byte) (kind byte, n uint64, body []byte, ok bool) {
	if len(m) < pipeHeader {
		return 0, 0, nil, false
	}
	return m[0], binary.BigEndian.Uint64(m[1:pipeHeader]), m[pipeHeader:], true
}

// pipeOpen is a request on <p>.open: a reader's, or a writer's probe.
type pipeOpen struct {
	Reader string `json:"reader,omitempty"` // the reader's data inbox
	Credit uint64 `json:"credit,omitempty"`
	Probe  bool   `json:"probe,omitempty"`
}

// pipeOpened answers it: the writer's control inbox, or why not.
type pipeOpened struct {
	Control string `json:"control,omitempty"`
	Refused string `json:"refused,omitempty"`
}

// WritePipe streams everything r yields into the pipe name. It waits up to
// pipeReaderWait for a reader before it reads r at all (so a source that
// fails at once still reaches a reader with its reason), sends no more
// than the reader can take, and returns once the reader has checked the
// end. It returns ErrPipeAborted if the reader gives up and
// ErrPipeReaderGone if it never comes or goes silent; on any other error,
// the reader is told the stream failed.
func (b *Bus) WritePipe(ctx context.Context, name string, r io.Reader) (PipeInfo, error) {
	w := &pipeWriter{nc: b.nc, name: name, subject: pipeSubject(name), wake: make(chan struct{}, 1)}
	if err := w.open(ctx); err != nil {
		return PipeInfo{}, err
	}
	defer w.close()
	if err := w.waitForReader(ctx); err != nil {
		return PipeInfo{}, err
	}
	info, err := w.stream(ctx, r)
	if err != nil && !errors.Is(err, ErrPipeAborted) && !errors.Is(err, ErrPipeReaderGone) {
		// Without this the reader would wait pipeStallTimeout and then
		// blame the wrong cause.
		_ = w.nc.Publish(w.reader, pipeMessage(pipeError, 0, []byte(err.Error())))
	}
	return info, err
}

type pipeWriter struct {
	nc      *nats.Conn
	name    string
	subject string
	control string // this writer's control inbox
	subs    []*nats.Subscription
	wake    chan struct{}

	mu     sync.Mutex
	reader string // the accepted reader's data inbox
	credit uint64
	heard  time.Time
	done   bool
	abort  string
}

func (w *pipeWriter) open(ctx context.Context) error {
	// A second writer (a redelivered import after a crash) must not feed a
	// reader that may already have consumed part of the first attempt.
	probe, _ := json.Marshal(pipeOpen{Probe: true})
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err := w.nc.RequestWithContext(pctx, w.subject+".open", probe)
	cancel()
	switch {
	case err == nil:
		return fmt.Errorf("%w: another writer is streaming %s", ErrPipeRestarted, w.name)
	case ctx.Err() != nil:
		return ctx.Err()
	case !errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("bus: pipe %s: looking for another writer: %w", w.name, err)
	}
	w.control = w.nc.NewInbox()
	for _, s := range []struct {
		subject string
		handle  nats.MsgHandler
	}{{w.control, w.onControl}, {w.subject + ".open", w.onOpen}} {
		sub, err := w.nc.Subscribe(s.subject, s.handle)
		if err != nil {
			w.close()
			return fmt.Errorf("bus: pipe %s: %w", w.name, err)
		}
		w.subs = append(w.subs, sub)
	}
	// A reader that asked before these subscriptions existed is waiting
	// for this (or for its next poll).
	if err := w.nc.Publish(w.subject+".hello", nil); err != nil {
		w.close()
		return fmt.Errorf("bus: pipe %s: %w", w.name, err)
	}
	return nil
}

func (w *pipeWriter) close() {
	for _, s := range w.subs {
		_ = s.Unsubscribe()
	}
}

func (w *pipeWriter) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *pipeWriter) onOpen(m *nats.Msg) {
	var req pipeOpen
	if err := json.Unmarshal(m.Data, &req); err != nil {
		return
	}
	var reply pipeOpened
	w.mu.Lock()
	switch {
	case req.Probe:
		reply.Refused = "the pipe has a writer"
	case req.Reader == "":
		reply.Refused = "an open request must name the reader's inbox"
	case w.reader == "" || w.reader == req.Reader: // the same reader again: its answer was lost
		if w.reader == "" {
			w.reader = req.Reader
		}
		w.credit, w.heard = max(w.credit, req.Credit), time.Now()
		reply.Control = w.control
	default:
		// A second reader (a redelivered restore step) would start at a
		// message the first one already consumed.
		reply.Refused = fmt.Sprintf("%s is already being read by an earlier attempt, and what it consumed cannot be read again: restart the restore", w.name)
	}
	w.mu.Unlock()
	raw, _ := json.Marshal(reply)
	_ = m.Respond(raw)
	w.signal()
}

func (w *pipeWriter) onControl(m *nats.Msg) {
	kind, n, body, ok := parsePipeMessage(m.Data)
	if !ok {
		return
	}
	w.mu.Lock()
	w.heard = time.Now()
	switch kind {
	case pipeCredit:
		w.credit = max(w.credit, n)
	case pipeDone:
		w.done = true
	case pipeAbort:
		w.abort = string(body)
		if w.abort == "" {
			w.abort = "no reason given"
		}
	}
	w.mu.Unlock()
	w.signal()
}

func (w *pipeWriter) waitForReader(ctx context.Context) error {
	t := time.NewTimer(pipeReaderWait)
	defer t.Stop()
	for {
		w.mu.Lock()
		opened := w.reader != ""
		w.mu.Unlock()
		if opened {
			return nil
		}
		select {
		case <-w.wake:
		case <-t.C:
			return fmt.Errorf("%w: nobody opened pipe %s within %s: the restore step that reads it did not start", ErrPipeReaderGone, w.name, pipeReaderWait)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// await blocks until ready holds, the reader aborts or goes silent for
// pipeReaderTimeout, or ctx ends. ready runs under w.mu.
func (w *pipeWriter) await(ctx context.Context, ready func() bool) error {
	var t *time.Timer
	for {
		w.mu.Lock()
		ok, abort, silent := ready(), w.abort, time.Since(w.heard)
		w.mu.Unlock()
		switch {
		case abort != "":
			return fmt.Errorf("%w: %s", ErrPipeAborted, abort)
		case ok:
			return nil
		case silent >= pipeReaderTimeout:
			return fmt.Errorf("%w: the reader of pipe %s has not been heard from for %s", ErrPipeReaderGone, w.name, silent.Round(time.Millisecond))
		}
		if t == nil {
			t = time.NewTimer(pipeReaderTimeout - silent)
			defer t.Stop()
		} else {
			t.Reset(pipeReaderTimeout - silent)
		}
		select {
		case <-w.wake:
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (w *pipeWriter) stream(ctx context.Context, r io.Reader) (PipeInfo, error) {
	size := min(int64(pipeMessageSize), w.nc.MaxPayload())
	if size <= pipeHeader {
		return PipeInfo{}, fmt.Errorf("bus: pipe %s: the server's max_payload (%d bytes) leaves no room for data", w.name, size)
	}
	// One buffer for the whole stream: nats.go copies a message before
	// Publish returns.
	buf := make([]byte, size)
	var info PipeInfo
	for {
		n, rerr := io.ReadFull(r, buf[pipeHeader:])
		if n > 0 {
			seq := info.Messages
			if err := w.await(ctx, func() bool { return w.credit > seq }); err != nil {
				return info, err
			}
			buf[0] = pipeData
			binary.BigEndian.PutUint64(buf[1:pipeHeader], seq)
			if err := w.nc.Publish(w.reader, buf[:pipeHeader+n]); err != nil {
				return info, fmt.Errorf("bus: pipe %s: %w", w.name, err)
			}
			info.CRC32C = crc32.Update(info.CRC32C, castagnoli, buf[pipeHeader:pipeHeader+n])
			info.Size += int64(n)
			info.Messages++
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			if ctx.Err() != nil {
				return info, fmt.Errorf("bus: pipe %s: the writer stopped: %w", w.name, ctx.Err())
			}
			return info, rerr
		}
	}
	end, _ := json.Marshal(info)
	if err := w.nc.Publish(w.reader, pipeMessage(pipeEnd, info.Messages, end)); err != nil {
		return info, fmt.Errorf("bus: pipe %s: %w", w.name, err)
	}
	// Only the reader knows whether everything arrived.
	if err := w.await(ctx, func() bool { return w.done }); err != nil {
		return info, err
	}
	return info, nil
}

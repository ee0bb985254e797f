package bus

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync/atomic"
	"time"
)

// A pipe streams one large artifact from one service to another through an
// object bucket while both run: the writer stores numbered chunks, at most
// pipeWindow ahead of the reader, and the reader deletes each chunk once it
// has consumed it. Unlike one object (which cannot be read until it is
// complete), the two ends overlap, and the bucket never holds more than the
// window. A restore streams a dump from the repository into a command's
// stdin this way.
//
// Objects under <name>/: chunk-NNNNNN, then "end" (size and SHA-256 of the
// whole stream), or "error" when the writer failed; "abort" when the reader
// gave up; "writer" and "reader" while each end owns the pipe.

var (
	pipeChunkSize = 8 << 20
	pipeWindow    = 4
	pipePoll      = 20 * time.Millisecond
)

var (
	// ErrPipeAborted: the reader gave up (its command failed), so the
	// writer stopped.
	ErrPipeAborted = errors.New("bus: the pipe's reader gave up")
	// ErrPipeRestarted: a writer found that an earlier writer already fed
	// this pipe. Part of the stream may already be consumed, and it cannot
	// be taken back, so the transfer must start over from its beginning.
	ErrPipeRestarted = errors.New("bus: the pipe was already being written by an earlier attempt")
	// ErrPipeWriterFailed: the writer reported a failure; the reader's
	// stream is incomplete.
	ErrPipeWriterFailed = errors.New("bus: the pipe's writer failed")
)

// PipeInfo describes a stream that went through a pipe.
type PipeInfo struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	Chunks int    `json:"chunks"`
}

func pipeChunk(name string, i int) string { return fmt.Sprintf("%s/chunk-%06d", name, i) }

// WritePipe streams everything r yields into the pipe name. It blocks while
// the reader is pipeWindow chunks behind, and returns ErrPipeAborted if the
// reader gives up. On any other error the reader is told the stream failed.
func WritePipe(ctx context.Context, objs Objects, name string, r io.Reader) (PipeInfo, error) {
	if _, err := objs.Stat(ctx, name+"/writer"); err == nil {
		return PipeInfo{}, fmt.Errorf("%w: %s", ErrPipeRestarted, name)
	} else if !errors.Is(err, ErrObjectNotFound) {
		return PipeInfo{}, err
	}
	if _, err := objs.Put(ctx, name+"/writer", bytes.NewReader(nil)); err != nil {
		return PipeInfo{}, err
	}
	info, err := writeChunks(ctx, objs, name, r)
	if err != nil && !errors.Is(err, ErrPipeAborted) {
		FailPipe(context.WithoutCancel(ctx), objs, name, err)
	}
	return info, err
}

func writeChunks(ctx context.Context, objs Objects, name string, r io.Reader) (PipeInfo, error) {
	h := sha256.New()
	buf := make([]byte, pipeChunkSize)
	var info PipeInfo
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if err := waitForRoom(ctx, objs, name, info.Chunks); err != nil {
				return info, err
			}
			if _, err := objs.Put(ctx, pipeChunk(name, info.Chunks), bytes.NewReader(buf[:n])); err != nil {
				return info, err
			}
			h.Write(buf[:n])
			info.Size += int64(n)
			info.Chunks++
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return info, rerr
		}
	}
	info.SHA256 = hex.EncodeToString(h.Sum(nil))
	end, _ := json.Marshal(info)
	if _, err := objs.Put(ctx, name+"/end", bytes.NewReader(end)); err != nil {
		return info, err
	}
	return info, nil
}

// waitForRoom returns once chunk i may be written: the reader has consumed
// chunk i-pipeWindow.
func waitForRoom(ctx context.Context, objs Objects, name string, i int) error {
	if i < pipeWindow {
		return nil
	}
	for {
		if _, err := objs.Stat(ctx, name+"/abort"); err == nil {
			return ErrPipeAborted
		} else if !errors.Is(err, ErrObjectNotFound) {
			return err
		}
		_, err := objs.Stat(ctx, pipeChunk(name, i-pipeWindow))
		if errors.Is(err, ErrObjectNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := sleepCtx(ctx, pipePoll); err != nil {
			return err
		}
	}
}

// FailPipe tells the pipe's reader that the stream failed with cause.
func FailPipe(ctx context.Context, objs Objects, name string, cause error) {
	_, _ = objs.Put(ctx, name+"/error", bytes.NewReader([]byte(cause.Error())))
}

// ReadPipe returns the stream written into the pipe name. Reading blocks
// until the next chunk arrives; it fails with ErrPipeWriterFailed if the
// writer reports a failure, and when no data has arrived within startWait.
// At the end the stream's size and SHA-256 are checked against the
// writer's. Closing it before the end tells the writer to stop.
//
// The next chunks are fetched while the caller consumes the current one
// (up to pipePrefetch in memory), so the consumer never waits on a fetch
// the writer has already made possible.
func ReadPipe(ctx context.Context, objs Objects, name string, startWait time.Duration) io.ReadCloser {
	fctx, cancel := context.WithCancel(ctx)
	return &pipeReader{
		parent: ctx, ctx: fctx, cancel: cancel, objs: objs, name: name, h: sha256.New(),
		startBy: time.Now().Add(startWait), startWait: startWait, items: make(chan pipeItem, pipePrefetch),
	}
}

var pipePrefetch = 2

type pipeItem struct {
	data []byte
	err  error // io.EOF at the verified end
}

type pipeReader struct {
	parent    context.Context
	ctx       context.Context // the fetcher's; cancelled by Close
	cancel    context.CancelFunc
	objs      Objects
	name      string
	startBy   time.Time
	startWait time.Duration
	items     chan pipeItem
	running   bool
	buf       []byte
	err       error
	finished  bool

	// The fetcher's own.
	h         hash.Hash
	next      int
	size      int64
	started   bool
	rechecked bool
	claimed   atomic.Bool
}

func (p *pipeReader) Read(b []byte) (int, error) {
	if !p.running {
		p.running = true
		go p.fetch()
	}
	for len(p.buf) == 0 {
		if p.err != nil {
			return 0, p.err
		}
		item := <-p.items
		if item.err != nil {
			p.err = item.err
			p.finished = item.err == io.EOF
			return 0, p.err
		}
		p.buf = item.data
	}
	n := copy(b, p.buf)
	p.buf = p.buf[n:]
	return n, nil
}

// fetch reads chunks in order, deleting each once it is in memory, until
// the end, a failure, or Close.
func (p *pipeReader) fetch() {
	for {
		data, err := p.nextChunk()
		if err != nil && p.ctx.Err() != nil {
			return
		}
		select {
		case p.items <- pipeItem{data: data, err: err}:
		case <-p.ctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
}

// nextChunk waits for the next chunk and returns its bytes; io.EOF at the
// writer's end once size and digest match.
func (p *pipeReader) nextChunk() ([]byte, error) {
	if !p.claimed.Load() {
		// A second reader (a redelivered step) would start at a chunk the
		// first one already consumed and deleted.
		if _, err := p.objs.Stat(p.ctx, p.name+"/reader"); err == nil {
			return nil, fmt.Errorf("%w: %s is already being read by an earlier attempt, and what it consumed cannot be read again: restart the restore", ErrPipeRestarted, p.name)
		} else if !errors.Is(err, ErrObjectNotFound) {
			return nil, err
		}
		if _, err := p.objs.Put(p.ctx, p.name+"/reader", bytes.NewReader(nil)); err != nil {
			return nil, err
		}
		p.claimed.Store(true)
	}
	for {
		r, err := p.objs.Get(p.ctx, pipeChunk(p.name, p.next))
		if err == nil {
			p.started, p.rechecked = true, false
			data, err := io.ReadAll(r)
			r.Close()
			if err != nil {
				return nil, err
			}
			p.h.Write(data)
			p.size += int64(len(data))
			_ = p.objs.Delete(p.ctx, pipeChunk(p.name, p.next))
			p.next++
			return data, nil
		}
		if !errors.Is(err, ErrObjectNotFound) {
			return nil, err
		}
		if raw, err := p.readSmall(p.name + "/error"); err == nil {
			return nil, fmt.Errorf("%w: %s", ErrPipeWriterFailed, raw)
		}
		if raw, err := p.readSmall(p.name + "/end"); err == nil {
			var end PipeInfo
			if err := json.Unmarshal(raw, &end); err != nil {
				return nil, fmt.Errorf("bus: pipe %s: unreadable end marker: %v", p.name, err)
			}
			if end.Chunks > p.next && !p.rechecked {
				// The writer put the next chunk and the end between this
				// reader's look for the chunk and its look for the end.
				p.rechecked = true
				continue
			}
			p.rechecked = false
			if end.Chunks != p.next || end.Size != p.size || end.SHA256 != hex.EncodeToString(p.h.Sum(nil)) {
				return nil, fmt.Errorf("bus: pipe %s: read %d bytes in %d chunks, the writer wrote %d in %d (or the content differs)", p.name, p.size, p.next, end.Size, end.Chunks)
			}
			for _, o := range []string{"/end", "/writer", "/reader"} {
				_ = p.objs.Delete(context.WithoutCancel(p.ctx), p.name+o)
			}
			return nil, io.EOF
		}
		if !p.started && time.Now().After(p.startBy) {
			return nil, fmt.Errorf("bus: nothing arrived in pipe %s within %s: the artifact has not been imported", p.name, p.startWait)
		}
		if err := sleepCtx(p.ctx, pipePoll); err != nil {
			return nil, err
		}
	}
}

func (p *pipeReader) readSmall(object string) ([]byte, error) {
	r, err := p.objs.Get(p.ctx, object)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(io.LimitReader(r, 64<<10))
}

// Close stops reading. Before the end, the owning reader tells the writer
// to stop.
func (p *pipeReader) Close() error {
	p.cancel()
	// Only the reader that owns the pipe may stop its writer.
	if !p.finished && p.claimed.Load() {
		p.finished = true
		_, err := p.objs.Put(context.WithoutCancel(p.parent), p.name+"/abort", bytes.NewReader(nil))
		return err
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

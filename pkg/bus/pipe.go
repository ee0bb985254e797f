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
func ReadPipe(ctx context.Context, objs Objects, name string, startWait time.Duration) io.ReadCloser {
	return &pipeReader{ctx: ctx, objs: objs, name: name, h: sha256.New(), startBy: time.Now().Add(startWait), startWait: startWait}
}

type pipeReader struct {
	ctx       context.Context
	objs      Objects
	name      string
	h         hash.Hash
	next      int
	size      int64
	cur       io.ReadCloser
	started   bool
	claimed   bool
	startBy   time.Time
	startWait time.Duration
	done      bool
	err       error
}

func (p *pipeReader) Read(b []byte) (int, error) {
	for {
		if p.err != nil {
			return 0, p.err
		}
		if p.cur != nil {
			n, err := p.cur.Read(b)
			p.h.Write(b[:n])
			p.size += int64(n)
			if err == io.EOF {
				p.cur.Close()
				p.cur = nil
				_ = p.objs.Delete(p.ctx, pipeChunk(p.name, p.next))
				p.next++
				if n > 0 {
					return n, nil
				}
				continue
			}
			if err != nil {
				p.err = err
			}
			return n, err
		}
		if p.err = p.open(); p.err != nil {
			return 0, p.err
		}
		if p.done {
			return 0, io.EOF
		}
	}
}

// open waits for the next chunk, the end, or the writer's failure.
func (p *pipeReader) open() error {
	if !p.claimed {
		// A second reader (a redelivered step) would start at a chunk the
		// first one already consumed and deleted.
		if _, err := p.objs.Stat(p.ctx, p.name+"/reader"); err == nil {
			return fmt.Errorf("%w: %s is already being read by an earlier attempt, and what it consumed cannot be read again: restart the restore", ErrPipeRestarted, p.name)
		} else if !errors.Is(err, ErrObjectNotFound) {
			return err
		}
		if _, err := p.objs.Put(p.ctx, p.name+"/reader", bytes.NewReader(nil)); err != nil {
			return err
		}
		p.claimed = true
	}
	for {
		r, err := p.objs.Get(p.ctx, pipeChunk(p.name, p.next))
		if err == nil {
			p.cur, p.started = r, true
			return nil
		}
		if !errors.Is(err, ErrObjectNotFound) {
			return err
		}
		if raw, err := p.readSmall(p.name + "/error"); err == nil {
			return fmt.Errorf("%w: %s", ErrPipeWriterFailed, raw)
		}
		if raw, err := p.readSmall(p.name + "/end"); err == nil {
			var end PipeInfo
			if err := json.Unmarshal(raw, &end); err != nil {
				return fmt.Errorf("bus: pipe %s: unreadable end marker: %v", p.name, err)
			}
			if end.Chunks != p.next || end.Size != p.size || end.SHA256 != hex.EncodeToString(p.h.Sum(nil)) {
				return fmt.Errorf("bus: pipe %s: read %d bytes in %d chunks, the writer wrote %d in %d (or the content differs)", p.name, p.size, p.next, end.Size, end.Chunks)
			}
			p.done = true
			for _, o := range []string{"/end", "/writer", "/reader"} {
				_ = p.objs.Delete(context.WithoutCancel(p.ctx), p.name+o)
			}
			return nil
		}
		if !p.started && time.Now().After(p.startBy) {
			return fmt.Errorf("bus: nothing arrived in pipe %s within %s: the artifact has not been imported", p.name, p.startWait)
		}
		if err := sleepCtx(p.ctx, pipePoll); err != nil {
			return err
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
	if p.cur != nil {
		p.cur.Close()
		p.cur = nil
	}
	// Only the reader that owns the pipe may stop its writer.
	if !p.done && p.claimed {
		ctx := context.WithoutCancel(p.ctx)
		_, err := p.objs.Put(ctx, p.name+"/abort", bytes.NewReader(nil))
		p.done = true
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

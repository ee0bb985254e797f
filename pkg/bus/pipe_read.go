package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// ReadPipe returns the stream written into the pipe name. The first Read
// opens the pipe, waiting up to startWait for its writer; later reads
// block until the next message arrives, and fail if none comes within
// pipeStallTimeout. It fails with ErrPipeWriterFailed if the writer reports
// a failure and ErrPipeCorrupt if a message was lost or the stream does not
// match the writer's end message; io.EOF comes only after that check.
// Closing it before the end tells the writer to stop.
//
// It implements io.WriterTo, so io.Copy (and os/exec's stdin copy) hands
// each message to the destination without copying it again.
func (b *Bus) ReadPipe(ctx context.Context, name string, startWait time.Duration) io.ReadCloser {
	ctx, cancel := context.WithCancel(ctx)
	return &pipeReader{nc: b.nc, ctx: ctx, cancel: cancel, name: name, subject: pipeSubject(name), startWait: startWait}
}

type pipeReader struct {
	nc        *nats.Conn
	ctx       context.Context // cancelled by Close, so a blocked Read returns
	cancel    context.CancelFunc
	name      string
	subject   string
	startWait time.Duration

	mu       sync.Mutex // one Read, WriteTo or Close at a time
	opened   bool
	inbox    string
	data     chan *nats.Msg
	sub      *nats.Subscription
	control  string // the writer's control inbox, once it accepted this reader
	next     uint64 // the sequence number due
	size     int64
	crc      uint32
	taken    uint64 // data messages taken off the subscription
	granted  uint64 // the credit last sent
	cur      []byte
	err      error
	finished bool // the end was verified
	timer    *time.Timer

	keepalive     chan struct{} // closed to stop the heartbeat
	keepaliveDone chan struct{}
	creditMu      sync.Mutex // orders the credits the heartbeat and Read send
}

func (p *pipeReader) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.cur) == 0 {
		if err := p.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(b, p.cur)
	p.cur = p.cur[n:]
	return n, nil
}

// WriteTo writes the stream to w message by message; like io.Copy, it
// returns nil at the verified end.
func (p *pipeReader) WriteTo(w io.Writer) (int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var total int64
	for {
		for len(p.cur) == 0 {
			if err := p.fill(); err == io.EOF {
				return total, nil
			} else if err != nil {
				return total, err
			}
		}
		n, err := w.Write(p.cur)
		total += int64(n)
		p.cur = p.cur[n:]
		if err != nil {
			return total, err
		}
	}
}

// fill makes the next message's bytes current, or returns the stream's
// end or failure (for good: it is kept in p.err).
func (p *pipeReader) fill() error {
	if p.err != nil {
		return p.err
	}
	if !p.opened {
		p.opened = true
		if err := p.open(); err != nil {
			return p.fail(err, false)
		}
	}
	m, err := p.receive()
	if err != nil {
		return p.fail(err, true)
	}
	kind, seq, body, ok := parsePipeMessage(m.Data)
	if !ok {
		return p.fail(fmt.Errorf("%w: pipe %s: a message of %d bytes is not a pipe message", ErrPipeCorrupt, p.name, len(m.Data)), true)
	}
	switch kind {
	case pipeData:
		if seq != p.next {
			return p.fail(fmt.Errorf("%w: pipe %s: message %d arrived where %d was due: part of the stream was lost, and it cannot be sent again", ErrPipeCorrupt, p.name, seq, p.next), true)
		}
		p.next++
		p.size += int64(len(body))
		p.crc = crc32.Update(p.crc, castagnoli, body)
		p.cur = body
		p.taken++
		// Credit in batches of half the window: a message back per
		// message would double the messages on the bus.
		if p.taken+uint64(pipeWindow)-p.granted >= uint64(max(pipeWindow/2, 1)) {
			p.sendCredit()
		}
		return nil
	case pipeEnd:
		var end PipeInfo
		if err := json.Unmarshal(body, &end); err != nil {
			return p.fail(fmt.Errorf("%w: pipe %s: unreadable end message: %v", ErrPipeCorrupt, p.name, err), true)
		}
		if seq != p.next || end.Messages != p.next || end.Size != p.size || end.CRC32C != p.crc {
			return p.fail(fmt.Errorf("%w: pipe %s: read %d bytes in %d messages, the writer sent %d in %d (or the content differs)", ErrPipeCorrupt, p.name, p.size, p.next, end.Size, end.Messages), true)
		}
		p.finished = true
		_ = p.nc.Publish(p.control, pipeMessage(pipeDone, 0, nil))
		p.stop()
		p.err = io.EOF
		return io.EOF
	case pipeError:
		return p.fail(fmt.Errorf("%w: %s", ErrPipeWriterFailed, body), false)
	default:
		return p.fail(fmt.Errorf("%w: pipe %s: unknown message kind %q", ErrPipeCorrupt, p.name, kind), true)
	}
}

// fail ends the stream with err; abort tells the writer, which may still
// be sending, to stop.
func (p *pipeReader) fail(err error, abort bool) error {
	if abort && p.control != "" {
		_ = p.nc.Publish(p.control, pipeMessage(pipeAbort, 0, []byte(err.Error())))
	}
	p.stop()
	p.err = err
	return err
}

// open subscribes to a data inbox and asks the writer to accept it,
// retrying until a writer answers or startWait passes.
func (p *pipeReader) open() error {
	p.inbox = p.nc.NewInbox()
	// Room for the whole credit and the end: nats.go drops a message that
	// finds a subscription channel full.
	p.data = make(chan *nats.Msg, pipeWindow+2)
	sub, err := p.nc.ChanSubscribe(p.inbox, p.data)
	if err != nil {
		return fmt.Errorf("bus: pipe %s: %w", p.name, err)
	}
	p.sub = sub
	hello := make(chan struct{}, 1)
	hsub, err := p.nc.Subscribe(p.subject+".hello", func(*nats.Msg) {
		select {
		case hello <- struct{}{}:
		default: // one wake-up is enough
		}
	})
	if err != nil {
		return fmt.Errorf("bus: pipe %s: %w", p.name, err)
	}
	defer func() { _ = hsub.Unsubscribe() }()

	req, _ := json.Marshal(pipeOpen{Reader: p.inbox, Credit: uint64(pipeWindow)})
	deadline := time.Now().Add(p.startWait)
	for {
		rctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
		m, err := p.nc.RequestWithContext(rctx, p.subject+".open", req)
		cancel()
		switch {
		case err == nil:
			var reply pipeOpened
			if err := json.Unmarshal(m.Data, &reply); err != nil {
				return fmt.Errorf("bus: pipe %s: unreadable answer from its writer: %w", p.name, err)
			}
			if reply.Control == "" {
				return fmt.Errorf("%w: %s", ErrPipeRestarted, reply.Refused)
			}
			p.control, p.granted = reply.Control, uint64(pipeWindow)
			p.startKeepalive()
			return nil
		case p.ctx.Err() != nil:
			return p.ctx.Err()
		case !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout):
			return fmt.Errorf("bus: pipe %s: opening: %w", p.name, err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("%w: nothing arrived in pipe %s within %s: the artifact has not been imported", ErrPipeWriterGone, p.name, p.startWait)
		}
		t := time.NewTimer(min(pipeOpenPoll, left))
		select {
		case <-hello:
		case <-t.C:
		case <-p.ctx.Done():
		}
		t.Stop()
	}
}

func (p *pipeReader) receive() (*nats.Msg, error) {
	if p.timer == nil {
		p.timer = time.NewTimer(pipeStallTimeout)
	} else {
		p.timer.Reset(pipeStallTimeout)
	}
	select {
	case m := <-p.data:
		return m, nil
	case <-p.ctx.Done():
		return nil, p.ctx.Err()
	case <-p.timer.C:
		return nil, fmt.Errorf("%w: pipe %s: nothing arrived for %s although the reader was waiting: the data mover stalled or went away", ErrPipeWriterGone, p.name, pipeStallTimeout)
	}
}

// sendCredit tells the writer how many data messages it may have sent in
// all. A lost credit costs nothing: the next one, at the latest the
// heartbeat's, supersedes it.
func (p *pipeReader) sendCredit() {
	p.creditMu.Lock()
	defer p.creditMu.Unlock()
	p.granted = p.taken + uint64(pipeWindow)
	_ = p.nc.Publish(p.control, pipeMessage(pipeCredit, p.granted, nil))
}

// startKeepalive repeats the credit every pipeKeepalive while the stream
// is open, so the writer can tell a slow reader from one that is gone.
func (p *pipeReader) startKeepalive() {
	p.keepalive, p.keepaliveDone = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.keepaliveDone)
		t := time.NewTicker(pipeKeepalive)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.creditMu.Lock()
				granted := p.granted
				_ = p.nc.Publish(p.control, pipeMessage(pipeCredit, granted, nil))
				p.creditMu.Unlock()
			case <-p.keepalive:
				return
			}
		}
	}()
}

// stop releases the subscription and the heartbeat.
func (p *pipeReader) stop() {
	if p.sub != nil {
		_ = p.sub.Unsubscribe()
		p.sub = nil
	}
	if p.keepalive != nil {
		close(p.keepalive)
		<-p.keepaliveDone
		p.keepalive = nil
	}
	if p.timer != nil {
		p.timer.Stop()
	}
}

// Close stops reading. Before the end, it tells the writer to stop; only a
// reader the writer accepted can.
func (p *pipeReader) Close() error {
	p.cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	var err error
	if p.control != "" && !p.finished && p.err == nil {
		err = p.nc.Publish(p.control, pipeMessage(pipeAbort, 0, []byte("the reader closed the pipe before its end")))
	}
	p.stop()
	if p.err == nil {
		p.err = fmt.Errorf("bus: pipe %s: closed", p.name)
	}
	return err
}

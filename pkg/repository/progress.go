package repository

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/kopia/kopia/snapshot/upload"
)

// Progress is how far an export or import has come. A total is zero while
// it is not known yet (an export estimates it while it runs; a stream has
// none).
type Progress struct {
	BytesDone  int64
	BytesTotal int64
	FilesDone  int64
	FilesTotal int64
}

// counters are updated by kopia's workers and read by the reporter.
type counters struct {
	bytesDone, bytesTotal, filesDone, filesTotal atomic.Int64
}

func (c *counters) load() Progress {
	return Progress{
		BytesDone: c.bytesDone.Load(), BytesTotal: c.bytesTotal.Load(),
		FilesDone: c.filesDone.Load(), FilesTotal: c.filesTotal.Load(),
	}
}

// report calls fn with the counters every interval until the returned stop
// is called; stop reports once more, so the last report is the final count.
// A nil fn reports nothing.
func report(c *counters, interval time.Duration, fn func(Progress)) (stop func()) {
	if fn == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fn(c.load())
			}
		}
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			wg.Wait()
			fn(c.load())
		})
	}
}

// uploadProgress feeds kopia's upload callbacks into counters.
type uploadProgress struct {
	upload.NullUploadProgress
	c       *counters
	enabled bool
}

var _ upload.Progress = (*uploadProgress)(nil)

// Enabled turns on kopia's size estimation, which gives the totals.
func (p *uploadProgress) Enabled() bool { return p.enabled }

// EstimationParameters asks for the classic estimate, a walk of the tree:
// the others look at the whole filesystem's usage, not the directory's.
func (p *uploadProgress) EstimationParameters() upload.EstimationParameters {
	return upload.EstimationParameters{Type: upload.EstimationTypeClassic}
}

func (p *uploadProgress) EstimatedDataSize(files, bytes int64) {
	p.c.filesTotal.Store(files)
	p.c.bytesTotal.Store(bytes)
}

func (p *uploadProgress) CachedFile(_ string, size int64) { p.c.bytesDone.Add(size) }

func (p *uploadProgress) HashedBytes(n int64) { p.c.bytesDone.Add(n) }

func (p *uploadProgress) FinishedFile(_ string, err error) {
	if err == nil {
		p.c.filesDone.Add(1)
	}
}

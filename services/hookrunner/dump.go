package hookrunner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/platform"
)

// runDump runs a dump command. Backing up, its stdout streams into the
// dumps bucket (bus.DumpObject), from where a data mover stores it in the
// repository; restoring, the artifact a data mover put there streams into
// its stdin. Either way the stream never lands on local disk whole. The
// command's key=value outputs come on stderr, since stdout is the data.
func (s *Service) runDump(ctx context.Context, req events.HookRequested, started time.Time) events.Payload {
	spec, err := decodeSpec[blueprint.DumpSpec](req)
	if err != nil {
		return failed(req, true, "%v", err)
	}
	if spec.Artifact == "" {
		return failed(req, true, "step %s: a dump needs an artifact name", req.Step)
	}
	sec := s.secrets(req)
	execSpec := sec.exec(spec.ExecSpec)
	if sec.err != nil {
		return failed(req, true, "step %s: %v", req.Step, sec.err)
	}
	objects, err := s.bus.ObjectStore(ctx, bus.BucketDumps)
	if err != nil {
		return failed(req, false, "step %s: %v", req.Step, err)
	}
	name := bus.DumpObject(req.RunID, spec.Artifact)
	if spec.FromArtifact {
		return s.restoreDump(ctx, req, started, objects, name, execSpec, sec)
	}

	pr, pw := io.Pipe()
	stored := make(chan error, 1)
	var info bus.ObjectInfo
	go func() {
		var err error
		info, err = objects.Put(ctx, name, pr)
		// Unblock the command if storing stops early.
		pr.CloseWithError(err)
		stored <- err
	}()
	res, execErr := s.cfg.Exec.Exec(ctx, platform.ExecRequest{Spec: execSpec, Stdout: pw})
	if execErr == nil && res.ExitCode != 0 {
		execErr = fmt.Errorf("%s exited with %d", execSpec.Command[0], res.ExitCode)
	}
	// A failed command must not leave a complete-looking artifact: the
	// stream is cut with an error, so the object store discards it.
	if execErr != nil {
		pw.CloseWithError(execErr)
	} else {
		pw.Close()
	}
	storeErr := <-stored
	stderr := sec.scrub(stderrTail(res.StderrTail))
	if execErr != nil {
		_ = objects.Delete(context.WithoutCancel(ctx), name)
		f := failed(req, false, "step %s: %v%s", req.Step, execErr, stderr)
		if res.ExitCode > 0 {
			code := res.ExitCode
			f.ExitCode = &code
		}
		return f
	}
	if storeErr != nil {
		_ = objects.Delete(context.WithoutCancel(ctx), name)
		return failed(req, false, "step %s: storing the dump stream: %v", req.Step, storeErr)
	}
	outputs := sec.scrubMap(keyValueLines(res.StderrTail))
	if outputs == nil {
		outputs = map[string]string{}
	}
	outputs["artifact"] = spec.Artifact
	outputs["object"] = name
	outputs["bytes"] = strconv.FormatUint(info.Size, 10)
	outputs["digest"] = info.Digest
	return events.HookSucceeded{RunID: req.RunID, Step: req.Step, Outputs: outputs, StartedAt: started, FinishedAt: s.cfg.Now().UTC()}
}

// recordingReader keeps the error that ended a stream, which the command
// reading it only sees as a short stdin.
type recordingReader struct {
	r io.Reader

	mu     sync.Mutex
	err    error
	frozen bool
}

func (r *recordingReader) record(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil && r.err == nil && !r.frozen {
		r.err = err
	}
}

// freeze returns the error that ended the stream so far and ignores any
// later one: stopping a stream whose command is gone makes one.
func (r *recordingReader) freeze() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.frozen = true
	return r.err
}

func (r *recordingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.record(err)
	return n, err
}

// WriteTo hands the stream to w piece by piece as it arrived (whole pipe
// messages) instead of through io.Copy's 32 KiB buffer. Only the stream's
// own failure is recorded, not w refusing more (the command exited).
func (r *recordingReader) WriteTo(w io.Writer) (int64, error) {
	wt, ok := r.r.(io.WriterTo)
	if !ok {
		return io.Copy(w, struct{ io.Reader }{r})
	}
	dst := &writeRecorder{w: w}
	n, err := wt.WriteTo(dst)
	if dst.err == nil {
		r.record(err)
	}
	return n, err
}

type writeRecorder struct {
	w   io.Writer
	err error
}

func (w *writeRecorder) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if err != nil && w.err == nil {
		w.err = err
	}
	return n, err
}

func (s *Service) restoreDump(ctx context.Context, req events.HookRequested, started time.Time, objects bus.Objects, name string, execSpec blueprint.ExecSpec, sec *secretFiller) events.Payload {
	// The data mover streams the artifact through a pipe (core NATS, see
	// bus.Pipes) while this step runs; a whole object (put there by a dump
	// step of the same run) is read from the dumps bucket as it is.
	var r io.ReadCloser
	if _, err := objects.Stat(ctx, name); err == nil {
		if r, err = objects.Get(ctx, name); err != nil {
			return failed(req, false, "step %s: %v", req.Step, err)
		}
	} else if errors.Is(err, bus.ErrObjectNotFound) {
		r = s.bus.ReadPipe(ctx, name, s.cfg.ArtifactWait)
	} else {
		return failed(req, false, "step %s: %v", req.Step, err)
	}
	in := &recordingReader{r: r}
	// The stream is fed through a stdin of our own rather than the pipe
	// os/exec makes: waking the feeder for every 4 KiB pg_restore reads
	// cost as much CPU as the rest of the path (stdinStream).
	stdin, feeder, err := stdinStream()
	if err != nil {
		r.Close()
		return failed(req, false, "step %s: %v", req.Step, err)
	}
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		_, _ = in.WriteTo(feeder)
		feeder.Close()
	}()
	res, err := s.cfg.Exec.Exec(ctx, platform.ExecRequest{Spec: execSpec, Stdin: stdin})
	// The command is gone: what it did not read, nobody will (the feeder's
	// writes fail).
	stdin.Close()
	var streamErr error
	if err != nil || res.ExitCode != 0 {
		// A stream that failed first is the cause; one stopped now is not.
		streamErr = in.freeze()
		r.Close()
		<-fed
	} else {
		// Like os/exec's own copy, wait for the stream's verified end
		// (or its failure), which may still be on its way.
		<-fed
		streamErr = in.freeze()
	}
	// Closing before the end tells the data mover to stop sending.
	r.Close()
	stderr := sec.scrub(stderrTail(res.StderrTail))
	if streamErr != nil && !errors.Is(streamErr, io.EOF) {
		// The stream broke (the mover failed, or nothing arrived): that is
		// the cause, whatever the command made of its cut-off stdin.
		return failed(req, false, "step %s: the artifact's stream failed: %v%s", req.Step, streamErr, stderr)
	}
	if err != nil {
		return failed(req, false, "step %s: %v%s", req.Step, err, stderr)
	}
	if res.ExitCode != 0 {
		code := res.ExitCode
		f := failed(req, false, "step %s: %s exited with %d%s", req.Step, execSpec.Command[0], code, stderr)
		f.ExitCode = &code
		return f
	}
	return events.HookSucceeded{RunID: req.RunID, Step: req.Step, Outputs: sec.scrubMap(keyValueLines(res.StderrTail)), StartedAt: started, FinishedAt: s.cfg.Now().UTC()}
}

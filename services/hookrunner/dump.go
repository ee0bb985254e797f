package hookrunner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
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
	r   io.Reader
	err error
}

func (r *recordingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && r.err == nil {
		r.err = err
	}
	return n, err
}

func (s *Service) restoreDump(ctx context.Context, req events.HookRequested, started time.Time, objects bus.Objects, name string, execSpec blueprint.ExecSpec, sec *secretFiller) events.Payload {
	// The data mover streams the artifact through a pipe while this step
	// runs; a whole object (put there by a dump step of the same run) is
	// read as it is.
	var r io.ReadCloser
	if _, err := objects.Stat(ctx, name); err == nil {
		if r, err = objects.Get(ctx, name); err != nil {
			return failed(req, false, "step %s: %v", req.Step, err)
		}
	} else if errors.Is(err, bus.ErrObjectNotFound) {
		r = bus.ReadPipe(ctx, objects, name, s.cfg.ArtifactWait)
	} else {
		return failed(req, false, "step %s: %v", req.Step, err)
	}
	in := &recordingReader{r: r}
	res, err := s.cfg.Exec.Exec(ctx, platform.ExecRequest{Spec: execSpec, Stdin: in})
	// Closing before the end tells the data mover to stop sending.
	r.Close()
	stderr := sec.scrub(stderrTail(res.StderrTail))
	if in.err != nil && !errors.Is(in.err, io.EOF) {
		// The stream broke (the mover failed, or nothing arrived): that is
		// the cause, whatever the command made of its cut-off stdin.
		return failed(req, false, "step %s: the artifact's stream failed: %v%s", req.Step, in.err, stderr)
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

package hookrunner

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"github.com/tidemark-dev/tidemark/pkg/platform"
	"github.com/tidemark-dev/tidemark/pkg/sqlsession"
)

// stderrInError bounds how much of a failed command's stderr goes into the
// failure event.
const stderrInError = 2048

func (s *Service) runStep(ctx context.Context, req events.HookRequested, started time.Time) events.Payload {
	ctx, cancel := context.WithTimeout(ctx, req.Timeout.Std())
	defer cancel()
	ctx = withApplication(ctx, req.Application)
	switch req.Kind {
	case blueprint.KindExec:
		return s.runExec(ctx, req, started)
	case blueprint.KindSQL:
		return s.runSQL(ctx, req, started)
	case blueprint.KindHTTP:
		return s.runHTTP(ctx, req, started)
	case blueprint.KindWait:
		return s.runWait(ctx, req, started)
	case blueprint.KindDump:
		return s.runDump(ctx, req, started)
	default:
		if steps := s.platformSteps(); slices.Contains(steps.Kinds(), req.Kind) {
			return s.runPlatformStep(ctx, steps, req, started)
		}
		return failed(req, true, "step kind %q is not supported by this hookrunner yet (it runs exec, sql, http, wait, dump, scale and apply)", req.Kind)
	}
}

func decodeSpec[T any](req events.HookRequested) (T, error) {
	var spec T
	dec := json.NewDecoder(bytes.NewReader(req.Spec))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return spec, fmt.Errorf("step %s: %s spec: %w", req.Step, req.Kind, err)
	}
	return spec, nil
}

// secrets returns a filler for the step's application. The application is
// only required when a placeholder asks for one of its secrets.
func (s *Service) secrets(req events.HookRequested) *secretFiller {
	app, err := s.cfg.Apps.Application(req.Application)
	return &secretFiller{app: app, appErr: err}
}

func (s *Service) runExec(ctx context.Context, req events.HookRequested, started time.Time) events.Payload {
	spec, err := decodeSpec[blueprint.ExecSpec](req)
	if err != nil {
		return failed(req, true, "%v", err)
	}
	sec := s.secrets(req)
	filled := sec.exec(spec)
	if sec.err != nil {
		return failed(req, true, "step %s: %v", req.Step, sec.err)
	}
	res, err := s.cfg.Exec.Exec(ctx, platform.ExecRequest{Spec: filled})
	stderr := sec.scrub(stderrTail(res.StderrTail))
	if err != nil {
		if ctx.Err() != nil {
			return failed(req, false, "step %s timed out after %s: %v%s", req.Step, req.Timeout, err, stderr)
		}
		return failed(req, false, "step %s: %v", req.Step, err)
	}
	if res.ExitCode != 0 {
		f := failed(req, false, "step %s: %s exited with %d%s", req.Step, spec.Command[0], res.ExitCode, stderr)
		code := res.ExitCode
		f.ExitCode = &code
		return f
	}
	return events.HookSucceeded{RunID: req.RunID, Step: req.Step, Outputs: sec.scrubMap(keyValueLines(res.StdoutTail)), StartedAt: started, FinishedAt: s.cfg.Now().UTC()}
}

func stderrTail(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return ""
	}
	if len(b) > stderrInError {
		b = b[len(b)-stderrInError:]
	}
	return "; stderr: " + string(b)
}

// keyValueLines reads the outputs an exec step printed as key=value lines.
func keyValueLines(stdout []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(stdout))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok && k != "" && !strings.ContainsAny(k, " \t") {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func (s *Service) runSQL(ctx context.Context, req events.HookRequested, started time.Time) events.Payload {
	spec, err := decodeSpec[blueprint.SQLSpec](req)
	if err != nil {
		return failed(req, true, "%v", err)
	}
	app, err := s.cfg.Apps.Application(req.Application)
	if err != nil {
		return failed(req, true, "step %s: %v", req.Step, err)
	}
	conn, ok := app.Spec.Connections[spec.Connection]
	if !ok {
		return failed(req, true, "step %s: application %s has no connection %q (add it under spec.connections)", req.Step, req.Application, spec.Connection)
	}
	if spec.Hold && len(spec.Release) == 0 {
		return failed(req, true, "step %s: hold without release statements would keep the lock until the dead man's switch; add release", req.Step)
	}
	key := holdKey{req.RunID, req.Step}
	if spec.Hold {
		// Recorded before the lock is taken: a release that finds this
		// record knows a lock may exist, one that finds none knows it cannot.
		if err := s.recordHold(ctx, key, holdState{Holder: s.cfg.InstanceID, State: "holding"}); err != nil {
			return failed(req, false, "step %s: recording the hold: %v", req.Step, err)
		}
	}
	session, err := sqlsession.Open(ctx, conn)
	if err != nil {
		return failed(req, false, "step %s: %v", req.Step, err)
	}
	outputs, err := session.Run(ctx, spec.Statements)
	if err != nil {
		session.Close()
		return failed(req, false, "step %s: %v", req.Step, err)
	}
	if !spec.Hold {
		session.Close()
		return events.HookSucceeded{RunID: req.RunID, Step: req.Step, Outputs: nonEmpty(outputs), StartedAt: started, FinishedAt: s.cfg.Now().UTC()}
	}
	holdFor := DefaultHoldFor
	if req.HoldFor != nil {
		holdFor = req.HoldFor.Std()
	}
	s.startHold(key, req, session, spec.Release, holdFor)
	return events.HookSucceeded{RunID: req.RunID, Step: req.Step, Outputs: nonEmpty(outputs), StartedAt: started, FinishedAt: s.cfg.Now().UTC(), Holding: true, Holder: s.cfg.InstanceID}
}

func nonEmpty(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}

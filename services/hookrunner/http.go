package hookrunner

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/blueprint"
	"github.com/tidemark-dev/tidemark/pkg/platform"
	"github.com/tidemark-dev/tidemark/pkg/sqlsession"
)

// maxHTTPBody bounds how much of a response is read.
const maxHTTPBody = 1 << 20

// callHTTP performs spec and returns its captured outputs, or why it did not
// meet its expectations.
func callHTTP(ctx context.Context, client *http.Client, spec blueprint.HTTPSpec) (map[string]string, error) {
	method := spec.Method
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, spec.URL, strings.NewReader(spec.Body))
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	for k, v := range spec.Headers {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxHTTPBody))
	if err != nil {
		return nil, fmt.Errorf("reading the response: %w", err)
	}
	expect := spec.ExpectStatus
	if len(expect) == 0 {
		expect = []int{200, 201, 202, 204}
	}
	if !slices.Contains(expect, resp.StatusCode) {
		return nil, fmt.Errorf("%s %s: status %d, want %v; body: %s", method, req.URL.Redacted(), resp.StatusCode, expect, truncate(body, 512))
	}
	if len(spec.Capture) == 0 {
		return nil, nil
	}
	var doc any
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("capture needs a JSON response: %w", err)
	}
	out := map[string]string{}
	for name, ptr := range spec.Capture {
		v, err := jsonPointer(doc, ptr)
		if err != nil {
			return nil, fmt.Errorf("capture %s (%s): %w", name, ptr, err)
		}
		out[name] = v
	}
	return out, nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// jsonPointer resolves an RFC 6901 pointer and renders the value as a
// string: strings as they are, anything else as JSON.
func jsonPointer(doc any, ptr string) (string, error) {
	if ptr != "" && !strings.HasPrefix(ptr, "/") {
		return "", fmt.Errorf("a JSON pointer starts with /")
	}
	cur := doc
	if ptr != "" {
		for _, tok := range strings.Split(ptr[1:], "/") {
			tok = strings.NewReplacer("~1", "/", "~0", "~").Replace(tok)
			switch x := cur.(type) {
			case map[string]any:
				v, ok := x[tok]
				if !ok {
					return "", fmt.Errorf("no field %q", tok)
				}
				cur = v
			case []any:
				i, err := strconv.Atoi(tok)
				if err != nil || i < 0 || i >= len(x) {
					return "", fmt.Errorf("no element %q", tok)
				}
				cur = x[i]
			default:
				return "", fmt.Errorf("%q is inside a scalar", tok)
			}
		}
	}
	if s, ok := cur.(string); ok {
		return s, nil
	}
	b, err := json.Marshal(cur)
	return string(b), err
}

func (s *Service) runHTTP(ctx context.Context, req events.HookRequested, started time.Time) events.Payload {
	spec, err := decodeSpec[blueprint.HTTPSpec](req)
	if err != nil {
		return failed(req, true, "%v", err)
	}
	sec := s.secrets(req)
	filled := sec.http(spec)
	if sec.err != nil {
		return failed(req, true, "step %s: %v", req.Step, sec.err)
	}
	out, err := callHTTP(ctx, s.httpClient(), filled)
	if err != nil {
		return failed(req, false, "step %s: %s", req.Step, sec.scrub(err.Error()))
	}
	return events.HookSucceeded{RunID: req.RunID, Step: req.Step, Outputs: nonEmpty(sec.scrubMap(out)), StartedAt: started, FinishedAt: s.cfg.Now().UTC()}
}

func (s *Service) httpClient() *http.Client {
	// Per-request deadlines come from the step's context.
	return &http.Client{}
}

// runWait polls its condition every interval until it holds or the step's
// timeout passes; the last reason it did not hold is reported.
func (s *Service) runWait(ctx context.Context, req events.HookRequested, started time.Time) events.Payload {
	spec, err := decodeSpec[blueprint.WaitSpec](req)
	if err != nil {
		return failed(req, true, "%v", err)
	}
	set := 0
	for _, c := range []bool{spec.HTTP != nil, spec.SQL != nil, spec.Exec != nil} {
		if c {
			set++
		}
	}
	if set != 1 {
		return failed(req, true, "step %s: a wait needs exactly one of http, sql and exec (it has %d)", req.Step, set)
	}
	sec := s.secrets(req)
	if spec.HTTP != nil {
		h := sec.http(*spec.HTTP)
		spec.HTTP = &h
	}
	if spec.Exec != nil {
		e := sec.exec(*spec.Exec)
		spec.Exec = &e
	}
	if sec.err != nil {
		return failed(req, true, "step %s: %v", req.Step, sec.err)
	}
	interval := spec.Interval.Std()
	if interval <= 0 {
		interval = time.Second
	}
	var last error
	for attempt := 1; ; attempt++ {
		out, err := s.checkOnce(ctx, req, spec)
		if err == nil {
			return events.HookSucceeded{RunID: req.RunID, Step: req.Step, Outputs: nonEmpty(sec.scrubMap(out)), StartedAt: started, FinishedAt: s.cfg.Now().UTC()}
		}
		last = err
		select {
		case <-ctx.Done():
			return failed(req, false, "step %s: condition not met within %s after %d checks; last: %s", req.Step, req.Timeout, attempt, sec.scrub(last.Error()))
		case <-time.After(interval):
		}
	}
}

func (s *Service) checkOnce(ctx context.Context, req events.HookRequested, spec blueprint.WaitSpec) (map[string]string, error) {
	switch {
	case spec.HTTP != nil:
		return callHTTP(ctx, s.httpClient(), *spec.HTTP)
	case spec.Exec != nil:
		res, err := s.cfg.Exec.Exec(ctx, platform.ExecRequest{Spec: *spec.Exec})
		if err != nil {
			return nil, err
		}
		if res.ExitCode != 0 {
			return nil, fmt.Errorf("%s exited with %d%s", spec.Exec.Command[0], res.ExitCode, stderrTail(res.StderrTail))
		}
		return keyValueLines(res.StdoutTail), nil
	default:
		app, err := s.cfg.Apps.Application(req.Application)
		if err != nil {
			return nil, err
		}
		conn, ok := app.Spec.Connections[spec.SQL.Connection]
		if !ok {
			return nil, fmt.Errorf("application %s has no connection %q", req.Application, spec.SQL.Connection)
		}
		session, err := sqlsession.Open(ctx, conn)
		if err != nil {
			return nil, err
		}
		defer session.Close()
		row, err := session.Run(ctx, []string{spec.SQL.Query})
		if err != nil {
			return nil, err
		}
		if len(row) != 1 {
			return nil, fmt.Errorf("a wait query must return one column, got %d", len(row))
		}
		for _, v := range row {
			if v == spec.SQL.Expect {
				return row, nil
			}
			return nil, fmt.Errorf("query returned %q, want %q", v, spec.SQL.Expect)
		}
		return nil, nil
	}
}

package blueprint

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func renderCtx() TemplateContext {
	return TemplateContext{
		App:       App{Name: "shop", Namespace: "prod"},
		Namespace: "prod",
		Targets:   []string{"shop-0"},
		Steps:     map[string]StepResult{"probe": {Output: map[string]string{"code": "204", "ok": "true", "empty": "", "name": `x"; rm -rf / #`}}},
		Secrets:   map[string]string{"password": "s3cret"},
		Params:    map[string]string{"mode": "fast"},
		Time:      time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

func stepFrom(t *testing.T, yamlStep string) *Step {
	t.Helper()
	b := parseString(t, withBackup("  secrets: [password]\n  params: {mode: fast}\n", `      - name: probe
        kind: exec
        outputs: [code, ok, name]
        exec: {command: [probe]}
`+yamlStep))
	return &b.Action(ActionBackup)[1]
}

func TestRenderBlueprintStep(t *testing.T) {
	s := stepFrom(t, `      - name: call
        kind: http
        timeout: 10s
        retry: {attempts: 3, backoff: 1s}
        http:
          method: POST
          url: "http://{{ .App.Name }}.{{ .Namespace }}.svc/{{ .Time.Unix }}"
          headers: {X-Pass: "{{ .Secrets.password }}"}
          expectStatus: [200, "{{ .Steps.probe.Output.code }}"]
          capture: {state: /state}
`)
	r, err := s.Render(renderCtx())
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != "call" || r.Kind != KindHTTP || r.Timeout.Std() != 10*time.Second || r.Retry.Attempts != 3 ||
		r.OnError != OnErrorFail || strings.Join(r.Outputs, ",") != "state" || r.Skip || r.Hold {
		t.Errorf("rendered = %+v", r)
	}
	var spec HTTPSpec
	if err := json.Unmarshal(r.Spec, &spec); err != nil {
		t.Fatal(err)
	}
	if spec.URL != "http://shop.prod.svc/1767323045" || spec.Headers["X-Pass"] != "s3cret" ||
		len(spec.ExpectStatus) != 2 || spec.ExpectStatus[1] != 204 {
		t.Errorf("spec = %+v", spec)
	}
}

// Template output is data: whatever an output contains, it stays one argv
// element and nothing reaches a shell.
func TestRenderBlueprintKeepsOutputOutOfTheShell(t *testing.T) {
	s := stepFrom(t, `      - name: echo
        kind: exec
        exec: {command: [echo, "{{ .Steps.probe.Output.name }}"]}
`)
	r, err := s.Render(renderCtx())
	if err != nil {
		t.Fatal(err)
	}
	var spec ExecSpec
	if err := json.Unmarshal(r.Spec, &spec); err != nil {
		t.Fatal(err)
	}
	if len(spec.Command) != 2 || spec.Command[1] != `x"; rm -rf / #` {
		t.Errorf("command = %q", spec.Command)
	}
}

func TestRenderBlueprintWhen(t *testing.T) {
	for _, tc := range []struct {
		when string
		skip bool
		err  error
	}{
		{`{{ eq .Params.mode "fast" }}`, false, nil},
		{`{{ eq .Params.mode "slow" }}`, true, nil},
		{` {{ .Steps.probe.Output.ok }} `, false, nil},
		{`{{ .Params.mode }}`, false, ErrCondition},
		{`{{ .Params.nope }}`, false, ErrTemplate},
	} {
		s := stepFrom(t, `      - name: maybe
        kind: exec
        when: '`+tc.when+`'
        exec: {command: [x]}
`)
		r, err := s.Render(renderCtx())
		if tc.err != nil {
			var re *RenderError
			if !errors.Is(err, tc.err) || !errors.As(err, &re) || re.Field != "when" {
				t.Errorf("when %q: err %v, want %v in field when", tc.when, err, tc.err)
			}
			continue
		}
		if err != nil || r.Skip != tc.skip || (!tc.skip && len(r.Spec) == 0) {
			t.Errorf("when %q: %+v, %v", tc.when, r, err)
		}
	}
}

func TestRenderBlueprintInverse(t *testing.T) {
	s := stepFrom(t, `      - name: pause
        kind: exec
        outputs: [token]
        exec: {command: [pause, "{{ .App.Name }}"]}
        inverse:
          kind: exec
          timeout: 1m
          retry: {attempts: 5, backoff: 2s}
          exec: {command: [resume, "{{ .Steps.probe.Output.code }}"]}
`)
	r, err := s.Render(renderCtx())
	if err != nil {
		t.Fatal(err)
	}
	if r.Inverse == nil || r.InverseDeferred || r.Inverse.Name != "pause-inverse" || r.Inverse.Timeout.Std() != time.Minute {
		t.Fatalf("inverse = %+v", r.Inverse)
	}
	if !strings.Contains(string(r.Inverse.Spec), `"resume","204"`) {
		t.Errorf("inverse spec = %s", r.Inverse.Spec)
	}

	// An inverse that needs its own step's outputs waits for them.
	own := stepFrom(t, `      - name: pause
        kind: exec
        outputs: [token]
        exec: {command: [pause]}
        inverse:
          kind: exec
          exec: {command: [resume, "{{ .Steps.pause.Output.token }}"]}
`)
	r, err = own.Render(renderCtx())
	if err != nil || r.Inverse != nil || !r.InverseDeferred {
		t.Fatalf("Render = %+v, %v; want the inverse deferred", r, err)
	}
	ctx := renderCtx()
	ctx.Steps["pause"] = StepResult{Output: map[string]string{"token": "t0k"}}
	inv, err := own.RenderInverse(ctx)
	if err != nil || !strings.Contains(string(inv.Spec), `"t0k"`) {
		t.Errorf("RenderInverse = %+v, %v", inv, err)
	}
}

func TestRenderBlueprintRefusesBadResults(t *testing.T) {
	for _, tc := range []struct{ name, step, field string }{
		{"rendered status is no number", `      - name: s
        kind: http
        http: {url: "http://x", expectStatus: ["{{ .Params.mode }}"]}
`, ""},
		{"rendered command is empty", `      - name: s
        kind: exec
        exec: {command: ["{{ .Steps.probe.Output.missing }}"]}
`, "exec.command[0]"},
		{"missing index key", `      - name: s
        kind: exec
        exec: {command: [x, '{{ index .Secrets "other" }}']}
`, "exec.command[1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Parse("r.yaml", []byte(withBackup("  secrets: [password, other]\n  params: {mode: fast}\n", `      - name: probe
        kind: exec
        outputs: [code, empty]
        exec: {command: [probe]}
`+tc.step)))
			if err != nil {
				t.Fatal(err)
			}
			_, err = b.Action(ActionBackup)[1].Render(renderCtx())
			var re *RenderError
			if !errors.As(err, &re) || re.Step != "s" || (tc.field != "" && re.Field != tc.field) {
				t.Errorf("Render = %v, want a RenderError for step s field %q", err, tc.field)
			}
		})
	}
}

func TestBlueprintParamValues(t *testing.T) {
	b := parseString(t, withBackup("  params: {db: shop, user: app}\n", snapshotStep))
	got, err := b.ParamValues(map[string]string{"db": "orders"})
	if err != nil || got["db"] != "orders" || got["user"] != "app" {
		t.Errorf("ParamValues = %v, %v", got, err)
	}
	if _, err := b.ParamValues(map[string]string{"dbname": "x"}); !errors.Is(err, ErrUnknownParam) {
		t.Errorf("unknown override: %v", err)
	}
}

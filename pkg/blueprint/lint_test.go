package blueprint

import (
	"strings"
	"testing"
)

// withBackup makes a blueprint whose backup action is steps (YAML list
// items indented by six spaces) and whose spec has extra lines.
func withBackup(extra, steps string) string {
	return `apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: t}
spec:
` + extra + `  actions:
    backup:
` + steps + `    restore:
      - name: snapshot
        kind: snapshot
`
}

func lintString(t *testing.T, doc string) Diagnostics {
	t.Helper()
	return Lint(parseString(t, doc))
}

const holdLock = `      - name: lock
        kind: sql
        sql: {connection: primary, statements: [a], hold: true, release: [b]}
        outputs: [label]
`

const snapshotStep = `      - name: snapshot
        kind: snapshot
`

func TestLintBlueprintAccepts(t *testing.T) {
	for _, tc := range []struct{ name, doc string }{
		{"held sql session is its own inverse", withBackup("", holdLock+snapshotStep)},
		{"read-only quiesce step with a reason", withBackup("", `      - name: check
        kind: exec
        exec: {command: [pg_isready]}
        noInverse: only reads
`+snapshotStep)},
		{"hold outputs after the snapshot", withBackup("", holdLock+snapshotStep+`      - name: keep
        kind: exec
        exec: {command: [echo, "{{ .Steps.lock.Output.label }}"]}
`)},
		{"inverse uses its own step's outputs", withBackup("", `      - name: pause
        kind: http
        http: {url: "http://x/pause", capture: {token: /token}}
        inverse:
          kind: http
          http: {url: "http://x/resume/{{ .Steps.pause.Output.token }}"}
`+snapshotStep)},
		{"same when condition", withBackup("  params: {mode: fast}\n", `      - name: a
        kind: exec
        when: '{{ eq .Params.mode "fast" }}'
        outputs: [x]
        exec: {command: [a]}
      - name: b
        kind: exec
        when: '{{ eq .Params.mode "fast" }}'
        exec: {command: [b, "{{ .Steps.a.Output.x }}"]}
`)},
		{"range and with over known values", withBackup("  secrets: [db-pass]\n", `      - name: a
        kind: exec
        outputs: [x]
        exec: {command: [a]}
      - name: b
        kind: exec
        exec:
          command: [b, '{{ range $i, $p := .StatefulSet.Pods }}{{ $p }}{{ $.Namespace }}{{ end }}', '{{ with .Steps.a.Output }}{{ .x }}{{ end }}', '{{ .Time.Format "2006" }}', '{{ join .Targets "," }}']
          env: {P: '{{ index .Secrets "db-pass" }}', O: '{{ .Object.spec.anything.goes }}', V: '{{ .App.Volumes.data }}'}
`)},
		{"shell script fixed, values in env and positional args", withBackup("", `      - name: a
        kind: exec
        exec:
          command: [sh, -ec, 'echo "$NAME" "$1"', sh, '{{ .App.Name }}']
          env: {NAME: '{{ .App.Name }}'}
`)},
		{"templated number", withBackup("  params: {code: \"200\"}\n", `      - name: a
        kind: http
        http: {url: "http://x", expectStatus: ['{{ .Params.code }}']}
`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diags := lintString(t, tc.doc); diags != nil {
				t.Errorf("Lint:\n%v", diags)
			}
		})
	}
}

func TestLintBlueprintRefuses(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"wrong apiVersion", strings.Replace(withBackup("", snapshotStep), "v1alpha1", "v1", 1), `apiVersion: apiVersion is "tidemark.io/v1" (use apiVersion: tidemark.io/v1alpha1)`},
		{"no restore", strings.Replace(withBackup("", snapshotStep), "    restore:\n      - name: snapshot\n        kind: snapshot\n", "", 1), "the blueprint has no restore action"},
		{"unknown action", withBackup("", snapshotStep) + "    backpu: []\n", `unknown action "backpu" (did you mean "backup"?`},
		{"duplicate step name", withBackup("", snapshotStep+snapshotStep), `a second step named "snapshot"`},
		{"two snapshots", withBackup("", snapshotStep+strings.Replace(snapshotStep, "name: snapshot", "name: snap2", 1)), "a second snapshot step"},
		{"quiesce without inverse", withBackup("", `      - name: freeze
        kind: exec
        exec: {command: [fsfreeze, -f, /data]}
`+snapshotStep), `step "freeze" runs before the snapshot step, so it quiesces the application, but it has no inverse`},
		{"hold without release", withBackup("", strings.Replace(holdLock, ", release: [b]", "", 1)+snapshotStep), "but it has no inverse"},
		{"release without hold", withBackup("", strings.Replace(holdLock, "hold: true", "hold: false", 1)+snapshotStep), "sql.release: is set but hold is not"},
		{"hold after snapshot", withBackup("", snapshotStep+holdLock), `holds its session but does not come before a snapshot step`},
		{"quiesce continues on error", withBackup("", strings.Replace(holdLock, "        outputs", "        onError: continue\n        outputs", 1)+snapshotStep), "must not continue on error"},
		{"hold outputs before the thaw", withBackup("", holdLock+`      - name: use
        kind: exec
        exec: {command: [echo, "{{ .Steps.lock.Output.label }}"]}
        noInverse: reads
`+snapshotStep), "come from its release, which runs right after the snapshot step"},
		{"output of a later step", withBackup("", `      - name: a
        kind: exec
        exec: {command: [a, "{{ .Steps.b.Output.x }}"]}
      - name: b
        kind: exec
        outputs: [x]
        exec: {command: [b]}
`), `.Steps.b.Output.x: step "b" runs after "a"`},
		{"output of a skipped step", withBackup("  params: {mode: fast}\n", `      - name: a
        kind: exec
        when: '{{ eq .Params.mode "fast" }}'
        outputs: [x]
        exec: {command: [a]}
      - name: b
        kind: exec
        exec: {command: [b, "{{ .Steps.a.Output.x }}"]}
`), `step "a" has a when condition, so it may have been skipped`},
		{"output of a step that may fail", withBackup("", `      - name: a
        kind: exec
        onError: continue
        outputs: [x]
        exec: {command: [a]}
      - name: b
        kind: exec
        when: '{{ eq .Steps.a.Output.x "1" }}'
        exec: {command: [b]}
`), `step "a" continues on error, so it may have left no outputs`},
		{"undeclared secret", withBackup("", `      - name: a
        kind: exec
        exec: {command: [a], env: {P: "{{ .Secrets.pasword }}"}}
`), `.Secrets.pasword: secret "pasword" is not declared (add it to spec.secrets: [pasword])`},
		{"undeclared secret by index", withBackup("  secrets: [db-pass]\n", `      - name: a
        kind: exec
        exec: {command: [a], env: {P: '{{ index .Secrets "db-pas" }}'}}
`), `secret "db-pas" is not declared (did you mean "db-pass"?`},
		{"backup context in backup", withBackup("", `      - name: a
        kind: exec
        exec: {command: [a, "{{ .Backup.Time }}"]}
`), ".Backup is set only in restore and delete actions"},
		{"http output not captured", withBackup("", `      - name: a
        kind: http
        outputs: [state]
        http: {url: "http://x", capture: {status: /status}}
`), `an http step's outputs are its captures, and it captures no "state"`},
		{"bad capture pointer", withBackup("", `      - name: a
        kind: http
        http: {url: "http://x", capture: {state: snapshot.state}}
`), `"snapshot.state" is not a JSON pointer`},
		{"bad http method", withBackup("", `      - name: a
        kind: http
        http: {url: "http://x", method: FETCH}
`), `"FETCH" is not an HTTP method`},
		{"wait with two conditions", withBackup("", `      - name: a
        kind: wait
        wait: {exec: {command: [a]}, http: {url: "http://x"}}
`), "has 2 conditions (give exactly one of http, sql and exec)"},
		{"empty command", withBackup("", `      - name: a
        kind: exec
        exec: {command: []}
`), "spec.actions.backup[0].exec.command: is empty"},
		{"bad onError", withBackup("", `      - name: a
        kind: exec
        onError: ignore
        exec: {command: [a]}
`), `onError "ignore" is neither fail nor continue`},
		{"zero attempts", withBackup("", `      - name: a
        kind: exec
        retry: {attempts: 0, backoff: 1s}
        exec: {command: [a]}
`), "attempts must be at least 1"},
		{"inverse with when", withBackup("", `      - name: a
        kind: exec
        exec: {command: [a]}
        inverse: {kind: exec, when: "true", exec: {command: [b]}}
`), "an inverse cannot have when"},
		{"inverse and noInverse", withBackup("", `      - name: a
        kind: exec
        exec: {command: [a]}
        noInverse: why
        inverse: {kind: exec, exec: {command: [b]}}
`), "has an inverse and noInverse"},
		{"shell template", withBackup("", `      - name: a
        kind: exec
        exec: {command: [/bin/bash, -c, 'echo {{ .App.Name }}']}
`), "a template inside a shell script"},
		{"bad output name", withBackup("", `      - name: a
        kind: exec
        outputs: [my-output]
        exec: {command: [a]}
`), `"my-output" is not a valid output name`},
		{"artifact twice", withBackup("", `      - name: a
        kind: dump
        dump: {command: [a], artifact: db.sql}
      - name: b
        kind: dump
        dump: {command: [b], artifact: db.sql}
`), `artifact "db.sql" is written twice`},
		{"unknown param", withBackup("", `      - name: a
        kind: exec
        exec: {command: [a, "{{ .Params.db }}"]}
`), `parameter "db" is not declared`},
		{"method on a string", withBackup("", `      - name: a
        kind: exec
        exec: {command: [a, "{{ .App.Name.Foo }}"]}
`), ".App.Name is a string and has no field Foo"},
		{"unknown root field", withBackup("", `      - name: a
        kind: exec
        exec: {command: [a, "{{ .Pods }}"]}
`), "the template context has no field Pods"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			diags := lintString(t, tc.doc)
			if !strings.Contains(diags.Error(), tc.want) {
				t.Errorf("Lint:\n%v\nwant %q", diags, tc.want)
			}
			for _, d := range diags {
				if d.Line == 0 {
					t.Errorf("%q has no position", d)
				}
			}
		})
	}
}

// Lint works on a blueprint built in code too, without positions.
func TestLintBlueprintBuiltInCode(t *testing.T) {
	b := &Blueprint{APIVersion: APIVersion, Kind: BlueprintKind, Metadata: Metadata{Name: "code"},
		Spec: Spec{Actions: map[string]Action{
			ActionBackup:  {{Name: "x", Kind: "nope"}},
			ActionRestore: {{Name: "snapshot", Kind: KindSnapshot}},
		}}}
	diags := Lint(b)
	if len(diags) != 1 || diags[0].String() != `spec.actions.backup[0].kind: unknown step kind "nope" (use one of: dump, exec, http, snapshot, sql, wait)` {
		t.Errorf("Lint = %v", diags)
	}
}

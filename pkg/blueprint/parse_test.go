package blueprint

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

const goodBlueprint = `apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: shop, description: "a test"}
spec:
  maxFreeze: 45s
  secrets: [password]
  params: {database: shop}
  actions:
    backup:
      - name: lock
        kind: sql
        sql:
          connection: primary
          statements: ["FLUSH TABLES WITH READ LOCK"]
          hold: true
          release: ["UNLOCK TABLES"]
        timeout: 30s
        retry: {attempts: 2, backoff: 1s}
      - name: snapshot
        kind: snapshot
      - name: dump
        kind: dump
        dump:
          artifact: shop.sql
          command: [mariadb-dump, "{{ .Params.database }}"]
          env: {MYSQL_PWD: "{{ .Secrets.password }}"}
        onError: continue
    restore:
      - name: snapshot
        kind: snapshot
`

func parseString(t *testing.T, doc string) *Blueprint {
	t.Helper()
	b, err := Parse("test.yaml", []byte(doc))
	if err != nil {
		t.Fatalf("Parse:\n%v", err)
	}
	return b
}

func TestParseBlueprintFieldsAndDefaults(t *testing.T) {
	b := parseString(t, goodBlueprint)
	if diags := Lint(b); diags != nil {
		t.Fatalf("Lint:\n%v", diags)
	}
	if b.MaxFreeze() != 45*time.Second || b.Metadata.Name != "shop" || !b.DeclaresSecret("password") {
		t.Errorf("header = %+v", b)
	}
	backup := b.Action(ActionBackup)
	if len(backup) != 3 || backup.SnapshotIndex() != 1 {
		t.Fatalf("backup = %+v", backup)
	}
	lock := backup.Step("lock")
	if lock.Timeout.Std() != 30*time.Second || lock.Retry.Attempts != 2 || lock.Retry.Backoff.Std() != time.Second {
		t.Errorf("lock = %+v", lock)
	}
	if !lock.Holds() || !lock.HasInverse() {
		t.Errorf("a sql step with hold and release holds (%v) and undoes itself (%v)", lock.Holds(), lock.HasInverse())
	}
	// Defaults are filled in so that what `show` prints is what applies.
	snap := backup.Step("snapshot")
	if snap.Timeout.Std() != DefaultStepTimeout || snap.OnError != OnErrorFail {
		t.Errorf("snapshot defaults = %+v", snap)
	}
	if backup.Step("dump").OnError != OnErrorContinue {
		t.Error("onError: continue was lost")
	}
	if dflt := parseString(t, strings.Replace(goodBlueprint, "  maxFreeze: 45s\n", "", 1)); dflt.MaxFreeze() != DefaultMaxFreeze {
		t.Errorf("default maxFreeze = %s", dflt.MaxFreeze())
	}
}

// A step written back as JSON has the shape it was read in (the kind block
// keyed by the kind), so a blueprint can round-trip through a CRD.
func TestBlueprintStepJSONRoundTrip(t *testing.T) {
	b := parseString(t, goodBlueprint)
	data, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"sql":{"connection":"primary"`) {
		t.Errorf("marshalled step lost its kind block: %s", data)
	}
	var back Blueprint
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	again, _ := json.Marshal(&back)
	if string(again) != string(data) {
		t.Errorf("round trip changed the blueprint:\n%s\n%s", data, again)
	}
	var s Step
	if err := json.Unmarshal([]byte(`{"name":"x","kind":"exec","exec":{},"sql":{}}`), &s); err == nil {
		t.Error("a step with two kind blocks decoded")
	}
	if err := json.Unmarshal([]byte(`{"name":"x","kind":"exec","bogus":1}`), &s); err == nil {
		t.Error("a step with an unknown field decoded")
	}
}

// Parse reports every problem at once, each at its position.
func TestParseBlueprintReportsEveryProblem(t *testing.T) {
	doc := `apiVersion: tidemark.io/v1alpha1
kind: Blueprint
metadata: {name: x}
spec:
  maxFreeze: 1m
  actions:
    backup:
      - name: a
        kind: exec
        exec: {command: [true], target: [a, b]}
        timeout: 5
      - name: b
        kind: sql
        sql: {connection: primary, statements: [x], hold: "yes"}
        retry: {attempts: two}
    restore: {name: c}
`
	_, err := Parse("p.yaml", []byte(doc))
	var diags Diagnostics
	if !errors.As(err, &diags) {
		t.Fatalf("Parse = %v", err)
	}
	want := []string{
		"p.yaml:10:26: spec.actions.backup[0].exec.command[0]: want a string, got the boolean true",
		"p.yaml:10:41: spec.actions.backup[0].exec.target: want a string, got a list",
		"p.yaml:11:18: spec.actions.backup[0].timeout: 5 has no unit",
		"p.yaml:14:59: spec.actions.backup[1].sql.hold: want true or false, got the string \"yes\"",
		"p.yaml:15:27: spec.actions.backup[1].retry.attempts: want a whole number",
		"p.yaml:16:14: spec.actions.restore: want a list, got a mapping",
	}
	got := diags.Error()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("missing %q in\n%s", w, got)
		}
	}
	if len(diags) != len(want) {
		t.Errorf("%d diagnostics, want %d:\n%s", len(diags), len(want), got)
	}
}

func TestParseBlueprintDocumentProblems(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"empty", "", "e.yaml:1:1: the file is empty"},
		{"comment only", "# nothing\n", "e.yaml:1:1: the file is empty"},
		{"two documents", goodBlueprint + "---\n" + goodBlueprint, "a second YAML document"},
		{"not a mapping", "- a\n- b\n", "want a mapping, got a list"},
		{"duplicate key", "apiVersion: a\napiVersion: b\n", `e.yaml:2:1: apiVersion: "apiVersion" is given twice`},
		{"merge key", "base: &b {name: x}\nmetadata:\n  <<: *b\n", `unknown field "base"`},
		{"yaml 1.1 boolean", strings.Replace(goodBlueprint, "[mariadb-dump,", "[mariadb-dump, on,", 1), `on reads as a boolean in YAML 1.1 (quote it: "on")`},
		{"kind block mismatch", strings.Replace(goodBlueprint, "        dump:\n", "        exec:\n", 1), "the step's kind is dump but its arguments are in a exec block"},
		{"missing block", strings.Replace(goodBlueprint, "        kind: sql\n        sql:\n", "        kind: sql\n        sq:\n", 1), "the sql step has no sql block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("e.yaml", []byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse = %v, want %q", err, tc.want)
			}
		})
	}
}

// Aliases that make a small file expand into a huge tree cannot make
// parsing expensive: the walk has a budget.
func TestParseBlueprintBoundsAliasExpansion(t *testing.T) {
	var b strings.Builder
	b.WriteString("apiVersion: tidemark.io/v1alpha1\nkind: Blueprint\nmetadata: {name: x}\nspec:\n  actions:\n    restore:\n")
	b.WriteString("      - &big\n        name: big\n        kind: exec\n        exec:\n          command: [x]\n          env:\n")
	for i := range 2000 {
		fmt.Fprintf(&b, "            K%d: v\n", i)
	}
	b.WriteString("    backup: [")
	for i := range 500 {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("*big")
	}
	b.WriteString("]\n")
	start := time.Now()
	_, err := Parse("bomb.yaml", []byte(b.String()))
	if err == nil || !strings.Contains(err.Error(), "the document is too large") {
		t.Fatalf("Parse = %.300v, want the document refused as too large", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("parsing took %s", d)
	}
}

func TestDiagnosticStringFormats(t *testing.T) {
	for _, tc := range []struct {
		d    Diagnostic
		want string
	}{
		{Diagnostic{File: "f.yaml", Line: 3, Column: 7, Field: "spec.maxFreeze", Message: "bad", Hint: "fix it"}, "f.yaml:3:7: spec.maxFreeze: bad (fix it)"},
		{Diagnostic{File: "f.yaml", Message: "bad"}, "f.yaml: bad"},
		{Diagnostic{Field: "kind", Message: "bad"}, "kind: bad"},
	} {
		if got := tc.d.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
	if (Diagnostics(nil)).Err() != nil {
		t.Error("empty Diagnostics.Err() is not nil")
	}
}

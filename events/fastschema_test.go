package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// The fast validator (fastschema.go) is held to santhosh-tekuri/jsonschema,
// the reference: whatever it calls valid, the reference accepts; whatever it
// calls invalid, the reference rejects with a schema violation. It may only
// be unsure, which sends the document to the reference.

// referenceVerdict validates with santhosh-tekuri/jsonschema alone.
func referenceVerdict(t testing.TB, typ Type, data []byte) error {
	t.Helper()
	sch, err := schemaOf(typ)
	if err != nil {
		t.Fatal(err)
	}
	return validateReference(sch, data)
}

// agree fails t when the fast verdict contradicts the reference.
func agree(t testing.TB, typ Type, data []byte) fastVerdict {
	t.Helper()
	fast := fastValidate(typ, data)
	ref := referenceVerdict(t, typ, data)
	switch fast {
	case fastValid:
		if ref != nil {
			t.Fatalf("%s: fast validator accepts what the schema rejects (%v):\n%s", typ, ref, data)
		}
	case fastInvalid:
		var de *DecodeError
		if !errors.As(ref, &de) || de.Problem != ProblemSchemaViolation {
			t.Fatalf("%s: fast validator rejects what the schema does not (reference: %v):\n%s", typ, ref, data)
		}
	}
	return fast
}

func TestFastValidatorCoversEveryType(t *testing.T) {
	for _, d := range All() {
		sch, err := schemaOf(d.Type)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := compileFast(sch); err != nil {
			t.Errorf("%s: %v\n(extend events/fastschema.go, or every %s goes through the slower reference validator)", d.Type, err, d.Type)
		}
	}
}

func TestFastValidatorAcceptsEveryExample(t *testing.T) {
	for _, d := range All() {
		for i, ex := range readSchemaDoc(t, d.Type).Examples {
			if v := agree(t, d.Type, ex); v != fastValid {
				t.Errorf("%s example %d: fast verdict %s, want valid", d.Type, i, v)
			}
			// What a producer sends: the example as its Go value marshals it.
			p, err := d.decode(ex)
			if err != nil {
				t.Fatal(err)
			}
			back, _ := json.Marshal(p)
			if v := agree(t, d.Type, back); v != fastValid {
				t.Errorf("%s example %d marshalled from Go: fast verdict %s, want valid", d.Type, i, v)
			}
		}
	}
}

// propertyNames returns every property name any schema declares, so that
// mutations also add properties that conditional schemas forbid or require.
func propertyNames(t *testing.T) []string {
	set := map[string]bool{}
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if props, ok := v["properties"].(map[string]any); ok {
				for k := range props {
					set[k] = true
				}
			}
			for k, x := range v {
				if k != "examples" {
					walk(x)
				}
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	entries, err := schemaFiles.ReadDir("schemas")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		raw, _ := schemaFiles.ReadFile("schemas/" + e.Name())
		var doc any
		if err := json.Unmarshal(raw, &doc); err != nil {
			t.Fatal(err)
		}
		walk(doc)
	}
	names := make([]string, 0, len(set))
	for k := range set {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// replacements are values put in place of every value of an example: wrong
// types, empty and boundary values, and values that satisfy or break the
// schemas' patterns, enums, formats and conditions.
var replacements = []any{
	nil, true, false, 0.0, -1.0, 1.5, 7.0, "", "x", "µ", "a b", "60", "30s", "-5s", "1h0m0s",
	"new", "production", "snapshot", "dump", "sql", "succeeded", "copy",
	"2026-11-22T21:04:05Z", "2026-13-22T21:04:05Z", "2026-11-22 21:04:05",
	[]any{}, []any{"x"}, []any{"x", "x"}, []any{"x", "y"}, []any{1.0},
	map[string]any{}, map[string]any{"k": "v"}, map[string]any{"k": 1.0},
	map[string]any{"step": "unfreeze", "outcome": "failed", "attempts": 1.0},
	map[string]any{"mode": "new", "name": "x"}, map[string]any{"mode": "production"}, map[string]any{"mode": "production", "name": "x"},
	map[string]any{"name": "data", "source": "/var/lib/data"},
}

// mutations returns documents derived from v: each value replaced, each
// property removed, unknown and known properties added, at every depth.
func mutations(v any, names []string) []any {
	out := append([]any(nil), replacements...)
	switch v := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			without := cloneMap(v)
			delete(without, k)
			out = append(out, without)
			for _, m := range mutations(v[k], names) {
				c := cloneMap(v)
				c[k] = m
				out = append(out, c)
			}
		}
		for _, name := range append([]string{"zzz", "RunID"}, names...) {
			if _, ok := v[name]; ok {
				continue
			}
			for _, val := range []any{"x", "30s", 1.0} {
				c := cloneMap(v)
				c[name] = val
				out = append(out, c)
			}
		}
	case []any:
		for i := range v {
			for _, m := range mutations(v[i], nil) {
				c := append([]any(nil), v...)
				c[i] = m
				out = append(out, c)
			}
		}
		out = append(out, append(append([]any(nil), v...), v...))
		if len(v) > 0 {
			out = append(out, append([]any(nil), v[1:]...))
		}
	}
	return out
}

func cloneMap(m map[string]any) map[string]any {
	c := make(map[string]any, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func marshalPlain(t testing.TB, v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSpace(b.Bytes())
}

// TestFastValidatorAgreesOnMutatedExamples mutates every example of every
// type and requires the fast validator to reach the reference's verdict on
// each document, not merely to avoid contradicting it: documents written by
// encoding/json (no escapes, no duplicate keys) are never left to the
// reference, except for a fraction where an integer is expected.
func TestFastValidatorAgreesOnMutatedExamples(t *testing.T) {
	names := propertyNames(t)
	total, unsure, invalid := 0, 0, 0
	for _, d := range All() {
		for _, ex := range readSchemaDoc(t, d.Type).Examples {
			var doc any
			if err := json.Unmarshal(ex, &doc); err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for _, m := range mutations(doc, names) {
				data := marshalPlain(t, m)
				if seen[string(data)] {
					continue
				}
				seen[string(data)] = true
				total++
				switch agree(t, d.Type, data) {
				case fastUnsure:
					unsure++
					if !bytes.Contains(data, []byte("1.5")) {
						t.Errorf("%s: fast validator unsure of a plain document:\n%s", d.Type, data)
					}
				case fastInvalid:
					invalid++
				}
				// A producer's path: the document leniently read into the Go
				// type and marshalled back.
				p, err := d.decode(data)
				if err != nil {
					continue
				}
				back, err := json.Marshal(p)
				if err != nil {
					continue
				}
				if v := agree(t, d.Type, back); v == fastUnsure {
					t.Errorf("%s: fast validator unsure of a marshalled Go value:\n%s", d.Type, back)
				}
			}
		}
	}
	t.Logf("%d mutated documents: %d invalid, %d left to the reference", total, invalid, unsure)
	if invalid < total/2 {
		t.Errorf("only %d of %d mutations are invalid; the mutations do not exercise the schemas", invalid, total)
	}
}

// TestFastValidatorDefersWhatItCannotDecide covers what encoding/json never
// writes but a foreign producer may.
func TestFastValidatorDefersWhatItCannotDecide(t *testing.T) {
	hook := HookRequested{}.EventType()
	target := RestoreRequested{}.EventType()
	dl := DeadLettered{}.EventType()
	snap := SnapshotDeleteRequested{}.EventType()
	const base = `"runId":"r1","application":"a","step":"s","kind":"sql","spec":{},"timeout":"30s","idempotencyKey":"k"`
	cases := []struct {
		typ  Type
		doc  string
		want fastVerdict
	}{
		{hook, `{` + base + `}`, fastValid},
		{hook, " \n{ " + strings.ReplaceAll(base, ",", " ,\t") + " }\r\n", fastValid},
		{hook, `{` + base + `,"holdFor":"1.5µs"}`, fastValid},
		{hook, `{` + base + `,"holdFor":"-1s"}`, fastInvalid},
		{hook, `{` + base + `,"holdFor":null}`, fastInvalid},
		{hook, `{` + base + `,"extra":1}`, fastInvalid},
		{hook, `{` + base + `,"RunId":"r1"}`, fastInvalid},
		{hook, `{` + strings.Replace(base, `"sql"`, `"SQL"`, 1) + `}`, fastInvalid},
		{hook, `{` + strings.Replace(base, `"r1"`, `"r 1"`, 1) + `}`, fastInvalid},
		{hook, `{` + strings.Replace(base, `"r1"`, `""`, 1) + `}`, fastInvalid},
		{hook, `{` + strings.Replace(base, `"spec":{}`, `"spec":[]`, 1) + `}`, fastInvalid},
		{hook, `{` + strings.Replace(base, `"spec":{}`, `"spec":{"a":[1,2.5e3,-0,true,null,"\u00e9\n"]}`, 1) + `}`, fastValid},
		// Escapes, duplicates, odd numbers, bad UTF-8, bad syntax: the reference decides.
		{hook, `{` + base + `,"run\u0049d":"r1"}`, fastUnsure},
		{hook, `{` + base + `,"runId":"r2"}`, fastUnsure},
		{hook, `{` + base + `,"runId":"bad id"}`, fastUnsure},
		{hook, `{` + strings.Replace(base, `"spec":{}`, `"spec":{"n":1e400}`, 1) + `}`, fastUnsure},
		{hook, `{` + strings.Replace(base, `"spec":{}`, `"spec":{"n":01}`, 1) + `}`, fastUnsure},
		{hook, `{` + base + `}x`, fastUnsure},
		{hook, `{` + base, fastUnsure},
		{hook, ``, fastUnsure},
		{hook, `{` + strings.Replace(base, `"step":"s"`, "\"step\":\"s\t\"", 1) + `}`, fastUnsure},
		{hook, `{` + strings.Replace(base, `"step":"s"`, "\"step\":\"\xff\"", 1) + `}`, fastValid},
		{hook, `{` + strings.Replace(base, `"r1"`, "\"r\xff\"", 1) + `}`, fastInvalid},
		{hook, `{` + strings.Replace(base, `"step":"s"`, `"step":"\u0073"`, 1) + `}`, fastValid},
		{hook, `{` + strings.Replace(base, `"step":"s"`, `"step":"\ud800"`, 1) + `}`, fastValid},
		{target, `{"restorePointId":"p","target":{"mode":"new"}}`, fastValid},
		{target, `{"restorePointId":"p","target":{"mode":"old"}}`, fastInvalid},
		{target, `{"restorePointId":"p","target":{"mode":"new","name":"x"}}`, fastValid},
		{target, `{"restorePointId":"p","target":{"mode":"production","name":"x"}}`, fastInvalid},
		{target, `{"restorePointId":"p","target":{"mode":"production","mode":"new"}}`, fastUnsure},
		{target, `{"restorePointId":"p","target":{"mode":"new","name":"x","mode":"production"}}`, fastUnsure},
		{dl, `{"reason":"r","stream":"s","consumer":"c","subject":"x","sequence":1,"deliveries":1}`, fastValid},
		{dl, `{"reason":"r","stream":"s","consumer":"c","subject":"x","sequence":1.0,"deliveries":1}`, fastUnsure},
		{dl, `{"reason":"r","stream":"s","consumer":"c","subject":"x","sequence":-1,"deliveries":1}`, fastInvalid},
		{dl, `{"reason":"r","stream":"s","consumer":"c","subject":"x","sequence":1,"deliveries":1,"headers":{"a":["1"],"a":[2]}}`, fastUnsure},
		{dl, `{"reason":"r","stream":"s","consumer":"c","subject":"x","sequence":1,"deliveries":1,"headers":{"a":null}}`, fastInvalid},
		{snap, `{"runId":"r","snapshotIds":["a","b"]}`, fastValid},
		{snap, `{"runId":"r","snapshotIds":["a","a"]}`, fastInvalid},
		{snap, `{"runId":"r","snapshotIds":["a","\u0061"]}`, fastUnsure},
		{snap, `{"runId":"r","snapshotIds":[]}`, fastInvalid},
		{snap, `{"runId":"r","snapshotIds":null}`, fastInvalid},
	}
	for _, c := range cases {
		if got := agree(t, c.typ, []byte(c.doc)); got != c.want {
			t.Errorf("%s %s: fast verdict %s, want %s", c.typ, c.doc, got, c.want)
		}
	}
	deep := strings.Repeat(`[`, 5000) + strings.Repeat(`]`, 5000)
	if got := agree(t, hook, []byte(`{`+strings.Replace(base, `"spec":{}`, `"spec":{"d":`+deep+`}`, 1)+`}`)); got != fastUnsure {
		t.Errorf("deeply nested spec: fast verdict %s, want unsure", got)
	}
}

// TestErrorsAreTheReferences: the fast path never writes an error itself.
func TestErrorsAreTheReferences(t *testing.T) {
	typ := BackupRequested{}.EventType()
	for _, doc := range []string{`{"application":"shop/pg","maxFreeze":"60"}`, `{}`, `{"application":"a","x":1}`, `[`, `{"application":"a","application":"a"}`} {
		got := ValidatePayload(typ, []byte(doc))
		want := referenceVerdict(t, typ, []byte(doc))
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: ValidatePayload = %v, reference = %v", doc, got, want)
		}
	}
}

func FuzzFastSchemaMatchesReference(f *testing.F) {
	types := All()
	for i, d := range types {
		raw, err := SchemaJSON(d.Type)
		if err != nil {
			f.Fatal(err)
		}
		var doc struct {
			Examples []json.RawMessage `json:"examples"`
		}
		if err := json.Unmarshal(raw, &doc); err != nil {
			f.Fatal(err)
		}
		for _, ex := range doc.Examples {
			f.Add(uint8(i), []byte(ex))
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		d := types[int(which)%len(types)]
		if agree(t, d.Type, data) != fastValid {
			return
		}
		// Accepted on the fast path: it must decode as the reference path
		// decodes it.
		if _, err := DecodePayload(d.Type, data); err != nil {
			if _, rerr := d.decode(data); rerr == nil {
				t.Fatalf("%s: DecodePayload refused what decodes: %v", d.Type, err)
			}
		}
	})
}

// TestKnownPatternsMatchTheirRegexps holds the hand-written pattern
// matchers to Go's regexp on every string of up to four characters from an
// alphabet covering the patterns, and on longer durations.
func TestKnownPatternsMatchTheirRegexps(t *testing.T) {
	alphabet := []string{"0", "1", "9", ".", "-", "n", "u", "m", "s", "h", "µ", "μ", "x", "\xc2", "\xce"}
	var inputs []string
	var grow func(prefix string, n int)
	grow = func(prefix string, n int) {
		inputs = append(inputs, prefix)
		if n == 0 {
			return
		}
		for _, a := range alphabet {
			grow(prefix+a, n-1)
		}
	}
	grow("", 4)
	inputs = append(inputs, "1h30m", "1m30s", "2.5s", "350ms", "1.5µs", "1.5μs", "-1h2m3.5s", "1h0m0s", "10ns1us",
		"1m5", "1.s", ".5s", "1..5s", "1hh", "1sm", "5mss", "--1s", "1s-")
	used := 0
	for pattern, match := range knownPatterns {
		re := regexp.MustCompile(pattern)
		for _, in := range inputs {
			if got, want := match([]byte(in)), re.MatchString(in); got != want {
				t.Errorf("%s on %q: matcher %v, regexp %v", pattern, in, got, want)
			}
		}
		for _, n := range fastByType() {
			used += countMatchers(n, pattern, map[*fastNode]bool{})
		}
	}
	if used == 0 {
		t.Error("no schema uses a known pattern: the matchers are dead code")
	}
}

func countMatchers(n *fastNode, pattern string, seen map[*fastNode]bool) int {
	if n == nil || seen[n] {
		return 0
	}
	seen[n] = true
	c := 0
	if n.matcher != nil && n.pattern.String() == pattern {
		c++
	}
	for _, sub := range append([]*fastNode{n.ref, n.ifNode, n.thenNode, n.elseNode, n.additional, n.items}, n.allOf...) {
		c += countMatchers(sub, pattern, seen)
	}
	for _, p := range n.props {
		c += countMatchers(p.node, pattern, seen)
	}
	return c
}

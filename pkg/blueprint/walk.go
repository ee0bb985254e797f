package blueprint

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"
	"unicode"

	yamlv3 "go.yaml.in/yaml/v3"
)

var reflectTypeOfBlueprint = reflect.TypeFor[Blueprint]()

// maxNodes bounds the walk: aliases can make a small file expand into a
// huge tree, and parsing must stay cheap on any input.
const maxNodes = 200_000

// walker checks a yaml.Node tree against the Go types it will decode into,
// reporting every mismatch with its position, and records where each value
// is so later diagnostics (Lint) can point at it.
type walker struct {
	r       *reporter
	visited int
	tooBig  bool
}

// value checks n against t. In a kind block (tmpl), strings are templates
// and a template may also stand for a number, a boolean or a duration: its
// type is checked once it is rendered.
func (w *walker) value(n *yamlv3.Node, t reflect.Type, path string, tmpl bool) {
	if w.visited++; w.visited > maxNodes {
		if !w.tooBig {
			w.tooBig = true
			w.r.add(path, "blueprints are small; check for aliases that expand into each other", "the document is too large")
		}
		return
	}
	for n.Kind == yamlv3.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	w.r.pos[path] = position{n.Line, n.Column}
	if n.Kind == yamlv3.ScalarNode && n.ShortTag() == "!!null" {
		return // null decodes to the zero value
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == stepType:
		w.step(n, path)
		return
	case t == durationType:
		w.duration(n, path, tmpl)
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		w.object(n, t, path, tmpl)
	case reflect.Map:
		if !w.want(n, yamlv3.MappingNode, path, "a mapping of names to values") {
			return
		}
		w.pairs(n, path, func(key string, v *yamlv3.Node, p string) {
			w.value(v, t.Elem(), p, tmpl)
		})
	case reflect.Slice:
		if !w.want(n, yamlv3.SequenceNode, path, "a list") {
			return
		}
		for i, e := range n.Content {
			w.value(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i), tmpl)
		}
	case reflect.String:
		w.str(n, path)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n.Kind == yamlv3.ScalarNode && (n.ShortTag() == "!!int" || tmpl && IsTemplate(n.Value)) {
			return
		}
		w.r.add(path, "write a whole number such as 3", "want a whole number, got %s", describe(n))
	case reflect.Bool:
		if n.Kind == yamlv3.ScalarNode && (n.ShortTag() == "!!bool" || tmpl && IsTemplate(n.Value)) {
			return
		}
		w.r.add(path, "write true or false", "want true or false, got %s", describe(n))
	case reflect.Interface:
		// Anything goes; nothing in a blueprint is untyped today.
	}
}

func (w *walker) want(n *yamlv3.Node, kind yamlv3.Kind, path, what string) bool {
	if n.Kind == kind {
		return true
	}
	w.r.add(path, "", "want %s, got %s", what, describe(n))
	return false
}

// yaml11Bools are plain scalars YAML 1.1 (which sigs.k8s.io/yaml follows)
// reads as booleans: in a string field they would silently turn into
// "true" or "false".
var yaml11Bools = map[string]bool{"y": true, "yes": true, "n": true, "no": true, "on": true, "off": true}

func (w *walker) str(n *yamlv3.Node, path string) {
	if n.Kind != yamlv3.ScalarNode {
		w.r.add(path, "", "want a string, got %s", describe(n))
		return
	}
	if n.ShortTag() != "!!str" {
		w.r.add(path, fmt.Sprintf("quote it: %q", n.Value), "want a string, got %s", describe(n))
		return
	}
	if n.Style == 0 && yaml11Bools[strings.ToLower(n.Value)] {
		w.r.add(path, fmt.Sprintf("quote it: %q", n.Value), "%s reads as a boolean in YAML 1.1", n.Value)
	}
}

// duration accepts only strings with a unit: "60" or 60 could mean seconds
// or nanoseconds, and a backup tool must not guess.
func (w *walker) duration(n *yamlv3.Node, path string, tmpl bool) {
	if n.Kind != yamlv3.ScalarNode {
		w.r.add(path, `write a duration such as "30s"`, "want a duration, got %s", describe(n))
		return
	}
	v := strings.TrimSpace(n.Value)
	if tmpl && IsTemplate(v) {
		return
	}
	tag := n.ShortTag()
	if tag == "!!int" || tag == "!!float" || v != "" && !unicode.IsLetter(rune(v[len(v)-1])) {
		shown := v
		if tag == "!!str" {
			shown = fmt.Sprintf("%q", v)
		}
		w.r.add(path, fmt.Sprintf(`write %q for %s seconds; other units are ms, m and h`, v+"s", v),
			"%s has no unit", shown)
		return
	}
	d, err := time.ParseDuration(v)
	switch {
	case tag != "!!str" || err != nil:
		w.r.add(path, `write a duration such as "30s", "5m" or "1h30m"`, "%q is not a duration", v)
	case d < 0:
		w.r.add(path, `durations count forward, such as "30s"`, "%q is negative", v)
	}
}

// object checks a mapping against a struct's JSON fields.
func (w *walker) object(n *yamlv3.Node, t reflect.Type, path string, tmpl bool) {
	if !w.want(n, yamlv3.MappingNode, path, "a mapping") {
		return
	}
	fields := jsonFields(t)
	w.pairs(n, path, func(key string, v *yamlv3.Node, p string) {
		f, ok := fields[key]
		if !ok {
			w.unknownField(p, key, sortedKeys(fields))
			return
		}
		w.value(v, f.Type, p, tmpl)
	})
}

// pairs calls fn for each key of a mapping, after recording the key's
// position and refusing duplicates.
func (w *walker) pairs(n *yamlv3.Node, path string, fn func(key string, v *yamlv3.Node, p string)) {
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		p := joinPath(path, key)
		w.r.pos[p+keySuffix] = position{k.Line, k.Column}
		if k.Kind != yamlv3.ScalarNode {
			w.r.addKey(p, "keys are plain names", "a key must be a name, got %s", describe(k))
			continue
		}
		if k.ShortTag() == "!!merge" {
			w.r.addKey(p, "write the fields out in full", "merge keys (<<) are not supported")
			continue
		}
		if seen[key] {
			w.r.addKey(p, "remove one of them", "%q is given twice", key)
			continue
		}
		seen[key] = true
		fn(key, v, p)
	}
}

func (w *walker) unknownField(path, key string, known []string) {
	hint := "known fields: " + strings.Join(known, ", ")
	if s := suggest(key, known); s != "" {
		hint = fmt.Sprintf("did you mean %q? %s", s, hint)
	}
	w.r.addKey(path, hint, "unknown field %q", key)
}

// step checks one step: its fixed fields, and one block named after its
// kind holding the kind's arguments.
func (w *walker) step(n *yamlv3.Node, path string) {
	if !w.want(n, yamlv3.MappingNode, path, "a step (a mapping with name and kind)") {
		return
	}
	fields := jsonFields(stepType)
	kind := ""
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "kind" && n.Content[i+1].Kind == yamlv3.ScalarNode {
			kind = n.Content[i+1].Value
		}
	}
	block := ""
	w.pairs(n, path, func(key string, v *yamlv3.Node, p string) {
		if f, ok := fields[key]; ok {
			w.value(v, f.Type, p, false)
			return
		}
		if k, ok := LookupKind(key); ok {
			w.r.pos[p] = position{v.Line, v.Column}
			switch {
			case block != "":
				w.r.addKey(p, "a step has one kind and one block of arguments; split it into two steps",
					"a second arguments block (%s after %s)", key, block)
			case k.NewSpec == nil:
				w.r.addKey(p, "remove this block", "a %s step takes no arguments", key)
			case key != kind && kind != "":
				w.r.addKey(p, fmt.Sprintf("name the block after the kind (%s:) or change the kind to %s", kind, key),
					"the step's kind is %s but its arguments are in a %s block", kind, key)
			default:
				w.value(v, reflect.TypeOf(k.NewSpec()), p, true)
			}
			block = key
			return
		}
		if key == kind {
			return // reported once, as an unknown kind
		}
		w.unknownField(p, key, append(sortedKeys(fields), "<the kind's block: "+strings.Join(argKinds(), ", ")+">"))
	})
	kp := joinPath(path, "kind")
	switch k, ok := LookupKind(kind); {
	case kind == "":
		w.r.add(path, "kinds: "+strings.Join(Kinds(), ", "), "the step has no kind")
	case !ok:
		hint := "use one of: " + strings.Join(Kinds(), ", ")
		if s := suggest(kind, Kinds()); s != "" {
			hint = fmt.Sprintf("did you mean %q? %s", s, hint)
		}
		w.r.add(kp, hint, "unknown step kind %q", kind)
	case k.NewSpec != nil && !k.OptionalSpec && block == "":
		w.r.add(path, fmt.Sprintf("put the arguments under %s:, such as %s", kind, exampleBlock(kind)),
			"the %s step has no %s block with its arguments", kind, kind)
	}
}

// argKinds are the registered kinds that take an arguments block.
func argKinds() []string {
	var names []string
	for _, n := range Kinds() {
		if k, _ := LookupKind(n); k.NewSpec != nil {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

func exampleBlock(kind string) string {
	switch kind {
	case KindExec:
		return `exec: {command: ["pg_isready"]}`
	case KindSQL:
		return `sql: {connection: primary, statements: ["SELECT 1"]}`
	case KindHTTP:
		return `http: {url: "http://localhost:9200/"}`
	case KindWait:
		return `wait: {exec: {command: ["pg_isready"]}}`
	case KindDump:
		return `dump: {command: ["pg_dump", "-Fc"], artifact: database.dump}`
	}
	return kind + ": {...}"
}

// describe names what a node is, for "want X, got Y" messages.
func describe(n *yamlv3.Node) string {
	switch n.Kind {
	case yamlv3.MappingNode:
		return "a mapping"
	case yamlv3.SequenceNode:
		return "a list"
	case yamlv3.ScalarNode:
		switch n.ShortTag() {
		case "!!int", "!!float":
			return "the number " + n.Value
		case "!!bool":
			return "the boolean " + n.Value
		case "!!str":
			return fmt.Sprintf("the string %q", n.Value)
		}
		return n.Value
	}
	return "nothing"
}

package blueprint

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"text/template"
	"text/template/parse"
)

// Template analysis: Lint parses every template and follows each field
// reference (.App.Name, .Steps.lock.Output.labelfile, index .Secrets "x",
// and fields of a range or with over a known value) through the
// TemplateContext type, so a typo or a reference to something that will
// not exist fails at lint time rather than in the middle of a freeze.

var contextType = reflect.TypeFor[TemplateContext]()

// tmplType is what the analysis knows about a value: its Go type (nil when
// unknown) and, when the value was reached from the root context by field
// names alone, that chain.
type tmplType struct {
	t     reflect.Type
	chain []string
	// rooted is true when chain starts at the root context.
	rooted bool
	// desc names an unrooted value in messages ("an element of .Targets").
	desc string
}

var unknownType = tmplType{}

// tmplProblem is one bad reference in a template.
type tmplProblem struct{ msg, hint string }

// analyzer walks one template's parse tree.
type analyzer struct {
	// checkRooted judges a chain of field names from the root context that
	// resolved through the Go types (Steps/Secrets rules live here).
	checkRooted func(chain []string) *tmplProblem
	problems    []tmplProblem
	// chains are every rooted reference found.
	chains [][]string
}

// parseTemplate parses text the way Render will execute it.
func parseTemplate(name, text string) (*template.Template, error) {
	return template.New(name).Option("missingkey=error").Funcs(funcMap).Parse(text)
}

// analyzeTemplate parses text and checks its references. A syntax error is
// returned as the only problem.
func analyzeTemplate(text string, checkRooted func([]string) *tmplProblem) *analyzer {
	a := &analyzer{checkRooted: checkRooted}
	t, err := parseTemplate("t", text)
	if err != nil {
		a.problems = append(a.problems, tmplProblem{
			msg:  "template syntax: " + cleanTemplateError(err.Error(), strings.Contains(text, "\n")),
			hint: "see the template reference in blueprints/README.md",
		})
		return a
	}
	root := tmplType{t: contextType, rooted: true}
	for _, tt := range t.Templates() {
		if tt.Tree == nil || tt.Root == nil {
			continue
		}
		dot := root
		if tt.Name() != t.Name() {
			dot = unknownType // a {{ define }}d template: its dot is whatever the caller passes
		}
		a.list(tt.Root, dot, map[string]tmplType{"$": dot})
	}
	return a
}

// cleanTemplateError drops text/template's "template: t:LINE:" prefix,
// which names the analyzer's template rather than the blueprint field, but
// keeps the line inside a template of several lines (a script).
func cleanTemplateError(s string, multiline bool) string {
	rest, ok := strings.CutPrefix(s, "template: t:")
	if !ok {
		return s
	}
	line, msg, ok := strings.Cut(rest, ": ")
	if !ok {
		return s
	}
	if multiline {
		return "line " + line + " of the template: " + msg
	}
	return msg
}

func copyVars(v map[string]tmplType) map[string]tmplType {
	c := make(map[string]tmplType, len(v))
	for k, x := range v {
		c[k] = x
	}
	return c
}

func (a *analyzer) list(l *parse.ListNode, dot tmplType, vars map[string]tmplType) {
	if l == nil {
		return
	}
	for _, n := range l.Nodes {
		a.node(n, dot, vars)
	}
}

func (a *analyzer) node(n parse.Node, dot tmplType, vars map[string]tmplType) {
	switch n := n.(type) {
	case *parse.ActionNode:
		a.pipe(n.Pipe, dot, vars)
	case *parse.IfNode:
		a.pipe(n.Pipe, dot, vars)
		a.list(n.List, dot, copyVars(vars))
		a.list(n.ElseList, dot, copyVars(vars))
	case *parse.WithNode:
		inner := copyVars(vars)
		t := a.pipe(n.Pipe, dot, inner)
		a.list(n.List, t, inner)
		a.list(n.ElseList, dot, copyVars(vars))
	case *parse.RangeNode:
		inner := copyVars(vars)
		key, elem := rangeTypes(a.cmds(n.Pipe, dot, inner))
		switch decl := n.Pipe.Decl; len(decl) {
		case 1:
			inner[decl[0].Ident[0]] = elem
		case 2:
			inner[decl[0].Ident[0]] = key
			inner[decl[1].Ident[0]] = elem
		}
		a.list(n.List, elem, inner)
		a.list(n.ElseList, dot, copyVars(vars))
	case *parse.TemplateNode:
		if n.Pipe != nil {
			a.pipe(n.Pipe, dot, vars)
		}
	}
}

// rangeTypes returns the key and element types of ranging over t.
func rangeTypes(t tmplType) (key, elem tmplType) {
	if t.t == nil {
		return unknownType, unknownType
	}
	rt := t.t
	for rt.Kind() == reflect.Pointer {
		rt = rt.Elem()
	}
	desc := "an element"
	if t.rooted {
		desc = "an element of ." + strings.Join(t.chain, ".")
	}
	switch rt.Kind() {
	case reflect.Slice, reflect.Array:
		return tmplType{t: reflect.TypeFor[int]()}, tmplType{t: rt.Elem(), desc: desc}
	case reflect.Map:
		return tmplType{t: rt.Key()}, tmplType{t: rt.Elem(), desc: desc}
	case reflect.Int, reflect.Int64:
		return tmplType{t: rt}, tmplType{t: rt}
	}
	return unknownType, unknownType
}

// pipe analyzes a pipeline and binds the variables it declares.
func (a *analyzer) pipe(p *parse.PipeNode, dot tmplType, vars map[string]tmplType) tmplType {
	t := a.cmds(p, dot, vars)
	if p != nil {
		for _, d := range p.Decl {
			vars[d.Ident[0]] = t
		}
	}
	return t
}

// cmds returns the type a pipeline's value has.
func (a *analyzer) cmds(p *parse.PipeNode, dot tmplType, vars map[string]tmplType) tmplType {
	t := unknownType
	if p == nil {
		return t
	}
	for _, c := range p.Cmds {
		t = a.command(c, dot, vars)
	}
	return t
}

func (a *analyzer) command(c *parse.CommandNode, dot tmplType, vars map[string]tmplType) tmplType {
	if len(c.Args) == 0 {
		return unknownType
	}
	fn, ok := c.Args[0].(*parse.IdentifierNode)
	if !ok {
		t := a.arg(c.Args[0], dot, vars)
		for _, x := range c.Args[1:] {
			a.arg(x, dot, vars)
		}
		return t
	}
	if fn.Ident == "index" && len(c.Args) >= 2 {
		return a.index(c.Args[1], c.Args[2:], dot, vars)
	}
	for _, x := range c.Args[1:] {
		a.arg(x, dot, vars)
	}
	switch fn.Ident {
	case "join", "print", "printf", "println", "html", "js", "urlquery", "slice":
		return tmplType{t: reflect.TypeFor[string]()}
	case "len":
		return tmplType{t: reflect.TypeFor[int]()}
	case "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not":
		return tmplType{t: reflect.TypeFor[bool]()}
	}
	return unknownType
}

// index follows index X "a" "b" like the field chain X.a.b, so names that
// are not identifiers (index .Secrets "db-pass") are checked too.
func (a *analyzer) index(base parse.Node, keys []parse.Node, dot tmplType, vars map[string]tmplType) tmplType {
	t := a.arg(base, dot, vars)
	var idents []string
	for _, k := range keys {
		s, ok := k.(*parse.StringNode)
		if !ok {
			for _, x := range keys {
				a.arg(x, dot, vars)
			}
			return a.indexUnknown(t, len(keys))
		}
		idents = append(idents, s.Text)
	}
	return a.resolve(t, idents)
}

// indexUnknown is index with computed keys: only the element type is known.
func (a *analyzer) indexUnknown(t tmplType, n int) tmplType {
	for range n {
		if t.t == nil {
			return unknownType
		}
		_, t = rangeTypes(t)
	}
	return tmplType{t: t.t}
}

func (a *analyzer) arg(n parse.Node, dot tmplType, vars map[string]tmplType) tmplType {
	switch n := n.(type) {
	case *parse.DotNode:
		return dot
	case *parse.FieldNode:
		return a.resolve(dot, n.Ident)
	case *parse.VariableNode:
		v, ok := vars[n.Ident[0]]
		if !ok {
			return unknownType // text/template's parser already refuses undefined variables
		}
		return a.resolve(v, n.Ident[1:])
	case *parse.ChainNode:
		var t tmplType
		if p, ok := n.Node.(*parse.PipeNode); ok {
			t = a.pipe(p, dot, copyVars(vars))
		} else {
			t = a.arg(n.Node, dot, vars)
		}
		return a.resolve(t, n.Field)
	case *parse.PipeNode:
		return a.pipe(n, dot, copyVars(vars))
	case *parse.StringNode:
		return tmplType{t: reflect.TypeFor[string]()}
	}
	return unknownType
}

// resolve follows field names from t through the Go types, reporting the
// first that does not exist, then lets checkRooted judge chains from the
// root (which step, which output, which secret).
func (a *analyzer) resolve(t tmplType, idents []string) tmplType {
	if len(idents) == 0 {
		return t
	}
	cur := t
	for _, id := range idents {
		if cur.t == nil {
			return unknownType
		}
		next, p := field(cur, id)
		if p != nil {
			a.problems = append(a.problems, *p)
			return unknownType
		}
		cur = next
	}
	if cur.rooted {
		a.chains = append(a.chains, cur.chain)
		if a.checkRooted != nil {
			if p := a.checkRooted(cur.chain); p != nil {
				a.problems = append(a.problems, *p)
				return unknownType
			}
		}
	}
	return cur
}

// field is one step of resolve.
func field(t tmplType, id string) (tmplType, *tmplProblem) {
	rt := t.t
	chain := append(append([]string(nil), t.chain...), id)
	next := func(nt reflect.Type) tmplType { return tmplType{t: nt, chain: chain, rooted: t.rooted} }
	where := "." + strings.Join(t.chain, ".")
	switch {
	case t.rooted && len(t.chain) == 0:
		where = "the template context"
	case !t.rooted && t.desc != "":
		where = t.desc
	case !t.rooted:
		where = "the value"
	}
	if m, ok := methodOf(rt, id); ok {
		if m.Type.NumOut() == 0 {
			return unknownType, nil
		}
		return next(m.Type.Out(0)), nil
	}
	for rt.Kind() == reflect.Pointer {
		rt = rt.Elem()
	}
	switch rt.Kind() {
	case reflect.Struct:
		if f, ok := rt.FieldByName(id); ok && f.IsExported() {
			return next(f.Type), nil
		}
		names := exportedNames(rt)
		hint := "it has " + strings.Join(names, ", ")
		if len(names) > 12 {
			hint = "see the methods of Go's " + rt.String()
		}
		if s := suggest(id, names); s != "" {
			hint = fmt.Sprintf("did you mean .%s? %s", s, hint)
		}
		if where == "the template context" {
			hint += "; see blueprints/README.md"
		}
		return unknownType, &tmplProblem{fmt.Sprintf("%s has no field %s", where, id), hint}
	case reflect.Map:
		return next(rt.Elem()), nil
	case reflect.Interface:
		return tmplType{chain: chain, rooted: t.rooted}, nil
	}
	return unknownType, &tmplProblem{
		fmt.Sprintf("%s is %s and has no field %s", where, kindName(rt), id),
		"remove ." + id,
	}
}

func methodOf(rt reflect.Type, name string) (reflect.Method, bool) {
	if m, ok := rt.MethodByName(name); ok {
		return m, true
	}
	if rt.Kind() != reflect.Pointer && rt.Kind() != reflect.Interface {
		return reflect.PointerTo(rt).MethodByName(name)
	}
	return reflect.Method{}, false
}

func exportedNames(rt reflect.Type) []string {
	var names []string
	for i := range rt.NumField() {
		if f := rt.Field(i); f.IsExported() {
			names = append(names, f.Name)
		}
	}
	for i := range rt.NumMethod() {
		names = append(names, rt.Method(i).Name)
	}
	sort.Strings(names)
	return names
}

func kindName(rt reflect.Type) string {
	switch rt.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Bool:
		return "a boolean"
	}
	return "a number"
}

// funcMap is what templates may call beyond text/template's builtins. index
// is replaced by a strict one: the builtin returns "" for a missing map
// key, which would defeat missingkey=error for names that are not
// identifiers (index .Secrets "db-pass").
var funcMap = template.FuncMap{
	"index": strictIndex,
	"join":  strings.Join,
}

func strictIndex(item any, keys ...any) (any, error) {
	v := reflect.ValueOf(item)
	for _, k := range keys {
		for v.IsValid() && (v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface) {
			if v.IsNil() {
				return nil, fmt.Errorf("index of nil")
			}
			v = v.Elem()
		}
		if !v.IsValid() {
			return nil, fmt.Errorf("index of nil")
		}
		switch v.Kind() {
		case reflect.Map:
			kv := reflect.ValueOf(k)
			if !kv.IsValid() || !kv.Type().AssignableTo(v.Type().Key()) {
				return nil, fmt.Errorf("index: key %v does not fit %s", k, v.Type())
			}
			e := v.MapIndex(kv)
			if !e.IsValid() {
				return nil, fmt.Errorf("map has no entry for key %q", fmt.Sprint(k))
			}
			v = e
		case reflect.Slice, reflect.Array, reflect.String:
			i, err := toInt(k)
			if err != nil {
				return nil, err
			}
			if i < 0 || i >= v.Len() {
				return nil, fmt.Errorf("index out of range: %d (length %d)", i, v.Len())
			}
			v = v.Index(i)
		default:
			return nil, fmt.Errorf("can't index item of type %s", v.Type())
		}
	}
	if !v.IsValid() {
		return nil, nil
	}
	return v.Interface(), nil
}

func toInt(k any) (int, error) {
	v := reflect.ValueOf(k)
	switch v.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return int(v.Int()), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return int(v.Uint()), nil
	}
	return 0, fmt.Errorf("cannot index with %v", k)
}

package blueprint

import (
	"fmt"
	"regexp"
	"strings"
	"text/template/parse"
)

// Secrets never travel in events. When a step is rendered, .Secrets.<name>
// becomes a placeholder; the hookrunner, on the application's side,
// replaces the placeholder with the value from the Application's
// spec.secrets just before it runs the step. Events, the audit log and
// every log line see only the placeholder.

const (
	secretPlaceholderPrefix = "${TIDEMARK_SECRET:"
	secretPlaceholderSuffix = "}"
)

// SecretPlaceholder is what .Secrets.<name> renders to.
func SecretPlaceholder(name string) string {
	return secretPlaceholderPrefix + name + secretPlaceholderSuffix
}

// SecretPlaceholders returns the .Secrets map of a render context for b:
// a placeholder for every declared secret.
func SecretPlaceholders(b *Blueprint) map[string]string {
	out := make(map[string]string, len(b.Spec.Secrets))
	for _, name := range b.Spec.Secrets {
		out[name] = SecretPlaceholder(name)
	}
	return out
}

var placeholderPattern = regexp.MustCompile(regexp.QuoteMeta(secretPlaceholderPrefix) + `([^}]*)` + regexp.QuoteMeta(secretPlaceholderSuffix))

// ResolveSecrets replaces every placeholder in s using lookup. It reports
// the first secret lookup cannot provide.
func ResolveSecrets(s string, lookup func(name string) (string, error)) (string, error) {
	if !strings.Contains(s, secretPlaceholderPrefix) {
		return s, nil
	}
	var firstErr error
	out := placeholderPattern.ReplaceAllStringFunc(s, func(m string) string {
		name := placeholderPattern.FindStringSubmatch(m)[1]
		v, err := lookup(name)
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("secret %q: %w", name, err)
		}
		return v
	})
	return out, firstErr
}

// secretTransformed reports whether text uses .Secrets in any way other than
// inserting one secret as it is ({{ .Secrets.x }} or {{ index .Secrets "x" }}):
// a function applied to a secret would see the placeholder, not the value.
func secretTransformed(text string) bool {
	if !IsTemplate(text) || !strings.Contains(text, "Secrets") {
		return false
	}
	trees, err := parse.Parse("t", text, "", "", map[string]any(funcMap), builtinFuncNames)
	if err != nil {
		return false // reported as a template syntax error elsewhere
	}
	transformed := false
	var walk func(n parse.Node, bare bool)
	walk = func(n parse.Node, bare bool) {
		switch x := n.(type) {
		case *parse.ListNode:
			if x == nil {
				return
			}
			for _, c := range x.Nodes {
				walk(c, false)
			}
		case *parse.ActionNode:
			walk(x.Pipe, len(x.Pipe.Cmds) == 1 && len(x.Pipe.Decl) == 0)
		case *parse.PipeNode:
			for _, c := range x.Cmds {
				ok := bare && isBareSecret(c)
				for _, a := range c.Args {
					if !ok {
						walk(a, false)
					}
				}
			}
		case *parse.FieldNode:
			if len(x.Ident) > 0 && x.Ident[0] == "Secrets" {
				transformed = true
			}
		case *parse.IfNode:
			walk(x.Pipe, false)
			walk(x.List, false)
			walk(x.ElseList, false)
		case *parse.RangeNode:
			walk(x.Pipe, false)
			walk(x.List, false)
			walk(x.ElseList, false)
		case *parse.WithNode:
			walk(x.Pipe, false)
			walk(x.List, false)
			walk(x.ElseList, false)
		}
	}
	for _, t := range trees {
		walk(t.Root, false)
	}
	return transformed
}

// isBareSecret is .Secrets.x or index .Secrets "x" as a whole command.
func isBareSecret(c *parse.CommandNode) bool {
	if len(c.Args) == 1 {
		f, ok := c.Args[0].(*parse.FieldNode)
		return ok && len(f.Ident) == 2 && f.Ident[0] == "Secrets"
	}
	if len(c.Args) == 3 {
		id, ok := c.Args[0].(*parse.IdentifierNode)
		f, ok2 := c.Args[1].(*parse.FieldNode)
		_, ok3 := c.Args[2].(*parse.StringNode)
		return ok && ok2 && ok3 && id.Ident == "index" && len(f.Ident) == 1 && f.Ident[0] == "Secrets"
	}
	return false
}

// builtinFuncNames lets the parser accept text/template's own functions.
// The parser only checks that a name is present with a non-nil value.
var builtinFuncNames = func() map[string]any {
	m := map[string]any{}
	for _, n := range []string{"and", "call", "html", "index", "slice", "js", "len", "not", "or",
		"print", "printf", "println", "urlquery", "eq", "ge", "gt", "le", "lt", "ne"} {
		m[n] = true
	}
	return m
}()

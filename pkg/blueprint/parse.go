package blueprint

import (
	"bytes"
	"errors"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
	"sigs.k8s.io/yaml"
)

// Parse reads one blueprint. It reports every problem it can find at once
// (syntax, unknown fields, values of the wrong type, durations without a
// unit, unknown step kinds) as Diagnostics with file:line:column; the
// blueprint is nil then. Parse fills in defaults (maxFreeze, timeouts,
// onError, inverse names) but does not judge meaning: that is Lint.
func Parse(filename string, data []byte) (*Blueprint, error) {
	r := &reporter{file: filename, pos: positions{"": {1, 1}}}
	root, err := parseNode(data)
	if err != nil {
		var de diagError
		if errors.As(err, &de) {
			de.File = filename
			return nil, Diagnostics{de.Diagnostic}
		}
		return nil, Diagnostics{{File: filename, Message: err.Error()}}
	}
	w := &walker{r: r}
	w.value(root, reflectTypeOfBlueprint, "", false)
	if len(r.diags) > 0 {
		return nil, r.diags.sort()
	}
	// The walk above checked everything UnmarshalStrict checks, with
	// positions; decoding with sigs.k8s.io/yaml keeps the struct exactly
	// what a Kubernetes API server would make of the same document.
	var b Blueprint
	if err := yaml.UnmarshalStrict(data, &b); err != nil {
		return nil, Diagnostics{{File: filename, Line: 1, Column: 1, Message: err.Error(),
			Hint: "this is a bug in the blueprint parser's own checks; please report it with the file"}}
	}
	b.File = filename
	b.pos = r.pos
	b.applyDefaults()
	return &b, nil
}

// ParseFile reads and parses the blueprint in path.
func ParseFile(path string) (*Blueprint, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

var yamlLineRe = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseNode parses data into a yaml.Node tree: the same bytes the struct
// is decoded from, kept for positions. A file holds exactly one document.
func parseNode(data []byte) (*yamlv3.Node, error) {
	dec := yamlv3.NewDecoder(bytes.NewReader(data))
	var doc yamlv3.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, diagError{Diagnostic{Line: 1, Column: 1, Message: "the file is empty",
				Hint: "a blueprint starts with apiVersion: " + APIVersion + " and kind: " + BlueprintKind}}
		}
		return nil, yamlSyntaxError(err)
	}
	var next yamlv3.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, yamlSyntaxError(err)
	default:
		return nil, diagError{Diagnostic{Line: next.Line, Column: next.Column,
			Message: "a second YAML document", Hint: "a blueprint file holds one blueprint; put the other in its own file"}}
	}
	if len(doc.Content) == 0 {
		return nil, diagError{Diagnostic{Line: 1, Column: 1, Message: "the file is empty"}}
	}
	return doc.Content[0], nil
}

func yamlSyntaxError(err error) diagError {
	msg := err.Error()
	if m := yamlLineRe.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return diagError{Diagnostic{Line: line, Column: 1, Message: "YAML syntax: " + m[2],
			Hint: "check the indentation and quoting on this line or the one before"}}
	}
	return diagError{Diagnostic{Line: 1, Column: 1, Message: "YAML syntax: " + strings.TrimPrefix(msg, "yaml: ")}}
}

// diagError carries one Diagnostic as an error inside the parser.
type diagError struct{ Diagnostic }

func (d diagError) Error() string { return d.String() }

// suggest returns the option closest to name (ignoring case, at most two
// edits away), or "" when none is close: the "did you mean" of hints.
func suggest(name string, options []string) string {
	best, bestDist := "", 3
	for _, o := range options {
		if strings.EqualFold(o, name) {
			return o
		}
		if d := editDistance(strings.ToLower(name), strings.ToLower(o)); d < bestDist {
			best, bestDist = o, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

package events

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

// SchemaBaseURL is the base of every schema's $id. Schemas refer to each
// other relative to it (common.json#/$defs/runId).
const SchemaBaseURL = "https://tidemark.io/schemas/events/"

//go:embed schemas/*.json
var schemaFiles embed.FS

//go:embed asyncapi.yaml
var asyncAPIDocument []byte

// AsyncAPI returns the AsyncAPI 3 document describing every channel and message.
func AsyncAPI() []byte { return bytes.Clone(asyncAPIDocument) }

// SchemaFile returns the file name of a type's JSON Schema in events/schemas.
func SchemaFile(t Type) string { return string(t) + ".json" }

// SchemaJSON returns the raw JSON Schema of a type.
func SchemaJSON(t Type) ([]byte, error) {
	return schemaFiles.ReadFile("schemas/" + SchemaFile(t))
}

type compiledSchemas struct {
	byType map[Type]*jsonschema.Schema
	err    error
}

var schemas = sync.OnceValue(func() compiledSchemas {
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	entries, err := fs.ReadDir(schemaFiles, "schemas")
	if err != nil {
		return compiledSchemas{err: err}
	}
	for _, e := range entries {
		raw, err := schemaFiles.ReadFile(path.Join("schemas", e.Name()))
		if err != nil {
			return compiledSchemas{err: err}
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
		if err != nil {
			return compiledSchemas{err: fmt.Errorf("schemas/%s: %w", e.Name(), err)}
		}
		if err := c.AddResource(SchemaBaseURL+e.Name(), doc); err != nil {
			return compiledSchemas{err: fmt.Errorf("schemas/%s: %w", e.Name(), err)}
		}
	}
	out := compiledSchemas{byType: map[Type]*jsonschema.Schema{}}
	for t := range catalog {
		if _, err := fs.Stat(schemaFiles, "schemas/"+SchemaFile(t)); err != nil {
			continue // reported by Schema(t); a missing schema must not hide the others
		}
		s, err := c.Compile(SchemaBaseURL + SchemaFile(t))
		if err != nil {
			return compiledSchemas{err: fmt.Errorf("schema of %s: %w", t, err)}
		}
		out.byType[t] = s
	}
	return out
})

// ErrNoSchema is returned for a registered type that has no schema file.
var ErrNoSchema = errors.New("event type has no JSON Schema")

func schemaOf(t Type) (*jsonschema.Schema, error) {
	s := schemas()
	if s.err != nil {
		return nil, s.err
	}
	sch, ok := s.byType[t]
	if !ok {
		return nil, fmt.Errorf("%w: %s (add events/schemas/%s)", ErrNoSchema, t, SchemaFile(t))
	}
	return sch, nil
}

// ValidatePayload checks raw JSON against the schema of type t. A violation
// is returned as a *DecodeError naming the offending field.
func ValidatePayload(t Type, data []byte) error {
	sch, err := schemaOf(t)
	if err != nil {
		return err
	}
	// The fast validator's "valid" is the reference's (see fastschema.go).
	// Anything else, including every error, is left to the reference, so
	// errors read exactly as they always did.
	if fastValidate(t, data) == fastValid {
		return nil
	}
	return validateReference(sch, data)
}

// validateReference checks data with santhosh-tekuri/jsonschema and turns a
// violation into a *DecodeError naming the field.
func validateReference(sch *jsonschema.Schema, data []byte) error {
	// json.Unmarshal is about twice as fast as jsonschema.UnmarshalJSON's
	// streaming decoder; numbers become float64, which only matters beyond
	// 2^53, far past any counter a payload carries.
	var inst any
	if err := json.Unmarshal(data, &inst); err != nil {
		return &DecodeError{Problem: ProblemInvalidJSON, Attribute: "data", Err: err}
	}
	if err := sch.Validate(inst); err != nil {
		var ve *jsonschema.ValidationError
		if errors.As(err, &ve) {
			field, detail := describeViolation(ve)
			return &DecodeError{Problem: ProblemSchemaViolation, Attribute: "data" + field, Detail: detail}
		}
		return &DecodeError{Problem: ProblemSchemaViolation, Attribute: "data", Err: err}
	}
	return nil
}

var printer = message.NewPrinter(language.English)

// describeViolation flattens a validation error tree into the location of the
// first leaf and a "; "-joined list of every leaf, so a user sees each field
// that is wrong at once.
func describeViolation(ve *jsonschema.ValidationError) (string, string) {
	var leaves []*jsonschema.ValidationError
	var walk func(*jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) == 0 {
			leaves = append(leaves, e)
			return
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(ve)
	// The validator visits properties in map order; sorting by location
	// makes the same payload always read the same, first field included.
	slices.SortStableFunc(leaves, func(a, b *jsonschema.ValidationError) int {
		return slices.Compare(a.InstanceLocation, b.InstanceLocation)
	})
	parts := make([]string, 0, len(leaves))
	for _, l := range leaves {
		msg := l.ErrorKind.LocalizedString(printer)
		if hint, ok := patternHints[definitionOf(l.SchemaURL)]; ok && slices.Equal(l.ErrorKind.KeywordPath(), []string{"pattern"}) {
			msg = "want " + hint
		}
		parts = append(parts, fmt.Sprintf("at %s: %s", pointer(l.InstanceLocation), msg))
	}
	return pointer(leaves[0].InstanceLocation), strings.Join(parts, "; ")
}

// patternHints says in words what a pattern in common.json wants, so a user
// reads "a duration with a unit" rather than a regular expression.
var patternHints = map[string]string{
	"duration":            `a duration with a unit, such as "30s", "5m" or "1h30m"`,
	"nonNegativeDuration": `a duration with a unit, such as "30s", "5m" or "1h30m"`,
	"runId":               "an id of letters, digits and . _ : -",
	"restorePointId":      "an id of letters, digits and . _ : -",
	"instanceId":          "an instance id of letters, digits, _ and -",
}

// definitionOf returns the $defs name a schema location points into.
func definitionOf(schemaURL string) string {
	_, after, ok := strings.Cut(schemaURL, "#/$defs/")
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(after, "/")
	return name
}

func pointer(loc []string) string {
	if len(loc) == 0 {
		return "/"
	}
	return "/" + strings.Join(loc, "/")
}

// Examples returns the examples of a type's schema decoded into its Go
// payload. Documentation, tests and `tidemark` demos use them.
func Examples(t Type) ([]Payload, error) {
	d, ok := Lookup(t)
	if !ok {
		return nil, fmt.Errorf("events: unknown type %q", t)
	}
	raw, err := SchemaJSON(t)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrNoSchema, t)
	}
	var doc struct {
		Examples []json.RawMessage `json:"examples"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("schemas/%s: %w", SchemaFile(t), err)
	}
	out := make([]Payload, 0, len(doc.Examples))
	for i, ex := range doc.Examples {
		p, err := d.decode(ex)
		if err != nil {
			return nil, fmt.Errorf("schemas/%s: example %d: %w", SchemaFile(t), i, err)
		}
		out = append(out, p)
	}
	return out, nil
}

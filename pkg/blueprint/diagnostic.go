package blueprint

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Diagnostic is one problem found in a blueprint file, located precisely
// enough for an editor to jump to it.
type Diagnostic struct {
	File string
	// Line and Column are 1-based; 0 when the position is unknown (a
	// blueprint built in code rather than parsed).
	Line, Column int
	// Field is the YAML path of the value at fault, such as
	// spec.actions.backup[0].timeout.
	Field   string
	Message string
	// Hint says how to fix it.
	Hint string
}

// String formats the diagnostic as "file:line:col: field: message (hint)".
func (d Diagnostic) String() string {
	var b strings.Builder
	b.WriteString(d.File)
	if d.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", d.Line, d.Column)
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if d.Field != "" {
		b.WriteString(d.Field)
		b.WriteString(": ")
	}
	b.WriteString(d.Message)
	if d.Hint != "" {
		b.WriteString(" (")
		b.WriteString(d.Hint)
		b.WriteString(")")
	}
	return b.String()
}

// Diagnostics is every problem found in a blueprint. As an error it reads
// one diagnostic per line, and errors.Is(err, ErrInvalid) holds.
type Diagnostics []Diagnostic

func (ds Diagnostics) Error() string {
	lines := make([]string, len(ds))
	for i, d := range ds {
		lines[i] = d.String()
	}
	return strings.Join(lines, "\n")
}

// Is makes errors.Is(diagnostics, ErrInvalid) true.
func (ds Diagnostics) Is(target error) bool { return target == ErrInvalid }

// Err returns ds as an error, or nil when there are none: a nil
// Diagnostics stored in an error interface would not compare equal to nil.
func (ds Diagnostics) Err() error {
	if len(ds) == 0 {
		return nil
	}
	return ds
}

// sort orders diagnostics by position so output reads top to bottom, and
// drops exact duplicates (one bad template used twice reports once).
func (ds Diagnostics) sort() Diagnostics {
	slices.SortStableFunc(ds, func(a, b Diagnostic) int {
		return cmp.Or(
			cmp.Compare(a.File, b.File),
			cmp.Compare(a.Line, b.Line),
			cmp.Compare(a.Column, b.Column),
			cmp.Compare(a.Field, b.Field),
		)
	})
	return slices.Compact(ds)
}

// position is where a value (or a mapping key) starts in the source.
type position struct{ line, column int }

// positions maps YAML field paths to where they are in the source file.
// Values are recorded under their path; mapping keys under path + keySuffix
// so that "unknown field" can point at the key itself.
type positions map[string]position

const keySuffix = "#key"

// at returns the position of path, or of its nearest recorded ancestor.
func (p positions) at(path string) position {
	for {
		if pos, ok := p[path]; ok {
			return pos
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return p[""]
		}
		path = path[:i]
	}
}

// reporter collects diagnostics for one file.
type reporter struct {
	file  string
	pos   positions
	diags Diagnostics
}

func (r *reporter) add(field, hint, format string, args ...any) {
	p := r.pos.at(field)
	r.diags = append(r.diags, Diagnostic{
		File: r.file, Line: p.line, Column: p.column,
		Field: field, Message: fmt.Sprintf(format, args...), Hint: hint,
	})
}

// addKey reports a problem with the mapping key of field (unknown or
// duplicate fields), falling back to the value's position.
func (r *reporter) addKey(field, hint, format string, args ...any) {
	p, ok := r.pos[field+keySuffix]
	if !ok {
		p = r.pos.at(field)
	}
	r.diags = append(r.diags, Diagnostic{
		File: r.file, Line: p.line, Column: p.column,
		Field: field, Message: fmt.Sprintf(format, args...), Hint: hint,
	})
}

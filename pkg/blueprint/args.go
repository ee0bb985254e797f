package blueprint

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"github.com/tidemark-dev/tidemark/events"
)

// A kind block travels as JSON whose strings are templates. It is handled
// as a generic tree (map[string]any, []any, string, json.Number, bool,
// nil) and only becomes the kind's spec struct once every string is
// rendered, so one spec type serves both the blueprint and the event.

var (
	durationType = reflect.TypeFor[events.Duration]()
	stepType     = reflect.TypeFor[Step]()
	fieldCache   sync.Map // reflect.Type -> map[string]reflect.StructField
)

// jsonFields returns the JSON names of t's fields, embedded structs
// flattened, as encoding/json sees them.
func jsonFields(t reflect.Type) map[string]reflect.StructField {
	if f, ok := fieldCache.Load(t); ok {
		return f.(map[string]reflect.StructField)
	}
	fields := map[string]reflect.StructField{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			for n, ef := range jsonFields(f.Type) {
				if _, shadowed := fields[n]; !shadowed {
					fields[n] = ef
				}
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f
	}
	fieldCache.Store(t, fields)
	return fields
}

// argTree decodes a kind block into a generic tree.
func argTree(raw json.RawMessage) (any, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

// conform makes tree fit type t where a template stands for a number or a
// boolean: the rendered "3" becomes 3 for an int field. With lenient (lint,
// before rendering) such a template is dropped instead, so the spec reads
// as if it were absent and its value is checked once rendered. Anything
// else that does not fit is left alone for the strict decode to refuse.
func conform(v any, t reflect.Type, lenient bool, path string) (any, error) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == durationType {
		if s, ok := v.(string); ok && lenient && IsTemplate(s) {
			return dropped{}, nil
		}
		return v, nil
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return v, nil
		}
		fields := jsonFields(t)
		out := make(map[string]any, len(m))
		for k, e := range m {
			f, ok := fields[k]
			if !ok {
				out[k] = e
				continue
			}
			c, err := conform(e, f.Type, lenient, joinPath(path, k))
			if err != nil {
				return nil, err
			}
			if c != (dropped{}) {
				out[k] = c
			}
		}
		return out, nil
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			return v, nil
		}
		out := make(map[string]any, len(m))
		for k, e := range m {
			c, err := conform(e, t.Elem(), lenient, joinPath(path, k))
			if err != nil {
				return nil, err
			}
			if c != (dropped{}) {
				out[k] = c
			}
		}
		return out, nil
	case reflect.Slice:
		l, ok := v.([]any)
		if !ok {
			return v, nil
		}
		out := make([]any, 0, len(l))
		for i, e := range l {
			c, err := conform(e, t.Elem(), lenient, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			if c != (dropped{}) {
				out = append(out, c)
			}
		}
		return out, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		s, ok := v.(string)
		if !ok {
			return v, nil
		}
		if lenient && IsTemplate(s) {
			return dropped{}, nil
		}
		s = strings.TrimSpace(s)
		if _, err := strconv.ParseFloat(s, 64); err != nil {
			return nil, fmt.Errorf("%s: %q is not a number", path, s)
		}
		return json.Number(s), nil
	case reflect.Bool:
		s, ok := v.(string)
		if !ok {
			return v, nil
		}
		if lenient && IsTemplate(s) {
			return dropped{}, nil
		}
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not true or false", path, s)
		}
		return b, nil
	}
	return v, nil
}

// dropped marks a templated value conform leaves out in lenient mode.
type dropped struct{}

// decodeSpec decodes a conformed tree strictly into the kind's spec.
func decodeSpec(k Kind, tree any) (any, error) {
	spec := k.NewSpec()
	b, err := json.Marshal(tree)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(spec); err != nil {
		return nil, err
	}
	return spec, nil
}

// lintSpec decodes the step's block before rendering, templates standing
// in for their values, so kinds can check its shape.
func (s *Step) lintSpec(k Kind) (any, error) {
	if k.NewSpec == nil {
		return nil, nil
	}
	tree, err := argTree(s.Args)
	if err != nil {
		return nil, err
	}
	tree, err = conform(tree, reflect.TypeOf(k.NewSpec()), true, "")
	if err != nil {
		return nil, err
	}
	return decodeSpec(k, tree)
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

package blueprint

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	"github.com/tidemark-dev/tidemark/events"
)

// RenderedStep is a step with every template rendered: what the
// coordinator sends to the hookrunner (Spec goes into
// events.HookRequested.Spec as it is).
type RenderedStep struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	// Spec is the kind's spec struct (ExecSpec, SQLSpec, ...) as JSON; empty
	// for a snapshot step.
	Spec    json.RawMessage `json:"spec,omitempty"`
	Timeout events.Duration `json:"timeout"`
	// Hold is true when the step keeps its session open, holding a lock,
	// until a release: the step undoes itself (see Step.HasInverse).
	Hold    bool    `json:"hold,omitempty"`
	OnError OnError `json:"onError,omitempty"`
	Retry   *Retry  `json:"retry,omitempty"`
	// Outputs are the output names the step promised.
	Outputs []string `json:"outputs,omitempty"`
	// Skip is true when the step's when: rendered "false": nothing else was
	// rendered, and the step does not run.
	Skip bool `json:"skip,omitempty"`
	// Inverse is the rendered inverse, so it can be pushed on the
	// compensation stack the moment the step is sent. It is nil when the
	// step has none, or when InverseDeferred is set.
	Inverse *RenderedStep `json:"inverse,omitempty"`
	// InverseDeferred is true when the inverse uses the step's own outputs:
	// it can only be rendered (Step.RenderInverse) once the step reported
	// them.
	InverseDeferred bool `json:"inverseDeferred,omitempty"`
}

// Render renders the step against ctx, just before it runs: its when
// condition, then every string of its kind block, each with
// missingkey=error. The result is decoded strictly into the kind's spec
// type and checked again, so the hookrunner only ever sees valid specs.
// Errors are *RenderError naming the step and the field.
//
// Template output is only ever data: an argv element stays one argv
// element whatever it contains, and nothing is given to a shell unless the
// blueprint's own command is ["sh", "-c", ...].
func (s *Step) Render(ctx TemplateContext) (RenderedStep, error) {
	if s.When != "" {
		out, err := renderString(s.Name, "when", s.When, ctx)
		if err != nil {
			return RenderedStep{}, err
		}
		switch strings.TrimSpace(out) {
		case "true":
		case "false":
			return RenderedStep{Name: s.Name, Kind: s.Kind, Skip: true}, nil
		default:
			return RenderedStep{}, &RenderError{Step: s.Name, Field: "when", Err: fmt.Errorf("%w, got %q", ErrCondition, out)}
		}
	}
	r, err := s.render(ctx)
	if err != nil {
		return RenderedStep{}, err
	}
	if s.Inverse != nil {
		if s.inverseUsesOwnOutputs() {
			r.InverseDeferred = true
		} else {
			inv, err := s.Inverse.render(ctx)
			if err != nil {
				return RenderedStep{}, err
			}
			r.Inverse = &inv
		}
	}
	return r, nil
}

// RenderInverse renders the step's inverse against ctx, which should hold
// the step's own outputs in ctx.Steps when the inverse uses them. It
// returns nil when the step has no explicit inverse.
func (s *Step) RenderInverse(ctx TemplateContext) (*RenderedStep, error) {
	if s.Inverse == nil {
		return nil, nil
	}
	inv, err := s.Inverse.render(ctx)
	if err != nil {
		return nil, err
	}
	return &inv, nil
}

// render renders s without its when condition and inverse.
func (s *Step) render(ctx TemplateContext) (RenderedStep, error) {
	k, ok := LookupKind(s.Kind)
	if !ok {
		return RenderedStep{}, &RenderError{Step: s.Name, Field: "kind", Err: fmt.Errorf("%w %q", ErrUnknownKind, s.Kind)}
	}
	r := RenderedStep{
		Name:    s.Name,
		Kind:    s.Kind,
		Timeout: s.TimeoutOrDefault(),
		OnError: s.OnError,
		Retry:   s.Retry,
		Outputs: s.PromisedOutputs(),
	}
	if r.OnError == "" {
		r.OnError = OnErrorFail
	}
	if k.NewSpec == nil {
		return r, nil
	}
	tree, err := argTree(s.Args)
	if err != nil {
		return RenderedStep{}, &RenderError{Step: s.Name, Field: s.Kind, Err: fmt.Errorf("%w: %v", ErrSpec, err)}
	}
	tree, err = renderTree(s.Name, s.Kind, tree, ctx)
	if err != nil {
		return RenderedStep{}, err
	}
	tree, err = conform(tree, reflect.TypeOf(k.NewSpec()), false, s.Kind)
	if err != nil {
		return RenderedStep{}, &RenderError{Step: s.Name, Err: fmt.Errorf("%w: %v", ErrSpec, err)}
	}
	spec, err := decodeSpec(k, tree)
	if err != nil {
		return RenderedStep{}, &RenderError{Step: s.Name, Field: s.Kind, Err: fmt.Errorf("%w: %v", ErrSpec, err)}
	}
	if k.Check != nil {
		if ps := k.Check(spec); len(ps) > 0 {
			p := ps[0]
			return RenderedStep{}, &RenderError{Step: s.Name, Field: joinPath(s.Kind, p.Field),
				Err: fmt.Errorf("%w: %s after rendering (%s)", ErrSpec, p.Message, p.Hint)}
		}
	}
	if k.Holds != nil {
		r.Hold = k.Holds(spec)
	}
	if r.Spec, err = json.Marshal(spec); err != nil {
		return RenderedStep{}, &RenderError{Step: s.Name, Field: s.Kind, Err: err}
	}
	return r, nil
}

// renderTree renders every string in tree; map keys stay as written.
func renderTree(step, p string, tree any, ctx TemplateContext) (any, error) {
	switch v := tree.(type) {
	case string:
		return renderString(step, p, v, ctx)
	case map[string]any:
		out := make(map[string]any, len(v))
		for _, k := range sortedKeys(v) {
			r, err := renderTree(step, joinPath(p, k), v[k], ctx)
			if err != nil {
				return nil, err
			}
			out[k] = r
		}
		return out, nil
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			r, err := renderTree(step, fmt.Sprintf("%s[%d]", p, i), e, ctx)
			if err != nil {
				return nil, err
			}
			out[i] = r
		}
		return out, nil
	}
	return tree, nil
}

// renderString executes one template; the template is named after the
// field so text/template's own messages point at it.
func renderString(step, field, text string, ctx TemplateContext) (string, error) {
	if !strings.Contains(text, "{{") {
		return text, nil
	}
	t, err := parseTemplate(field, text)
	if err != nil {
		return "", &RenderError{Step: step, Field: field, Err: fmt.Errorf("%w: %s", ErrTemplate, trimTemplateName(err.Error(), field))}
	}
	var b strings.Builder
	if err := t.Execute(&b, ctx); err != nil {
		return "", &RenderError{Step: step, Field: field, Err: fmt.Errorf("%w: %s", ErrTemplate, trimTemplateName(err.Error(), field))}
	}
	return b.String(), nil
}

// trimTemplateName turns text/template's
// `template: F:1:15: executing "F" at <.Secrets.x>: map has no entry for key "x"`
// into `1:15: at <.Secrets.x>: map has no entry for key "x"`: the field is
// already named by the RenderError.
func trimTemplateName(msg, field string) string {
	msg = strings.TrimPrefix(msg, "template: "+field+":")
	msg = strings.Replace(msg, fmt.Sprintf("executing %q ", field), "", 1)
	return msg
}

// inverseUsesOwnOutputs reports whether any template of the inverse refers
// to .Steps.<this step>.
func (s *Step) inverseUsesOwnOutputs() bool {
	inv := s.Inverse
	tree, err := argTree(inv.Args)
	if err != nil {
		return false
	}
	uses := false
	walkStrings(tree, "", func(_, text string) {
		for _, c := range analyzeTemplate(text, nil).chains {
			if len(c) >= 2 && c[0] == "Steps" && c[1] == s.Name {
				uses = true
			}
		}
	})
	return uses
}

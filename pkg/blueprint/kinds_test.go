package blueprint

import (
	"encoding/json"
	"strings"
	"testing"
)

// scaleSpec stands in for the Kubernetes platform's scale kind, registered
// from outside the package's built-ins.
type scaleSpec struct {
	Workload string `json:"workload"`
	Replicas int    `json:"replicas"`
}

func registerScale(t *testing.T) {
	t.Helper()
	Register(Kind{
		Name:    "scale",
		NewSpec: func() any { return new(scaleSpec) },
		Check: func(s any) []Problem {
			if s.(*scaleSpec).Replicas < 0 {
				return []Problem{{"replicas", "is negative", "use 0 or more"}}
			}
			return nil
		},
	})
	t.Cleanup(func() {
		kindsMu.Lock()
		delete(kinds, "scale")
		kindsMu.Unlock()
	})
}

// A kind registered later (as the Kubernetes platform registers scale and
// apply) parses, lints and renders like a built-in one, numbers templated.
func TestRegisterBlueprintKind(t *testing.T) {
	registerScale(t)
	b := parseString(t, withBackup("", `      - name: down
        kind: scale
        outputs: [replicas]
        scale: {workload: "{{ .StatefulSet.Name }}", replicas: 0}
        noInverse: test
      - name: up
        kind: scale
        scale: {workload: "{{ .StatefulSet.Name }}", replicas: "{{ .Steps.down.Output.replicas }}"}
`))
	if diags := Lint(b); diags != nil {
		t.Fatalf("Lint:\n%v", diags)
	}
	ctx := TemplateContext{
		StatefulSet: &Workload{Name: "db"},
		Steps:       map[string]StepResult{"down": {Output: map[string]string{"replicas": "3"}}},
	}
	r, err := b.Action(ActionBackup)[1].Render(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var spec scaleSpec
	if err := json.Unmarshal(r.Spec, &spec); err != nil || spec != (scaleSpec{"db", 3}) {
		t.Errorf("spec = %s (%v)", r.Spec, err)
	}
	_, err = Parse("x.yaml", []byte(withBackup("", `      - name: down
        kind: scale
        scale: {workload: db, replicas: many}
`)))
	if err == nil || !strings.Contains(err.Error(), "scale.replicas: want a whole number") {
		t.Errorf("Parse = %v", err)
	}
}

func TestRegisterBlueprintKindRefusesMistakes(t *testing.T) {
	for _, k := range []Kind{{Name: ""}, {Name: KindExec}, {Name: "timeout"}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Register(%q) did not panic", k.Name)
				}
			}()
			Register(k)
		}()
	}
	if got := strings.Join(Kinds(), ","); got != "dump,exec,http,snapshot,sql,wait" {
		t.Errorf("Kinds() = %s", got)
	}
}

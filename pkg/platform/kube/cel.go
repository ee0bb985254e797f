package kube

import (
	"fmt"
	"strings"
	"sync"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
)

// celVar is the name the object has in a wait's CEL expressions, as in
// Kubernetes' own validating admission policies.
const celVar = "object"

var celEnv = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(cel.Variable(celVar, cel.DynType))
})

// celCondition is a compiled CEL wait condition.
type celCondition struct {
	expr string
	prg  cel.Program
}

// compileCEL compiles expr, which must yield a bool. The error is the
// compiler's, with its line:column and a caret under the fault.
func compileCEL(expr string) (*celCondition, error) {
	env, err := celEnv()
	if err != nil {
		return nil, err
	}
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		return nil, fmt.Errorf("CEL %q: %s", expr, strings.ReplaceAll(iss.Err().Error(), "\n", " "))
	}
	if t := ast.OutputType(); t != types.BoolType && t != types.DynType {
		return nil, fmt.Errorf("CEL %q yields %s, not a bool", expr, t)
	}
	prg, err := env.Program(ast)
	if err != nil {
		return nil, fmt.Errorf("CEL %q: %v", expr, err)
	}
	return &celCondition{expr: expr, prg: prg}, nil
}

// eval reports whether the condition holds for obj. A field the
// expression reads that the object does not have yet (no status while
// the operator has not answered) is "not yet", reported as pending with
// the reason; any other evaluation error is an error.
func (c *celCondition) eval(obj map[string]any) (ok bool, pending string, err error) {
	out, _, err := c.prg.Eval(map[string]any{celVar: obj})
	if err != nil {
		msg := err.Error()
		if strings.Contains(msg, "no such key") || strings.Contains(msg, "no such field") {
			return false, msg, nil
		}
		return false, "", fmt.Errorf("CEL %q: %v", c.expr, err)
	}
	b, isBool := out.Value().(bool)
	if !isBool {
		return false, "", fmt.Errorf("CEL %q yields %v (%s), not a bool", c.expr, out.Value(), out.Type().TypeName())
	}
	return b, "", nil
}

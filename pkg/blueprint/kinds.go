package blueprint

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
)

// Kind describes one step kind to the parser, the linter and the renderer.
// Built-in kinds register themselves; platforms add theirs (the Kubernetes
// platform adds scale and apply) with Register.
type Kind struct {
	// Name is both the value of a step's kind and the key of its block.
	Name string
	// NewSpec returns a pointer to a zero rendered spec, such as
	// new(ExecSpec): the type a step's block renders into. Nil for a kind
	// without arguments (snapshot).
	NewSpec func() any
	// OptionalSpec: the block may be left out (snapshot: edits only in a
	// restore that needs them).
	OptionalSpec bool
	// Check reports what is wrong with a spec. Lint calls it before
	// rendering, when strings may still be templates (see IsTemplate) and
	// templated numbers and booleans read as zero; Render calls it again on
	// the rendered spec.
	Check func(spec any) []Problem
	// Outputs returns output names the spec produces by itself, beyond the
	// step's declared outputs (an http step's captures).
	Outputs func(spec any) []string
	// ImplicitInverse reports whether the spec undoes itself (a held SQL
	// session with release statements), so the step needs no inverse.
	ImplicitInverse func(spec any) bool
	// Holds reports whether the step keeps a session open until released.
	Holds func(spec any) bool
	// Doc is one line for `tidemark blueprint kinds` and error hints.
	Doc string
}

// Problem is one thing wrong with a kind block. Field is relative to the
// block ("command", "http.url").
type Problem struct {
	Field, Message, Hint string
}

var (
	kindsMu sync.RWMutex
	kinds   = map[string]Kind{}
)

// Register adds a step kind. It panics, like database/sql.Register, when the
// name is empty, already registered, or collides with a step field: that is
// a programming error found at init, not a runtime condition.
func Register(k Kind) {
	if k.Name == "" {
		panic("blueprint: Register of a kind without a name")
	}
	if _, ok := jsonFields(stepType)[k.Name]; ok {
		panic(fmt.Sprintf("blueprint: kind %q collides with the step field of that name", k.Name))
	}
	kindsMu.Lock()
	defer kindsMu.Unlock()
	if _, dup := kinds[k.Name]; dup {
		panic(fmt.Sprintf("blueprint: kind %q registered twice", k.Name))
	}
	kinds[k.Name] = k
}

// LookupKind returns the registered kind called name.
func LookupKind(name string) (Kind, bool) {
	kindsMu.RLock()
	defer kindsMu.RUnlock()
	k, ok := kinds[name]
	return k, ok
}

// Kinds returns the names of every registered kind, sorted.
func Kinds() []string {
	kindsMu.RLock()
	defer kindsMu.RUnlock()
	names := make([]string, 0, len(kinds))
	for n := range kinds {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// IsTemplate reports whether s contains template actions, so a Check can
// skip validating a value that is only known after rendering.
func IsTemplate(s string) bool { return strings.Contains(s, "{{") }

var (
	identifierRe   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	artifactNameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$`)
)

func init() {
	Register(Kind{
		Name:    KindExec,
		Doc:     "run a command (argv array) in the application's target",
		NewSpec: func() any { return new(ExecSpec) },
		Check:   func(s any) []Problem { return checkExec(s.(*ExecSpec), "") },
	})
	Register(Kind{
		Name:    KindSQL,
		Doc:     "run statements on a named connection, optionally holding the session until released",
		NewSpec: func() any { return new(SQLSpec) },
		Check:   func(s any) []Problem { return checkSQL(s.(*SQLSpec)) },
		ImplicitInverse: func(s any) bool {
			q := s.(*SQLSpec)
			return q.Hold && len(q.Release) > 0
		},
		Holds: func(s any) bool { return s.(*SQLSpec).Hold },
	})
	Register(Kind{
		Name:    KindHTTP,
		Doc:     "call a URL, check the status, capture JSON fields as outputs",
		NewSpec: func() any { return new(HTTPSpec) },
		Check:   func(s any) []Problem { return checkHTTP(s.(*HTTPSpec), "") },
		Outputs: func(s any) []string {
			c := s.(*HTTPSpec).Capture
			names := make([]string, 0, len(c))
			for n := range c {
				names = append(names, n)
			}
			sort.Strings(names)
			return names
		},
	})
	Register(Kind{
		Name:    KindWait,
		Doc:     "poll one condition (http, sql or exec) until it holds or the timeout passes",
		NewSpec: func() any { return new(WaitSpec) },
		Check:   func(s any) []Problem { return checkWait(s.(*WaitSpec)) },
	})
	Register(Kind{
		Name:         KindSnapshot,
		Doc:          "the barrier: the coordinator snapshots (backup) or restores (restore) the volumes here; in a restore, edits change the restored volumes before later steps",
		NewSpec:      func() any { return new(SnapshotSpec) },
		OptionalSpec: true,
		Check:        func(s any) []Problem { return checkSnapshot(s.(*SnapshotSpec)) },
	})
	Register(Kind{
		Name:    KindDump,
		Doc:     "a command whose stdout is a logical backup stream (backup), or whose stdin receives it (restore)",
		NewSpec: func() any { return new(DumpSpec) },
		Check:   func(s any) []Problem { return checkDump(s.(*DumpSpec)) },
	})
}

func checkSnapshot(s *SnapshotSpec) []Problem {
	var ps []Problem
	for i, e := range s.Edits {
		prefix := fmt.Sprintf("edits[%d].", i)
		if e.Volume == "" {
			ps = append(ps, Problem{prefix + "volume", "is empty", "name the restored volume the edits apply to, such as '{{ index .StatefulSet.PersistentVolumeClaims 0 }}'"})
		}
		for j, x := range e.Extract {
			if x.Artifact == "" {
				ps = append(ps, Problem{fmt.Sprintf("%sextract[%d].artifact", prefix, j), "is empty", "name a dump artifact of the backup, such as pg_wal.tar"})
			}
		}
	}
	return ps
}

func checkExec(s *ExecSpec, prefix string) []Problem {
	if len(s.Command) == 0 || s.Command[0] == "" {
		return []Problem{{prefix + "command", "is empty", `give the program and its arguments as a list: ["pg_isready", "-q"]`}}
	}
	return nil
}

func checkSQL(s *SQLSpec) []Problem {
	var ps []Problem
	if s.Connection == "" {
		ps = append(ps, Problem{"connection", "is empty", "name one of the application's connections, such as primary"})
	}
	if len(s.Statements) == 0 {
		ps = append(ps, Problem{"statements", "is empty", "give at least one statement"})
	}
	if len(s.Release) > 0 && !s.Hold {
		ps = append(ps, Problem{"release", "is set but hold is not", "set hold: true so the session stays open until release runs, or drop release"})
	}
	return ps
}

var httpMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
	http.MethodPatch, http.MethodDelete, http.MethodOptions}

func checkHTTP(s *HTTPSpec, prefix string) []Problem {
	var ps []Problem
	if s.URL == "" {
		ps = append(ps, Problem{prefix + "url", "is empty", "give the URL to call"})
	}
	if s.Method != "" && !IsTemplate(s.Method) && !slices.Contains(httpMethods, s.Method) {
		ps = append(ps, Problem{prefix + "method", fmt.Sprintf("%q is not an HTTP method", s.Method), "use one of " + strings.Join(httpMethods, ", ")})
	}
	for i, st := range s.ExpectStatus {
		if st < 100 || st > 599 {
			ps = append(ps, Problem{fmt.Sprintf("%sexpectStatus[%d]", prefix, i), fmt.Sprintf("%d is not an HTTP status", st), "use a status between 100 and 599, such as 200"})
		}
	}
	for _, name := range sortedKeys(s.Capture) {
		ptr := s.Capture[name]
		if !identifierRe.MatchString(name) {
			ps = append(ps, Problem{prefix + "capture." + name, fmt.Sprintf("output name %q is not an identifier", name), "use letters, digits and _, starting with a letter"})
		}
		if ptr != "" && !IsTemplate(ptr) && !strings.HasPrefix(ptr, "/") {
			ps = append(ps, Problem{prefix + "capture." + name, fmt.Sprintf("%q is not a JSON pointer", ptr), `start it with "/", such as "/snapshot/state"`})
		}
	}
	return ps
}

func checkWait(s *WaitSpec) []Problem {
	var ps []Problem
	n := 0
	if s.HTTP != nil {
		n++
		ps = append(ps, checkHTTP(s.HTTP, "http.")...)
	}
	if s.SQL != nil {
		n++
		if s.SQL.Connection == "" {
			ps = append(ps, Problem{"sql.connection", "is empty", "name one of the application's connections"})
		}
		if s.SQL.Query == "" {
			ps = append(ps, Problem{"sql.query", "is empty", "give a query whose first column is compared with expect"})
		}
	}
	if s.Exec != nil {
		n++
		ps = append(ps, checkExec(s.Exec, "exec.")...)
	}
	if n != 1 {
		ps = append(ps, Problem{"", fmt.Sprintf("has %d conditions", n), "give exactly one of http, sql and exec"})
	}
	if s.Interval < 0 {
		ps = append(ps, Problem{"interval", "is negative", `use a positive duration such as "2s"`})
	}
	return ps
}

func checkDump(s *DumpSpec) []Problem {
	ps := checkExec(&s.ExecSpec, "")
	switch {
	case s.Artifact == "":
		ps = append(ps, Problem{"artifact", "is empty", "name the stream, such as database.dump"})
	case !IsTemplate(s.Artifact) && !artifactNameRe.MatchString(s.Artifact):
		ps = append(ps, Problem{"artifact", fmt.Sprintf("%q is not a valid artifact name", s.Artifact), "use lower-case letters, digits, '.', '_' and '-'"})
	}
	return ps
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

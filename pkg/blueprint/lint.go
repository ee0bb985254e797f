package blueprint

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// Lint checks what a parsed blueprint means, without running anything:
// required fields, names, step kinds and their arguments, every template
// (syntax, references to the context, to secrets and to outputs of steps
// that are sure to have run), quiesce steps without an inverse, and inverses
// that depend on steps that may not have run. It returns nil when the
// blueprint is clean. Positions come from Parse; a blueprint built in code
// gets diagnostics without line and column.
func Lint(b *Blueprint) Diagnostics {
	l := &linter{b: b, r: &reporter{file: b.File, pos: b.pos}}
	l.header()
	names := sortedKeys(b.Spec.Actions)
	for _, name := range names {
		l.action(name, b.Spec.Actions[name])
	}
	if len(l.r.diags) == 0 {
		return nil
	}
	return l.r.diags.sort()
}

type linter struct {
	b *Blueprint
	r *reporter
}

var (
	dnsLabelRe   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	stepNameRe   = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]*$`)
	secretNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
)

func (l *linter) header() {
	b := l.b
	if b.APIVersion != APIVersion {
		l.r.add("apiVersion", "use apiVersion: "+APIVersion, "apiVersion is %q", b.APIVersion)
	}
	if b.Kind != BlueprintKind {
		l.r.add("kind", "use kind: "+BlueprintKind, "kind is %q", b.Kind)
	}
	switch n := b.Metadata.Name; {
	case n == "":
		l.r.add("metadata", "add metadata: {name: my-app}; the tidemark.io/blueprint annotation refers to it", "the blueprint has no name")
	case len(n) > 63 || !dnsLabelRe.MatchString(n):
		l.r.add("metadata.name", "use lower-case letters, digits and '-', at most 63 characters", "%q is not a valid name", n)
	}
	if b.Spec.MaxFreeze != nil && *b.Spec.MaxFreeze <= 0 {
		l.r.add("spec.maxFreeze", `give the longest the application may stay frozen, such as "60s"`, "must be positive")
	}
	for _, name := range sortedKeys(b.Spec.Params) {
		if !identifierRe.MatchString(name) {
			l.r.addKey("spec.params."+name, "use letters, digits and _, starting with a letter, so templates can say .Params."+name, "%q is not a valid parameter name", name)
		}
	}
	seen := map[string]bool{}
	for i, s := range b.Spec.Secrets {
		f := fmt.Sprintf("spec.secrets[%d]", i)
		switch {
		case !secretNameRe.MatchString(s):
			l.r.add(f, "use letters, digits, '.', '_' and '-'", "%q is not a valid secret name", s)
		case seen[s]:
			l.r.add(f, "remove the duplicate", "secret %q is declared twice", s)
		}
		seen[s] = true
	}
	for _, name := range sortedKeys(b.Spec.Actions) {
		if !slices.Contains(actionNames, name) {
			hint := "actions are " + strings.Join(actionNames, ", ")
			if s := suggest(name, actionNames); s != "" {
				hint = fmt.Sprintf("did you mean %q? %s", s, hint)
			}
			l.r.addKey("spec.actions."+name, hint, "unknown action %q", name)
		}
	}
	for _, name := range []string{ActionBackup, ActionRestore} {
		if len(b.Spec.Actions[name]) == 0 {
			l.r.add("spec.actions", fmt.Sprintf("add spec.actions.%s with at least one step", name), "the blueprint has no %s action", name)
		}
	}
}

// action checks one action's steps in order.
func (l *linter) action(name string, steps Action) {
	base := "spec.actions." + name
	snap := steps.SnapshotIndex()
	names := map[string]string{}
	artifacts := map[string]string{}
	for i := range steps {
		s := &steps[i]
		p := fmt.Sprintf("%s[%d]", base, i)
		for _, n := range []struct{ name, path string }{{s.Name, p + ".name"}, {inverseName(s), p + ".inverse.name"}} {
			if n.name == "" {
				continue
			}
			if prev, dup := names[n.name]; dup {
				l.r.add(n.path, "step names must be unique in an action; the name is also "+prev, "a second step named %q", n.name)
			}
			names[n.name] = n.path
		}
		if s.Kind == KindSnapshot && i != snap {
			l.r.add(p+".kind", "an action has one snapshot step: it is the barrier between quiesce and thaw", "a second snapshot step")
		}
		if s.Kind == KindSnapshot && name == ActionDelete {
			l.r.add(p+".kind", "snapshots belong to backup and restore", "a delete action has no snapshot step")
		}
		if s.Kind == KindSnapshot && name != ActionRestore && len(s.Args) > 0 {
			l.r.add(p+".snapshot", "remove the block: edits change restored volumes, so only a restore's snapshot step takes them", "a %s action's snapshot step takes no arguments", name)
		}
		if s.Kind == KindDump && name != ActionDelete {
			if spec, err := s.lintSpec(mustKind(KindDump)); err == nil {
				a := spec.(*DumpSpec).Artifact
				if prev, dup := artifacts[a]; dup && a != "" {
					l.r.add(p+".dump.artifact", "each dump names its own artifact; the other is "+prev, "artifact %q is written twice", a)
				}
				artifacts[a] = p
			}
		}
		l.step(name, steps, i, p)
	}
}

func inverseName(s *Step) string {
	if s.Inverse == nil {
		return ""
	}
	if s.Inverse.Name == "" {
		return s.Name + "-inverse"
	}
	return s.Inverse.Name
}

func mustKind(name string) Kind {
	k, _ := LookupKind(name)
	return k
}

// step checks steps[i] of action and its inverse.
func (l *linter) step(action string, steps Action, i int, p string) {
	s := &steps[i]
	snap := steps.SnapshotIndex()
	quiesce := action == ActionBackup && i < snap
	switch {
	case s.Name == "":
		l.r.add(p, "give every step a name; later steps refer to it as .Steps.<name>", "the step has no name")
	case !stepNameRe.MatchString(s.Name):
		l.r.add(p+".name", "start with a letter; use letters, digits, '-' and '_'", "%q is not a valid step name", s.Name)
	}
	l.common(s, p)
	if quiesce {
		switch {
		case !s.HasInverse() && s.NoInverse == "":
			hint := `add an inverse that undoes it, or noInverse: "<why nothing needs undoing>" if it only reads`
			if s.Kind == KindSQL {
				hint = `hold the session (hold: true) with release statements that undo it, add an inverse, or noInverse: "<why nothing needs undoing>" if it only reads`
			}
			l.r.add(p, hint, "step %q runs before the snapshot step, so it quiesces the application, but it has no inverse", s.Name)
		case s.OnError == OnErrorContinue:
			l.r.add(p+".onError", "a snapshot after a failed quiesce is not consistent; use onError: fail",
				"step %q quiesces the application and must not continue on error", s.Name)
		}
	}
	if s.Inverse != nil && s.NoInverse != "" {
		l.r.add(p+".noInverse", "keep the inverse or the reason, not both", "step %q has an inverse and noInverse", s.Name)
	}
	if s.Holds() && (snap < 0 || i > snap) {
		l.r.add(p, "a held session is released right after the snapshot step; move this step before it",
			"step %q holds its session but does not come before a snapshot step", s.Name)
	}
	if s.Kind == KindSnapshot && s.Inverse != nil {
		l.r.add(p+".inverse", "the coordinator deletes snapshots of failed runs itself", "a snapshot step has no inverse")
	}
	l.templates(action, steps, i, false, s, p)
	if inv := s.Inverse; inv != nil {
		ip := p + ".inverse"
		l.common(inv, ip)
		if inv.Name != "" && !stepNameRe.MatchString(inv.Name) {
			l.r.add(ip+".name", "start with a letter; use letters, digits, '-' and '_'", "%q is not a valid step name", inv.Name)
		}
		for _, bad := range []struct {
			set   bool
			field string
		}{{inv.Inverse != nil, "inverse"}, {inv.NoInverse != "", "noInverse"}, {inv.When != "", "when"}, {len(inv.Outputs) > 0, "outputs"}} {
			if bad.set {
				l.r.add(ip+"."+bad.field, "remove it: an inverse always runs when its step must be undone", "an inverse cannot have %s", bad.field)
			}
		}
		if inv.Kind == KindSnapshot || inv.Holds() {
			l.r.add(ip+".kind", "an inverse releases; it cannot take a snapshot or hold a session", "an inverse cannot be a %s step", describeKind(inv))
		}
		l.templates(action, steps, i, true, inv, ip)
	}
}

func describeKind(s *Step) string {
	if s.Holds() {
		return "holding sql"
	}
	return s.Kind
}

// common checks what every step and inverse has.
func (l *linter) common(s *Step, p string) {
	k, ok := LookupKind(s.Kind)
	if !ok {
		l.r.add(p+".kind", "use one of: "+strings.Join(Kinds(), ", "), "unknown step kind %q", s.Kind)
		return
	}
	if k.NewSpec != nil {
		bp := p + "." + s.Kind
		if len(s.Args) == 0 && k.OptionalSpec {
			// nothing to check
		} else if len(s.Args) == 0 {
			l.r.add(p, "put the arguments under "+s.Kind+":, such as "+exampleBlock(s.Kind), "the %s step has no %s block with its arguments", s.Kind, s.Kind)
		} else if spec, err := s.lintSpec(k); err != nil {
			l.r.add(bp, "", "arguments do not fit a %s step: %v", s.Kind, err)
		} else if k.Check != nil {
			for _, pr := range k.Check(spec) {
				l.r.add(joinPath(bp, pr.Field), pr.Hint, "%s", pr.Message)
			}
		}
	}
	switch s.OnError {
	case "", OnErrorFail, OnErrorContinue:
	default:
		l.r.add(p+".onError", "use fail or continue", "onError %q is neither fail nor continue", s.OnError)
	}
	if s.Timeout != nil && *s.Timeout <= 0 {
		l.r.add(p+".timeout", `give a positive duration such as "30s"`, "timeout must be positive")
	}
	if r := s.Retry; r != nil {
		if r.Attempts < 1 {
			l.r.add(p+".retry.attempts", "attempts counts every run, the first included: 3 means up to two retries", "attempts must be at least 1")
		}
		if r.Backoff < 0 {
			l.r.add(p+".retry.backoff", `use a duration such as "2s"`, "backoff is negative")
		}
	}
	seen := map[string]bool{}
	for j, o := range s.Outputs {
		op := fmt.Sprintf("%s.outputs[%d]", p, j)
		switch {
		case !identifierRe.MatchString(o):
			l.r.add(op, "outputs are used as .Steps.<step>.Output.<name>: use letters, digits and _, starting with a letter", "%q is not a valid output name", o)
		case seen[o]:
			l.r.add(op, "remove the duplicate", "output %q is listed twice", o)
		}
		seen[o] = true
	}
	if len(s.Outputs) > 0 && (s.Kind == KindSnapshot || s.Kind == KindWait) {
		l.r.add(p+".outputs", "remove outputs", "a %s step has no outputs", s.Kind)
	}
	if s.Kind == KindHTTP && len(s.Outputs) > 0 {
		if spec, err := s.lintSpec(k); err == nil {
			capture := spec.(*HTTPSpec).Capture
			for j, o := range s.Outputs {
				if _, ok := capture[o]; !ok {
					l.r.add(fmt.Sprintf("%s.outputs[%d]", p, j), fmt.Sprintf(`add %s: "/json/pointer" to http.capture`, o),
						"an http step's outputs are its captures, and it captures no %q", o)
				}
			}
		}
	}
}

// templates checks every template of step s (steps[i] itself, or its
// inverse when inverse is set): the when condition and every string of the
// kind block.
func (l *linter) templates(action string, steps Action, i int, inverse bool, s *Step, p string) {
	check := func(field, text string) *analyzer {
		a := analyzeTemplate(text, func(chain []string) *tmplProblem {
			return l.reference(action, steps, i, inverse, chain)
		})
		for _, pr := range a.problems {
			l.r.add(field, pr.hint, "%s", pr.msg)
		}
		return a
	}
	if s.When != "" {
		check(p+".when", s.When)
	}
	tree, err := argTree(s.Args)
	if err != nil {
		return
	}
	walkStrings(tree, p+"."+s.Kind, func(field, text string) {
		check(field, text)
		if secretTransformed(text) {
			l.r.add(field, `insert it on its own as {{ .Secrets.name }}, and transform the value in the command (e.g. in its script, from env)`,
				"a secret passed through a function or condition: secrets are filled in by the hookrunner after rendering, so the template only sees a placeholder")
		}
	})
	walkCommands(tree, p+"."+s.Kind, func(field string, argv []string) {
		l.command(field, argv)
	})
}

// command checks one argv: template output must not become shell syntax,
// and secrets must not sit on a command line.
func (l *linter) command(field string, argv []string) {
	script, first := -1, 1
	if len(argv) > 1 && path.Base(argv[0]) == "busybox" {
		first = 2 // busybox sh -c '...'
	}
	if len(argv) >= first && isShell(argv[first-1]) {
		for j := first; j < len(argv); j++ {
			if !strings.HasPrefix(argv[j], "-") {
				script = j
				break
			}
		}
	}
	for j, arg := range argv {
		f := fmt.Sprintf("%s[%d]", field, j)
		if j == script && IsTemplate(arg) {
			l.r.add(f, `pass the value in env (env: {NAME: "{{ ... }}"}) and write "$NAME" in the script`,
				"a template inside a shell script: its output would become shell syntax")
		}
		a := analyzeTemplate(arg, nil)
		for _, c := range a.chains {
			if len(c) > 0 && c[0] == "Secrets" {
				l.r.add(f, "pass it in env instead, where only the command can read it",
					"a secret on a command line, where any process on the machine can read it")
				break
			}
		}
	}
}

func isShell(prog string) bool {
	switch path.Base(prog) {
	case "sh", "bash", "dash", "ash", "zsh", "ksh":
		return true
	}
	return false
}

// reference judges a chain from the root context used in steps[i] (or its
// inverse): which step, which output, which secret.
func (l *linter) reference(action string, steps Action, i int, inverse bool, chain []string) *tmplProblem {
	ref := "." + strings.Join(chain, ".")
	fail := func(hint, format string, args ...any) *tmplProblem {
		return &tmplProblem{msg: ref + ": " + fmt.Sprintf(format, args...), hint: hint}
	}
	switch chain[0] {
	case "Secrets":
		if len(chain) >= 2 && !l.b.DeclaresSecret(chain[1]) {
			hint := fmt.Sprintf("add it to spec.secrets: [%s]", chain[1])
			if s := suggest(chain[1], l.b.Spec.Secrets); s != "" {
				hint = fmt.Sprintf("did you mean %q? or %s", s, hint)
			}
			return fail(hint, "secret %q is not declared", chain[1])
		}
	case "Params":
		if len(chain) >= 2 {
			if _, ok := l.b.Spec.Params[chain[1]]; !ok {
				hint := fmt.Sprintf("declare it with a default in spec.params: {%s: ...}", chain[1])
				if s := suggest(chain[1], sortedKeys(l.b.Spec.Params)); s != "" {
					hint = fmt.Sprintf("did you mean %q? or %s", s, hint)
				}
				return fail(hint, "parameter %q is not declared", chain[1])
			}
		}
	case "Backup":
		if action == ActionBackup {
			return fail("use .Steps for outputs of this backup", ".Backup is set only in restore and delete actions")
		}
		if len(chain) >= 3 && chain[1] == "Steps" {
			return l.backupOutput(chain[2:], fail)
		}
	case "Restore":
		if action != ActionRestore {
			return fail("use it only in the restore action", ".Restore is set only in restore actions")
		}
	case "Steps":
		if len(chain) >= 2 {
			return l.stepOutput(steps, i, inverse, chain[1:], fail)
		}
	}
	return nil
}

type failFunc func(hint, format string, args ...any) *tmplProblem

// stepOutput checks .Steps.<name>[.Output.<key>] used in steps[i].
func (l *linter) stepOutput(steps Action, i int, inverse bool, chain []string, fail failFunc) *tmplProblem {
	name := chain[0]
	cur := steps[i].Name
	j := slices.IndexFunc(steps, func(s Step) bool { return s.Name == name })
	if j < 0 {
		earlier := make([]string, 0, i)
		for _, s := range steps[:i] {
			earlier = append(earlier, s.Name)
		}
		hint := "steps before this one: " + strings.Join(earlier, ", ")
		if len(earlier) == 0 {
			hint = "no step runs before this one"
		}
		if s := suggest(name, earlier); s != "" {
			hint = fmt.Sprintf("did you mean %q? %s", s, hint)
		}
		return fail(hint, "no step named %q in this action", name)
	}
	target := &steps[j]
	switch {
	case inverse && j > i:
		return fail("an inverse may use only outputs of its own step or of steps before it",
			"step %q runs after %q, so it may not have run when %q is undone", name, cur, cur)
	case !inverse && j == i:
		return fail("a step's outputs exist only once it has run; use them in a later step or in its inverse",
			"step %q cannot use its own outputs", name)
	case !inverse && j > i:
		return fail("move the step that produces it earlier, or use the output in a later step",
			"step %q runs after %q", name, cur)
	}
	if j != i {
		if target.When != "" && target.When != steps[i].When {
			return fail("give this step the same when: condition, or do not use its outputs",
				"step %q has a when condition, so it may have been skipped", name)
		}
		if target.OnError == OnErrorContinue {
			return fail("make it onError: fail, or do not use its outputs",
				"step %q continues on error, so it may have left no outputs", name)
		}
	}
	if target.Holds() {
		snap := steps.SnapshotIndex()
		if inverse || i < snap {
			return fail("use them in a step after the snapshot step",
				"the outputs of held step %q come from its release, which runs right after the snapshot step", name)
		}
	}
	if len(chain) >= 3 && chain[1] == "Output" {
		return promised(target, chain[2], fail)
	}
	return nil
}

func promised(target *Step, key string, fail failFunc) *tmplProblem {
	outs := target.PromisedOutputs()
	if slices.Contains(outs, key) {
		return nil
	}
	hint := fmt.Sprintf("add it to the outputs of step %q: outputs: [%s]", target.Name, strings.Join(append(slices.Clone(outs), key), ", "))
	if len(outs) > 0 {
		sort.Strings(outs)
		if s := suggest(key, outs); s != "" {
			hint = fmt.Sprintf("did you mean %q? or %s", s, hint)
		}
	}
	return fail(hint, "step %q does not promise output %q", target.Name, key)
}

// backupOutput checks .Backup.Steps.<name>[.Output.<key>].
func (l *linter) backupOutput(chain []string, fail failFunc) *tmplProblem {
	backup := l.b.Spec.Actions[ActionBackup]
	target := backup.Step(chain[0])
	if target == nil {
		return fail("name a step of the backup action", "the backup action has no step %q", chain[0])
	}
	if target.When != "" || target.OnError == OnErrorContinue {
		return fail("make that step unconditional and onError: fail, or do not use its outputs",
			"backup step %q may not have run, so its outputs may be missing", chain[0])
	}
	if len(chain) >= 3 && chain[1] == "Output" {
		return promised(target, chain[2], fail)
	}
	return nil
}

// walkStrings calls fn for every string value in tree, with its path.
// Map keys are not templates.
func walkStrings(tree any, p string, fn func(field, text string)) {
	switch v := tree.(type) {
	case string:
		fn(p, v)
	case map[string]any:
		for _, k := range sortedKeys(v) {
			walkStrings(v[k], joinPath(p, k), fn)
		}
	case []any:
		for i, e := range v {
			walkStrings(e, fmt.Sprintf("%s[%d]", p, i), fn)
		}
	}
}

// walkCommands calls fn for every list of strings under a key "command":
// the argv of exec, dump and wait.exec (and of any kind using the name).
func walkCommands(tree any, p string, fn func(field string, argv []string)) {
	switch v := tree.(type) {
	case map[string]any:
		for _, k := range sortedKeys(v) {
			kp := joinPath(p, k)
			if l, ok := v[k].([]any); ok && k == "command" {
				argv := make([]string, len(l))
				for i, e := range l {
					argv[i], _ = e.(string)
				}
				fn(kp, argv)
				continue
			}
			walkCommands(v[k], kp, fn)
		}
	case []any:
		for i, e := range v {
			walkCommands(e, fmt.Sprintf("%s[%d]", p, i), fn)
		}
	}
}

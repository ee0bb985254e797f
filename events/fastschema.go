package events

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"regexp/syntax"
	"slices"
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// The fast validator checks a payload against its type's JSON Schema in one
// pass over the raw bytes, without building a map[string]any and without
// allocating on the way. It is compiled at start-up from the same schemas,
// already compiled and with every $ref resolved by santhosh-tekuri/jsonschema
// (the reference), and understands only the keywords Tidemark's schemas use.
// A schema with any other keyword is not compiled, and its type always goes
// through the reference.
//
// Its answer is one of three:
//
//   - fastValid: the reference accepts the document too;
//   - fastInvalid: the reference rejects it too;
//   - fastUnsure: the document uses something the fast path does not decide
//     (escaped keys, duplicate keys, numbers that are not plain integers,
//     invalid UTF-8 in a checked string, a syntax error, ...).
//
// ValidatePayload trusts only fastValid. Everything else goes through the
// reference, so every error a caller sees is the reference's, word for word.
// fastschema_test.go and FuzzFastSchemaMatchesReference hold the fast path
// to the reference on every schema example, on systematic mutations of them
// and on fuzzed documents.

type fastVerdict uint8

const (
	fastValid fastVerdict = iota
	fastUnsure
	fastInvalid
)

func (v fastVerdict) String() string {
	switch v {
	case fastValid:
		return "valid"
	case fastUnsure:
		return "unsure"
	case fastInvalid:
		return "invalid"
	}
	return fmt.Sprintf("fastVerdict(%d)", int(v))
}

// and combines the verdicts of two checks of one instance that must both
// hold: a definite failure of either decides; otherwise doubt wins.
func (v fastVerdict) and(w fastVerdict) fastVerdict { return max(v, w) }

type jsonKind uint8

const (
	kindNull jsonKind = 1 << iota
	kindBoolean
	kindNumber
	kindInteger
	kindString
	kindArray
	kindObject
)

var kindByName = map[string]jsonKind{
	"null": kindNull, "boolean": kindBoolean, "number": kindNumber, "integer": kindInteger,
	"string": kindString, "array": kindArray, "object": kindObject,
}

// fastNode is one compiled schema.
type fastNode struct {
	reject bool     // the schema `false`
	types  jsonKind // 0: any type

	ref        *fastNode
	allOf      []*fastNode
	ifNode     *fastNode
	thenNode   *fastNode
	elseNode   *fastNode
	enum       []string // string-only enum; nil when absent
	hasEnum    bool
	constStr   *string
	checksStr  bool // minLength, pattern, format, enum or const need the string's value
	minLength  int
	pattern    *regexp.Regexp
	byteSet    *[256]bool          // pattern is ^[set]+$ over ASCII: checked without the regexp engine
	matcher    func(s []byte) bool // a hand-written matcher for a known pattern
	patternAny jsonschema.Regexp   // a pattern from another engine
	format     func(any) error

	minimum *int64

	checksObj    bool
	props        map[string]fastProp // property and required names
	required     []int               // bit numbers of required names
	additional   *fastNode           // schema for other properties; nil: anything
	noAdditional bool                // additionalProperties: false

	checksArr   bool
	items       *fastNode
	minItems    int
	uniqueItems bool
}

// Fields of jsonschema.Schema the fast compiler understands, or that carry
// no assertion. Any other field set on a schema makes it unsupported, so a
// new keyword in a schema (or a new field in the library) can never be
// silently ignored.
var fastHandledFields = map[string]bool{
	"DraftVersion": true, "Location": true, "ID": true, "Anchor": true, "DynamicAnchor": true, "RecursiveAnchor": true,
	"Bool": true, "Ref": true, "Types": true, "Enum": true, "Const": true, "AllOf": true,
	"If": true, "Then": true, "Else": true, "Format": true,
	"Required": true, "Properties": true, "AdditionalProperties": true,
	"MinItems": true, "UniqueItems": true, "Items2020": true,
	"MinLength": true, "Pattern": true, "Minimum": true,
	"Title": true, "Description": true, "Default": true, "Comment": true, "ReadOnly": true,
	"WriteOnly": true, "Examples": true, "Deprecated": true,
}

type fastCompiler struct {
	done map[*jsonschema.Schema]*fastNode
}

func compileFast(s *jsonschema.Schema) (*fastNode, error) {
	c := fastCompiler{done: map[*jsonschema.Schema]*fastNode{}}
	return c.compile(s)
}

func (c *fastCompiler) compile(s *jsonschema.Schema) (*fastNode, error) {
	if s == nil {
		return nil, nil
	}
	if n, ok := c.done[s]; ok {
		return n, nil
	}
	n := &fastNode{minLength: -1}
	c.done[s] = n
	if s.DraftVersion != 2020 {
		return nil, fmt.Errorf("%s: draft %d", s.Location, s.DraftVersion)
	}
	v := reflect.ValueOf(s).Elem()
	for i := range v.NumField() {
		f := v.Type().Field(i)
		if !f.IsExported() || fastHandledFields[f.Name] || v.Field(i).IsZero() {
			continue
		}
		return nil, fmt.Errorf("%s: keyword %s is not supported by the fast validator", s.Location, f.Name)
	}
	if s.Bool != nil {
		n.reject = !*s.Bool
		return n, nil
	}
	var err error
	if s.Types != nil {
		for _, name := range s.Types.ToStrings() {
			k, ok := kindByName[name]
			if !ok {
				return nil, fmt.Errorf("%s: type %q", s.Location, name)
			}
			n.types |= k
		}
	}
	if n.ref, err = c.compile(s.Ref); err != nil {
		return nil, err
	}
	for _, sub := range s.AllOf {
		cs, err := c.compile(sub)
		if err != nil {
			return nil, err
		}
		n.allOf = append(n.allOf, cs)
	}
	if n.ifNode, err = c.compile(s.If); err != nil {
		return nil, err
	}
	if n.thenNode, err = c.compile(s.Then); err != nil {
		return nil, err
	}
	if n.elseNode, err = c.compile(s.Else); err != nil {
		return nil, err
	}
	if s.Enum != nil {
		n.hasEnum = true
		n.enum = []string{}
		for _, e := range s.Enum.Values {
			str, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("%s: enum value %v is not a string", s.Location, e)
			}
			n.enum = append(n.enum, str)
		}
	}
	if s.Const != nil {
		str, ok := (*s.Const).(string)
		if !ok {
			return nil, fmt.Errorf("%s: const %v is not a string", s.Location, *s.Const)
		}
		n.constStr = &str
	}
	if s.MinLength != nil {
		n.minLength = *s.MinLength
	}
	if s.Pattern != nil {
		if re, ok := s.Pattern.(*regexp.Regexp); ok {
			n.pattern = re
			n.byteSet = asciiClassPlus(re.String())
			n.matcher = knownPatterns[re.String()]
		} else {
			n.patternAny = s.Pattern
		}
	}
	if s.Format != nil {
		// Formats are called with the decoded string only; a format on a
		// schema that admits other types is left to the reference.
		if n.types != kindString {
			return nil, fmt.Errorf("%s: format %s on a schema that is not type string", s.Location, s.Format.Name)
		}
		n.format = s.Format.Validate
	}
	n.checksStr = n.hasEnum || n.constStr != nil || n.minLength >= 0 || n.pattern != nil || n.patternAny != nil || n.format != nil
	if s.Minimum != nil {
		if !s.Minimum.IsInt() || !s.Minimum.Num().IsInt64() {
			return nil, fmt.Errorf("%s: minimum %s is not an int64", s.Location, s.Minimum)
		}
		m := s.Minimum.Num().Int64()
		n.minimum = &m
	}

	// object --
	if len(s.Properties) > 0 || len(s.Required) > 0 || s.AdditionalProperties != nil {
		n.checksObj = true
		n.props = map[string]fastProp{}
		for name, ps := range s.Properties {
			cs, err := c.compile(ps)
			if err != nil {
				return nil, err
			}
			n.props[name] = fastProp{node: cs, bit: len(n.props)}
		}
		for _, name := range s.Required {
			if _, ok := n.props[name]; !ok {
				n.props[name] = fastProp{bit: len(n.props)}
			}
			n.required = append(n.required, n.props[name].bit)
		}
		if len(n.props) > 64 {
			return nil, fmt.Errorf("%s: more than 64 named properties", s.Location)
		}
		switch a := s.AdditionalProperties.(type) {
		case nil:
		case bool:
			n.noAdditional = !a
		case *jsonschema.Schema:
			if n.additional, err = c.compile(a); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("%s: additionalProperties of type %T", s.Location, a)
		}
	}

	// array --
	if s.MinItems != nil || s.UniqueItems || s.Items2020 != nil {
		n.checksArr = true
		if s.MinItems != nil {
			n.minItems = *s.MinItems
		}
		n.uniqueItems = s.UniqueItems
		if n.items, err = c.compile(s.Items2020); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// fastProp is a name an object schema knows: a property (with its schema)
// or a required name without one. bit numbers it in the seen bitmask.
type fastProp struct {
	node *fastNode
	bit  int
}

// fastByType holds the fast validator of every type whose schema it
// supports; the others are absent and always use the reference.
var fastByType = sync.OnceValue(func() map[Type]*fastNode {
	s := schemas()
	out := map[Type]*fastNode{}
	if s.err != nil {
		return out
	}
	for t, sch := range s.byType {
		n, err := compileFast(sch)
		if err != nil {
			continue // TestFastValidatorCoversEveryType names it
		}
		out[t] = n
	}
	return out
})

// fastValidate runs the fast validator of type t on a payload.
func fastValidate(t Type, data []byte) fastVerdict {
	n, ok := fastByType()[t]
	if !ok {
		return fastUnsure
	}
	return n.validateDocument(data)
}

func (n *fastNode) validateDocument(data []byte) fastVerdict {
	start := skipSpace(data, 0)
	end, ok := skipValue(data, start, 0)
	if !ok || skipSpace(data, end) != len(data) {
		return fastUnsure // not one JSON value: the reference reports it
	}
	return n.check(data[start:end], 0)
}

// maxFastDepth bounds recursion; deeper documents go to the reference.
const maxFastDepth = 100

// check validates one JSON value, already known to be well-formed and to
// hold only numbers a float64 can carry.
func (n *fastNode) check(v []byte, depth int) fastVerdict {
	if n.reject {
		return fastInvalid
	}
	if depth > maxFastDepth {
		return fastUnsure
	}
	verdict := fastValid
	if n.ref != nil {
		if verdict = n.ref.check(v, depth+1); verdict == fastInvalid {
			return verdict
		}
	}
	kind := kindOf(v)
	if n.types != 0 && n.types&kind == 0 {
		switch {
		case kind == kindNumber && n.types&kindInteger != 0:
			if _, plain := plainInteger(v); !plain {
				return verdict.and(fastUnsure) // 1.0 and 1e3 are integers to the reference
			}
		default:
			return fastInvalid
		}
	}
	switch kind {
	case kindString:
		if n.checksStr {
			verdict = verdict.and(n.checkString(v))
		}
	case kindNumber:
		if n.minimum != nil {
			verdict = verdict.and(n.checkMinimum(v))
		}
	case kindObject:
		if n.checksObj {
			verdict = verdict.and(n.checkObject(v, depth))
		}
	case kindArray:
		if n.checksArr {
			verdict = verdict.and(n.checkArray(v, depth))
		}
	}
	if kind != kindString && (n.hasEnum || n.constStr != nil) {
		return fastInvalid // string-only enum or const
	}
	if verdict == fastInvalid {
		return verdict
	}
	for _, sub := range n.allOf {
		if verdict = verdict.and(sub.check(v, depth+1)); verdict == fastInvalid {
			return verdict
		}
	}
	if n.ifNode != nil {
		switch n.ifNode.check(v, depth+1) {
		case fastValid:
			if n.thenNode != nil {
				verdict = verdict.and(n.thenNode.check(v, depth+1))
			}
		case fastInvalid:
			if n.elseNode != nil {
				verdict = verdict.and(n.elseNode.check(v, depth+1))
			}
		default:
			verdict = verdict.and(fastUnsure)
		}
	}
	return verdict
}

func kindOf(v []byte) jsonKind {
	switch v[0] {
	case '{':
		return kindObject
	case '[':
		return kindArray
	case '"':
		return kindString
	case 't', 'f':
		return kindBoolean
	case 'n':
		return kindNull
	}
	return kindNumber
}

// plainInteger parses a number written as an integer of at most 15 digits,
// which a float64 holds exactly.
func plainInteger(v []byte) (int64, bool) {
	digits := v
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) == 0 || len(digits) > 15 {
		return 0, false
	}
	var x int64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		x = x*10 + int64(c-'0')
	}
	if v[0] == '-' {
		x = -x
	}
	return x, true
}

// asciiClassPlus returns the set of bytes of a pattern of the form
// ^[class]+$ whose class holds only ASCII characters, such as the id
// patterns of common.json; nil for any other pattern. A string matches such
// a pattern exactly when it is not empty and each of its bytes is in the
// set (no byte of a multi-byte UTF-8 sequence is ASCII).
func asciiClassPlus(pattern string) *[256]bool {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return nil
	}
	re = re.Simplify()
	if re.Op != syntax.OpConcat || len(re.Sub) != 3 ||
		re.Sub[0].Op != syntax.OpBeginText || re.Sub[2].Op != syntax.OpEndText ||
		re.Sub[1].Op != syntax.OpPlus || re.Sub[1].Sub[0].Op != syntax.OpCharClass {
		return nil
	}
	var set [256]bool
	ranges := re.Sub[1].Sub[0].Rune
	for i := 0; i+1 < len(ranges); i += 2 {
		lo, hi := ranges[i], ranges[i+1]
		if lo < 0 || hi >= utf8.RuneSelf {
			return nil
		}
		for r := lo; r <= hi; r++ {
			set[r] = true
		}
	}
	return &set
}

// knownPatterns are hand-written matchers for the duration patterns of
// common.json, which Go's regexp can only run by backtracking. Each is keyed
// by its exact pattern, so a changed pattern falls back to the regexp; the
// tests hold each to its regexp.
var knownPatterns = map[string]func([]byte) bool{
	`^([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+$`:   func(s []byte) bool { return matchDuration(s, false) },
	`^-?([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+$`: func(s []byte) bool { return matchDuration(s, true) },
}

// matchDuration matches ^-?([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+$
// (the sign only when signed). Taking the longest unit is safe: after an
// "m", an "s" can only continue the unit, since every group starts with a
// digit.
func matchDuration(s []byte, signed bool) bool {
	i := 0
	if signed && i < len(s) && s[i] == '-' {
		i++
	}
	if i == len(s) {
		return false
	}
	digits := func() bool {
		start := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return i > start
	}
	for i < len(s) {
		if !digits() {
			return false
		}
		if i < len(s) && s[i] == '.' {
			i++
			if !digits() {
				return false
			}
		}
		switch rest := s[i:]; {
		case len(rest) >= 2 && (rest[0] == 'n' || rest[0] == 'u' || rest[0] == 'm') && rest[1] == 's':
			i += 2
		case len(rest) >= 3 && ((rest[0] == 0xC2 && rest[1] == 0xB5) || (rest[0] == 0xCE && rest[1] == 0xBC)) && rest[2] == 's':
			i += 3 // µs (U+00B5) or μs (U+03BC)
		case len(rest) >= 1 && (rest[0] == 's' || rest[0] == 'm' || rest[0] == 'h'):
			i++
		default:
			return false
		}
	}
	return true
}

func (n *fastNode) checkMinimum(v []byte) fastVerdict {
	x, ok := plainInteger(v)
	if !ok {
		return fastUnsure
	}
	if x < *n.minimum {
		return fastInvalid
	}
	return fastValid
}

// stringValue returns the decoded value of a JSON string token. The common
// case (no escapes, valid UTF-8) is the token's own bytes; anything else is
// decoded by encoding/json, as the reference's input is.
func stringValue(tok []byte) ([]byte, bool) {
	raw := tok[1 : len(tok)-1]
	if bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		return raw, true
	}
	var s string
	if err := json.Unmarshal(tok, &s); err != nil {
		return nil, false
	}
	return []byte(s), true
}

func (n *fastNode) checkString(tok []byte) fastVerdict {
	s, ok := stringValue(tok)
	if !ok {
		return fastUnsure
	}
	if n.minLength >= 0 && utf8.RuneCount(s) < n.minLength {
		return fastInvalid
	}
	if n.byteSet != nil {
		if len(s) == 0 {
			return fastInvalid
		}
		for _, c := range s {
			if !n.byteSet[c] {
				return fastInvalid
			}
		}
	} else if n.matcher != nil {
		if !n.matcher(s) {
			return fastInvalid
		}
	} else if n.pattern != nil && !n.pattern.Match(s) {
		return fastInvalid
	}
	if n.patternAny != nil && !n.patternAny.MatchString(string(s)) {
		return fastInvalid
	}
	if n.constStr != nil && string(s) != *n.constStr {
		return fastInvalid
	}
	if n.hasEnum && !slices.Contains(n.enum, string(s)) {
		return fastInvalid
	}
	if n.format != nil {
		if err := n.format(string(s)); err != nil {
			return fastInvalid
		}
	}
	return fastValid
}

func (n *fastNode) checkObject(v []byte, depth int) fastVerdict {
	verdict := fastValid
	var seen uint64
	duplicate := false
	i := skipSpace(v, 1)
	if v[i] != '}' {
		for {
			keyEnd, _ := skipString(v, i)
			key := v[i+1 : keyEnd-1]
			if bytes.IndexByte(key, '\\') >= 0 || !utf8.Valid(key) {
				// The reference sees the decoded key; leave it to it.
				return fastUnsure
			}
			i = skipSpace(v, skipSpace(v, keyEnd)+1) // past ':'
			valEnd, _ := skipValue(v, i, 0)
			val := v[i:valEnd]
			p, named := n.props[string(key)]
			if named {
				if seen&(1<<p.bit) != 0 {
					duplicate = true
				}
				seen |= 1 << p.bit
			}
			if p.node != nil {
				verdict = verdict.and(p.node.check(val, depth+1))
			} else if n.noAdditional {
				verdict = fastInvalid
			} else if n.additional != nil {
				verdict = verdict.and(n.additional.check(val, depth+1))
			}
			i = skipSpace(v, valEnd)
			if v[i] == '}' {
				break
			}
			i = skipSpace(v, i+1) // past ','
		}
	}
	for _, bit := range n.required {
		if seen&(1<<bit) == 0 {
			verdict = fastInvalid
		}
	}
	if duplicate || (verdict == fastInvalid && hasDuplicateKey(v)) {
		// encoding/json keeps the last of duplicate keys: only the
		// reference knows which value it judged.
		return fastUnsure
	}
	return verdict
}

// hasDuplicateKey reports whether an object (well-formed, keys without
// escapes) names a key twice.
func hasDuplicateKey(v []byte) bool {
	var keys [][]byte
	i := skipSpace(v, 1)
	if v[i] == '}' {
		return false
	}
	for {
		keyEnd, _ := skipString(v, i)
		key := v[i+1 : keyEnd-1]
		for _, k := range keys {
			if bytes.Equal(k, key) {
				return true
			}
		}
		keys = append(keys, key)
		i = skipSpace(v, skipSpace(v, keyEnd)+1)
		valEnd, _ := skipValue(v, i, 0)
		i = skipSpace(v, valEnd)
		if v[i] == '}' {
			return false
		}
		i = skipSpace(v, i+1)
	}
}

func (n *fastNode) checkArray(v []byte, depth int) fastVerdict {
	verdict := fastValid
	count := 0
	var stack [16][]byte
	items := stack[:0]
	i := skipSpace(v, 1)
	if v[i] != ']' {
		for {
			end, _ := skipValue(v, i, 0)
			item := v[i:end]
			if n.items != nil {
				verdict = verdict.and(n.items.check(item, depth+1))
			}
			if n.uniqueItems {
				items = append(items, item)
			}
			count++
			i = skipSpace(v, end)
			if v[i] == ']' {
				break
			}
			i = skipSpace(v, i+1)
		}
	}
	if count < n.minItems {
		verdict = fastInvalid
	}
	if n.uniqueItems && len(items) > 1 {
		// Equal bytes are equal values only for strings written without
		// escapes in valid UTF-8; anything else goes to the reference.
		for _, it := range items {
			if it[0] != '"' || bytes.IndexByte(it, '\\') >= 0 || !utf8.Valid(it) {
				return verdict.and(fastUnsure)
			}
		}
		for a := 1; a < len(items); a++ {
			for b := range a {
				if bytes.Equal(items[a], items[b]) {
					return fastInvalid
				}
			}
		}
	}
	return verdict
}

// --- a strict JSON scanner that allocates nothing ---

func skipSpace(d []byte, i int) int {
	for i < len(d) {
		switch d[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipValue returns the end of the JSON value starting at d[i]. It is false
// when the value is malformed, nested deeper than maxFastDepth, or holds a
// number encoding/json cannot decode into a float64 (the reference's
// input), so the caller must defer to the reference.
func skipValue(d []byte, i, depth int) (int, bool) {
	if i >= len(d) || depth > maxFastDepth {
		return i, false
	}
	switch c := d[i]; {
	case c == '"':
		return skipString(d, i)
	case c == '{':
		i = skipSpace(d, i+1)
		if i < len(d) && d[i] == '}' {
			return i + 1, true
		}
		for {
			if i >= len(d) || d[i] != '"' {
				return i, false
			}
			var ok bool
			if i, ok = skipString(d, i); !ok {
				return i, false
			}
			i = skipSpace(d, i)
			if i >= len(d) || d[i] != ':' {
				return i, false
			}
			if i, ok = skipValue(d, skipSpace(d, i+1), depth+1); !ok {
				return i, false
			}
			i = skipSpace(d, i)
			if i >= len(d) {
				return i, false
			}
			switch d[i] {
			case '}':
				return i + 1, true
			case ',':
				i = skipSpace(d, i+1)
			default:
				return i, false
			}
		}
	case c == '[':
		i = skipSpace(d, i+1)
		if i < len(d) && d[i] == ']' {
			return i + 1, true
		}
		for {
			var ok bool
			if i, ok = skipValue(d, i, depth+1); !ok {
				return i, false
			}
			i = skipSpace(d, i)
			if i >= len(d) {
				return i, false
			}
			switch d[i] {
			case ']':
				return i + 1, true
			case ',':
				i = skipSpace(d, i+1)
			default:
				return i, false
			}
		}
	case c == 't':
		return skipLiteral(d, i, "true")
	case c == 'f':
		return skipLiteral(d, i, "false")
	case c == 'n':
		return skipLiteral(d, i, "null")
	case c == '-' || (c >= '0' && c <= '9'):
		return skipNumber(d, i)
	}
	return i, false
}

func skipLiteral(d []byte, i int, lit string) (int, bool) {
	if len(d)-i < len(lit) || string(d[i:i+len(lit)]) != lit {
		return i, false
	}
	return i + len(lit), true
}

// skipString returns the end of the string token starting at d[i] (a '"').
// Escapes must be JSON's; control characters must be escaped. Invalid UTF-8
// is well-formed here, as it is to encoding/json.
func skipString(d []byte, i int) (int, bool) {
	i++
	for i < len(d) {
		c := d[i]
		switch {
		case c == '"':
			return i + 1, true
		case c < 0x20:
			return i, false
		case c == '\\':
			if i+1 >= len(d) {
				return i, false
			}
			switch d[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if len(d)-i < 6 {
					return i, false
				}
				for _, h := range d[i+2 : i+6] {
					if !isHex(h) {
						return i, false
					}
				}
				i += 6
			default:
				return i, false
			}
		default:
			i++
		}
	}
	return i, false
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// skipNumber follows JSON's number grammar. A number that is not a short
// plain integer is parsed as encoding/json would, to refuse what overflows a
// float64.
func skipNumber(d []byte, i int) (int, bool) {
	start := i
	if d[i] == '-' {
		i++
	}
	if i >= len(d) {
		return i, false
	}
	switch {
	case d[i] == '0':
		i++
	case d[i] >= '1' && d[i] <= '9':
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	default:
		return i, false
	}
	plain := true
	if i < len(d) && d[i] == '.' {
		plain = false
		i++
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			return i, false
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		plain = false
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			return i, false
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	if !plain || i-start > 15 {
		if _, err := strconv.ParseFloat(string(d[start:i]), 64); err != nil {
			return i, false
		}
	}
	return i, true
}

package events

import (
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"
)

// Type is a CloudEvents type name: reverse-DNS and versioned, such as
// "io.tidemark.backup.requested.v1". A new major shape of a payload gets a
// new type name (….v2); consumers never have to guess which shape they hold.
type Type string

// Kind says whether an event asks for work (a command, consumed once from a
// work-queue stream) or reports something that happened (a fact, kept in the
// audit-log stream and readable by any number of consumers).
type Kind int

const (
	// Fact is something that happened; facts are never deleted when read.
	Fact Kind = iota + 1
	// Command asks exactly one worker to do something.
	Command
	// DeadLetter is a message set aside because it could not be handled.
	DeadLetter
)

func (k Kind) String() string {
	switch k {
	case Fact:
		return "fact"
	case Command:
		return "command"
	case DeadLetter:
		return "dead letter"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Payload is the data of one event type. Each payload struct names its type,
// so an event cannot carry data of the wrong shape.
type Payload interface {
	EventType() Type
}

// Descriptor describes one registered event type.
type Descriptor struct {
	Type Type
	Kind Kind
	// Summary is one line for the AsyncAPI document and `--help` texts.
	Summary string
	// Routed types go to one consumer chosen by the payload's Route(), on
	// Subject()+"."+Route().
	Routed bool
	goType reflect.Type
	// decode unmarshals JSON into the payload's Go type and returns it by value.
	decode func(data []byte) (Payload, error)
}

// Area is the second segment of the type name ("hook" for
// io.tidemark.hook.requested.v1); the bus routes commands by it.
func (d Descriptor) Area() string {
	return strings.SplitN(strings.TrimPrefix(string(d.Type), typePrefix), ".", 2)[0]
}

// Subject is the NATS subject the event is published on:
// tidemark.cmd.<name>.<version> for commands and tidemark.evt.<name>.<version>
// for facts, where <name> is the type name without "io.tidemark.".
func (d Descriptor) Subject() string {
	name := strings.TrimPrefix(string(d.Type), typePrefix)
	switch d.Kind {
	case Command:
		return CommandSubjectPrefix + name
	case DeadLetter:
		return DeadLetterSubjectPrefix + name
	}
	return FactSubjectPrefix + name
}

const (
	typePrefix = "io.tidemark."
	// CommandSubjectPrefix starts the subject of every command.
	CommandSubjectPrefix = "tidemark.cmd."
	// FactSubjectPrefix starts the subject of every fact.
	FactSubjectPrefix = "tidemark.evt."
	// DeadLetterSubjectPrefix starts the subject of every dead letter.
	DeadLetterSubjectPrefix = "tidemark.dlq."
)

var catalog = map[Type]Descriptor{}

func register[P Payload](kind Kind, summary string) {
	var zero P
	t := zero.EventType()
	if _, dup := catalog[t]; dup {
		panic("events: type registered twice: " + string(t))
	}
	if !strings.HasPrefix(string(t), typePrefix) {
		panic("events: type outside io.tidemark.: " + string(t))
	}
	_, routed := any(zero).(Routed)
	catalog[t] = Descriptor{Type: t, Kind: kind, Summary: summary, Routed: routed, goType: reflect.TypeFor[P](), decode: func(data []byte) (Payload, error) {
		// Unknown fields are already refused by the schema, whose properties
		// TestEverySchemaMatchesItsGoType keeps equal to P's fields.
		var p P
		if err := json.Unmarshal(data, &p); err != nil {
			return nil, err
		}
		return p, nil
	}}
}

// Routed is implemented by payloads that must reach one particular
// consumer, such as the hookrunner instance holding a lock. Route returns a
// single NATS subject token.
type Routed interface {
	Route() string
}

var routeToken = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// SubjectOf returns the NATS subject an event is published on: its type's
// subject, plus the route token for routed types.
func SubjectOf(ev Event) (string, error) {
	d, err := ev.Descriptor()
	if err != nil {
		return "", err
	}
	r, ok := ev.Data.(Routed)
	if !ok {
		return d.Subject(), nil
	}
	if !routeToken.MatchString(r.Route()) {
		return "", invalid("%s: route %q must be letters, digits, _ or - (a service instance id)", d.Type, r.Route())
	}
	return d.Subject() + "." + r.Route(), nil
}

// Lookup returns the descriptor of a registered type.
func Lookup(t Type) (Descriptor, bool) {
	d, ok := catalog[t]
	return d, ok
}

// All returns every registered type, sorted by name.
func All() []Descriptor {
	out := make([]Descriptor, 0, len(catalog))
	for _, d := range catalog {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Type < out[j].Type })
	return out
}

// As returns the event's payload as P when it holds one.
func As[P Payload](ev Event) (P, bool) {
	p, ok := ev.Data.(P)
	return p, ok
}

// DecodePayload checks JSON against type t's schema and decodes it into t's
// Go payload. Errors are *DecodeError values naming the field.
func DecodePayload(t Type, data []byte) (Payload, error) {
	d, ok := Lookup(t)
	if !ok {
		return nil, &DecodeError{Problem: ProblemUnknownType, Attribute: "type", Detail: fmt.Sprintf("%q is not in the events catalogue", t)}
	}
	if err := ValidatePayload(t, data); err != nil {
		return nil, err
	}
	p, err := d.decode(data)
	if err != nil {
		return nil, &DecodeError{Problem: ProblemPayloadMismatch, Attribute: "data", Err: err}
	}
	return p, nil
}

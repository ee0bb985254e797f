// Package events is the catalogue of every event Tidemark's services
// exchange: typed payloads, their CloudEvents attributes, their JSON Schemas
// and the AsyncAPI document that describes them. It knows nothing of NATS;
// pkg/cenats maps events onto NATS messages.
package events

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
)

// Extension attribute names. CloudEvents extension names are lower-case
// letters and digits only.
const (
	// ExtCorrelationID carries the run (or request) an event belongs to, so
	// a run's whole history can be read back in order.
	ExtCorrelationID = "correlationid"
	// ExtCausationID carries the id of the event that caused this one.
	ExtCausationID = "causationid"
)

// DataContentType is the only content type Tidemark events use.
const DataContentType = "application/json"

// Event is one Tidemark event: CloudEvents attributes plus a typed payload.
type Event struct {
	ID     string
	Source string
	// Subject names what the event is about: an application for requests,
	// a run for step commands and results.
	Subject       string
	Time          time.Time
	CorrelationID string
	CausationID   string
	Data          Payload
}

// New returns an event with a fresh, time-ordered id.
func New(source, subject string, data Payload, now time.Time) Event {
	return Event{
		ID:      uuid.Must(uuid.NewV7()).String(),
		Source:  source,
		Subject: subject,
		Time:    now.UTC(),
		Data:    data,
	}
}

// Type is the CloudEvents type of the event's payload.
func (e Event) Type() Type {
	if e.Data == nil {
		return ""
	}
	return e.Data.EventType()
}

// Descriptor returns the registered descriptor of the event's type.
func (e Event) Descriptor() (Descriptor, error) {
	d, ok := Lookup(e.Type())
	if !ok {
		return Descriptor{}, invalid("type %q is not registered in the events catalogue", e.Type())
	}
	return d, nil
}

// CausedBy returns a copy of e that belongs to cause's run and names cause as
// its cause, unless e already says otherwise.
func (e Event) CausedBy(cause Event) Event {
	if e.CorrelationID == "" {
		e.CorrelationID = cause.CorrelationID
	}
	if e.CausationID == "" {
		e.CausationID = cause.ID
	}
	return e
}

// ToCloudEvent converts the event to an sdk-go event after checking it
// against its schema, so a producer bug is caught where it happens rather
// than in every consumer.
func (e Event) ToCloudEvent() (cloudevents.Event, error) {
	d, err := e.Descriptor()
	if err != nil {
		return cloudevents.Event{}, err
	}
	switch {
	case e.ID == "":
		return cloudevents.Event{}, invalid("%s: id is empty", d.Type)
	case e.Source == "":
		return cloudevents.Event{}, invalid("%s: source is empty", d.Type)
	case e.Time.IsZero():
		return cloudevents.Event{}, invalid("%s: time is zero", d.Type)
	}
	data, err := json.Marshal(e.Data)
	if err != nil {
		return cloudevents.Event{}, invalid("%s: payload does not marshal: %v", d.Type, err)
	}
	if err := ValidatePayload(d.Type, data); err != nil {
		return cloudevents.Event{}, fmt.Errorf("%w: %s: %v", ErrInvalidEvent, d.Type, err)
	}
	ce := cloudevents.New(cloudevents.CloudEventsVersionV1)
	ce.SetID(e.ID)
	ce.SetSource(e.Source)
	ce.SetType(string(d.Type))
	ce.SetTime(e.Time)
	if e.Subject != "" {
		ce.SetSubject(e.Subject)
	}
	if e.CorrelationID != "" {
		ce.SetExtension(ExtCorrelationID, e.CorrelationID)
	}
	if e.CausationID != "" {
		ce.SetExtension(ExtCausationID, e.CausationID)
	}
	ce.DataEncoded = data
	ce.SetDataContentType(DataContentType)
	if err := ce.Validate(); err != nil {
		return cloudevents.Event{}, invalid("%s: %v", d.Type, err)
	}
	return ce, nil
}

// FromCloudEvent strictly converts an sdk-go event: the type must be
// registered, the attributes present, the data JSON that satisfies the
// type's schema. Every failure is a *DecodeError.
func FromCloudEvent(ce cloudevents.Event) (Event, error) {
	if ce.SpecVersion() != cloudevents.CloudEventsVersionV1 {
		return Event{}, &DecodeError{Problem: ProblemSpecVersion, Attribute: "specversion", Detail: fmt.Sprintf("%q (Tidemark speaks CloudEvents 1.0)", ce.SpecVersion())}
	}
	for _, a := range []struct{ name, value string }{{"id", ce.ID()}, {"source", ce.Source()}, {"type", ce.Type()}} {
		if a.value == "" {
			return Event{}, &DecodeError{Problem: ProblemMissingAttribute, Attribute: a.name}
		}
	}
	if ce.Time().IsZero() {
		return Event{}, &DecodeError{Problem: ProblemMissingAttribute, Attribute: "time"}
	}
	t := Type(ce.Type())
	d, ok := Lookup(t)
	if !ok {
		return Event{}, &DecodeError{Problem: ProblemUnknownType, Attribute: "type", Detail: fmt.Sprintf("%q is not in the events catalogue", t)}
	}
	if ct := ce.DataContentType(); ct != "" && !strings.HasPrefix(ct, DataContentType) {
		return Event{}, &DecodeError{Problem: ProblemContentType, Attribute: "datacontenttype", Detail: fmt.Sprintf("%q (want %s)", ct, DataContentType)}
	}
	data := ce.Data()
	if len(data) == 0 {
		return Event{}, &DecodeError{Problem: ProblemMissingAttribute, Attribute: "data"}
	}
	payload, err := DecodePayload(d.Type, data)
	if err != nil {
		return Event{}, err
	}
	ev := Event{
		ID:      ce.ID(),
		Source:  ce.Source(),
		Subject: ce.Subject(),
		Time:    ce.Time(),
		Data:    payload,
	}
	ext := ce.Extensions()
	for _, x := range []struct {
		name string
		dst  *string
	}{{ExtCorrelationID, &ev.CorrelationID}, {ExtCausationID, &ev.CausationID}} {
		if v, ok := ext[x.name]; ok {
			s, ok := v.(string)
			if !ok {
				return Event{}, &DecodeError{Problem: ProblemInvalidAttribute, Attribute: x.name, Detail: fmt.Sprintf("want a string, got %T", v)}
			}
			*x.dst = s
		}
	}
	return ev, nil
}

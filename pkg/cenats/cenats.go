// Package cenats maps CloudEvents onto NATS messages in binary content mode:
// attributes as ce-* headers, datacontenttype as content-type, the data as
// the message body, and Nats-Msg-Id = ce-id so JetStream drops duplicates.
//
// It is built on cloudevents/sdk-go's binding package rather than the
// published NATS JetStream protocol binding, which acknowledges a message
// before the handler has run.
package cenats

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/format"
	"github.com/cloudevents/sdk-go/v2/binding/spec"
	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/nats-io/nats.go"

	"github.com/tidemark-dev/tidemark/events"
)

const (
	headerPrefix      = "ce-"
	headerContentType = "content-type"
	// HeaderSpecVersion is the binary-mode header of the specversion attribute.
	HeaderSpecVersion = headerPrefix + "specversion"
	// HeaderID is the binary-mode header of the id attribute.
	HeaderID = headerPrefix + "id"
	// HeaderType is the binary-mode header of the type attribute.
	HeaderType = headerPrefix + "type"
)

var specs = spec.WithPrefix(headerPrefix)

// Encode writes an sdk-go event onto a new NATS message for subject in
// binary mode.
func Encode(ctx context.Context, ce *cloudevents.Event, subject string) (*nats.Msg, error) {
	msg := nats.NewMsg(subject)
	w := (*messageWriter)(msg)
	if _, err := binding.Write(binding.WithForceBinary(ctx), (*binding.EventMessage)(ce), nil, w); err != nil {
		return nil, fmt.Errorf("encode %s as a binary-mode CloudEvent: %w", ce.Type(), err)
	}
	msg.Header.Set(nats.MsgIdHdr, ce.ID())
	return msg, nil
}

// EncodeEvent validates a Tidemark event and encodes it for its own subject.
func EncodeEvent(ctx context.Context, ev events.Event) (*nats.Msg, error) {
	subject, err := events.SubjectOf(ev)
	if err != nil {
		return nil, err
	}
	ce, err := ev.ToCloudEvent()
	if err != nil {
		return nil, err
	}
	return Encode(ctx, &ce, subject)
}

// Decode strictly reads a Tidemark event from a NATS message. Every failure
// is an *events.DecodeError that names the attribute or field at fault.
func Decode(ctx context.Context, msg *nats.Msg) (events.Event, error) {
	sv := header(msg, HeaderSpecVersion)
	if sv == "" {
		if isStructured(msg) {
			// Structured mode is accepted on input for interoperability.
			ce, err := binding.ToEvent(ctx, NewMessage(msg))
			if err != nil {
				return events.Event{}, &events.DecodeError{Problem: events.ProblemNotCloudEvent, Detail: "structured-mode body", Err: err}
			}
			return events.FromCloudEvent(*ce)
		}
		return events.Event{}, &events.DecodeError{Problem: events.ProblemMissingAttribute, Attribute: "specversion", Detail: "no " + HeaderSpecVersion + " header: not a binary-mode CloudEvent"}
	}
	if specs.Version(sv) == nil || sv != cloudevents.CloudEventsVersionV1 {
		return events.Event{}, &events.DecodeError{Problem: events.ProblemSpecVersion, Attribute: "specversion", Detail: fmt.Sprintf("%q (Tidemark speaks CloudEvents 1.0)", sv)}
	}
	ce, err := binding.ToEvent(ctx, NewMessage(msg))
	if err != nil {
		return events.Event{}, &events.DecodeError{Problem: events.ProblemInvalidAttribute, Detail: "reading ce-* headers", Err: err}
	}
	return events.FromCloudEvent(*ce)
}

// header reads a header case-insensitively; NATS headers keep the case they
// were written with, and other producers may capitalise them.
func header(msg *nats.Msg, name string) string {
	if v := msg.Header.Get(name); v != "" {
		return v
	}
	for k, v := range msg.Header {
		if strings.EqualFold(k, name) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

func isStructured(msg *nats.Msg) bool {
	return format.Lookup(header(msg, headerContentType)) != nil
}

// Message is a received NATS message seen as a binding.Message.
type Message struct {
	msg     *nats.Msg
	version spec.Version
}

var _ binding.Message = (*Message)(nil)

// NewMessage wraps msg.
func NewMessage(msg *nats.Msg) *Message {
	return &Message{msg: msg, version: specs.Version(header(msg, HeaderSpecVersion))}
}

// ReadEncoding implements binding.MessageReader.
func (m *Message) ReadEncoding() binding.Encoding {
	if m.version != nil {
		return binding.EncodingBinary
	}
	if isStructured(m.msg) {
		return binding.EncodingStructured
	}
	return binding.EncodingUnknown
}

// ReadStructured implements binding.MessageReader.
func (m *Message) ReadStructured(ctx context.Context, w binding.StructuredWriter) error {
	f := format.Lookup(header(m.msg, headerContentType))
	if m.version != nil || f == nil {
		return binding.ErrNotStructured
	}
	return w.SetStructuredEvent(ctx, f, bytes.NewReader(m.msg.Data))
}

// ReadBinary implements binding.MessageReader.
func (m *Message) ReadBinary(ctx context.Context, w binding.BinaryWriter) error {
	if m.version == nil {
		return binding.ErrNotBinary
	}
	if err := w.Start(ctx); err != nil {
		return err
	}
	for k, vs := range m.msg.Header {
		if len(vs) == 0 {
			continue
		}
		name := strings.ToLower(k)
		var err error
		switch {
		case name == headerContentType:
			err = w.SetAttribute(m.version.AttributeFromKind(spec.DataContentType), vs[0])
		case m.version.Attribute(name) != nil:
			err = w.SetAttribute(m.version.Attribute(name), vs[0])
		case strings.HasPrefix(name, headerPrefix):
			err = w.SetExtension(strings.TrimPrefix(name, headerPrefix), vs[0])
		}
		if err != nil {
			return fmt.Errorf("header %s: %w", k, err)
		}
	}
	if len(m.msg.Data) > 0 {
		if err := w.SetData(bytes.NewReader(m.msg.Data)); err != nil {
			return err
		}
	}
	return w.End(ctx)
}

// GetAttribute implements binding.MessageMetadataReader.
func (m *Message) GetAttribute(k spec.Kind) (spec.Attribute, interface{}) {
	if m.version == nil {
		return nil, nil
	}
	attr := m.version.AttributeFromKind(k)
	if attr == nil {
		return nil, nil
	}
	if k == spec.DataContentType {
		return attr, nilIfEmpty(header(m.msg, headerContentType))
	}
	return attr, nilIfEmpty(header(m.msg, attr.PrefixedName()))
}

// GetExtension implements binding.MessageMetadataReader.
func (m *Message) GetExtension(name string) interface{} {
	return nilIfEmpty(header(m.msg, headerPrefix+name))
}

func nilIfEmpty(s string) interface{} {
	if s == "" {
		return nil
	}
	return s
}

// Finish implements binding.Message; acknowledging is the bus's job, not
// the binding's, so this does nothing.
func (m *Message) Finish(error) error { return nil }

// messageWriter writes binary-mode attributes onto a NATS message.
type messageWriter nats.Msg

var _ binding.BinaryWriter = (*messageWriter)(nil)

func (w *messageWriter) Start(context.Context) error {
	if w.Header == nil {
		w.Header = nats.Header{}
	}
	return nil
}

func (w *messageWriter) End(context.Context) error { return nil }

func (w *messageWriter) SetData(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	w.Data = b
	return nil
}

func (w *messageWriter) SetAttribute(attr spec.Attribute, value interface{}) error {
	// attr may come from an unprefixed spec version (an in-memory event), so
	// the header name is built from the bare attribute name.
	name := headerPrefix + attr.Name()
	if attr.Kind() == spec.DataContentType {
		name = headerContentType
	}
	if value == nil {
		w.Header.Del(name)
		return nil
	}
	s, err := types.Format(value)
	if err != nil {
		return fmt.Errorf("attribute %s: %w", attr.Name(), err)
	}
	w.Header.Set(name, s)
	return nil
}

func (w *messageWriter) SetExtension(name string, value interface{}) error {
	if value == nil {
		w.Header.Del(headerPrefix + name)
		return nil
	}
	s, err := types.Format(value)
	if err != nil {
		return fmt.Errorf("extension %s: %w", name, err)
	}
	w.Header.Set(headerPrefix+name, s)
	return nil
}

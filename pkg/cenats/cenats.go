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
	return encode(ctx, ce, subject, false)
}

// encode writes ce onto a new message. With ownData the message takes
// ce's data as its body instead of a copy: only for an event nobody else
// holds.
func encode(ctx context.Context, ce *cloudevents.Event, subject string, ownData bool) (*nats.Msg, error) {
	msg := &nats.Msg{Subject: subject}
	w := &messageWriter{msg: msg, ownData: ownData}
	// Without a structured writer, binding.Write can only write binary mode:
	// no binding.WithForceBinary (two context allocations) is needed.
	if _, err := binding.Write(ctx, (*binding.EventMessage)(ce), nil, w); err != nil {
		return nil, fmt.Errorf("encode %s as a binary-mode CloudEvent: %w", ce.Type(), err)
	}
	w.set(nats.MsgIdHdr, ce.ID())
	return msg, nil
}

// EncodeEvent validates a Tidemark event and encodes it for its own subject.
func EncodeEvent(ctx context.Context, ev events.Event) (*nats.Msg, error) {
	subject, err := subjectOf(ev)
	if err != nil {
		return nil, err
	}
	if msg, ok := encodeDirect(ctx, &ev, subject); ok {
		return msg, nil
	}
	return encodeSDK(ctx, ev, subject)
}

// encodeSDK encodes ev through an sdk-go event: the reference path, and the
// one that reports what is wrong with an invalid event.
func encodeSDK(ctx context.Context, ev events.Event, subject string) (*nats.Msg, error) {
	ce, err := ev.ToCloudEvent()
	if err != nil {
		return nil, err
	}
	// ce and its freshly marshalled data are ours alone.
	return encode(ctx, &ce, subject, true)
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
	if ev, ok, err := decodeDirect(ctx, msg); ok {
		return ev, err
	}
	return decodeSDK(ctx, msg)
}

// decodeSDK decodes a binary-mode message through an sdk-go event: the
// reference path, and the one that names what is wrong with a bad message.
func decodeSDK(ctx context.Context, msg *nats.Msg) (events.Event, error) {
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
	if m.version != nil {
		return binding.ErrNotStructured
	}
	f := format.Lookup(header(m.msg, headerContentType))
	if f == nil {
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
		if len(vs) == 0 || !isAttributeHeader(k) {
			continue
		}
		name := strings.ToLower(k)
		var err error
		attr := m.version.Attribute(name)
		switch {
		case name == headerContentType:
			err = w.SetAttribute(m.version.AttributeFromKind(spec.DataContentType), vs[0])
		case attr != nil:
			err = w.SetAttribute(attr, vs[0])
		case strings.HasPrefix(name, headerPrefix):
			err = w.SetExtension(strings.TrimPrefix(name, headerPrefix), vs[0])
		}
		if err != nil {
			return fmt.Errorf("header %s: %w", k, err)
		}
	}
	if len(m.msg.Data) > 0 {
		// A *bytes.Buffer lets sdk-go's event builder take the body as it
		// is instead of copying it; the payload is decoded into fresh Go
		// values afterwards, so nothing keeps pointing into the message.
		if err := w.SetData(bytes.NewBuffer(m.msg.Data)); err != nil {
			return err
		}
	}
	return w.End(ctx)
}

// isAttributeHeader reports whether a header can carry a binary-mode
// attribute or extension (ce-*, content-type), in any case, so other
// headers (Nats-Msg-Id, traceparent) are skipped without lower-casing them.
func isAttributeHeader(k string) bool {
	return (len(k) >= len(headerPrefix) && strings.EqualFold(k[:len(headerPrefix)], headerPrefix)) ||
		strings.EqualFold(k, headerContentType)
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
type messageWriter struct {
	msg *nats.Msg
	// ownData lets the message take a *bytes.Buffer's bytes without a copy.
	ownData bool
	// values backs the headers' one-element value slices, so writing the
	// dozen headers of an event costs one allocation instead of twelve.
	values []string
}

var _ binding.BinaryWriter = (*messageWriter)(nil)

// headerCapacity fits the headers of a typical event: the attributes,
// both extensions, Nats-Msg-Id and the trace context. (A map sized for 16
// would take twice the memory.)
const headerCapacity = 12

func (w *messageWriter) Start(context.Context) error {
	if w.msg.Header == nil {
		w.msg.Header = make(nats.Header, headerCapacity)
	}
	return nil
}

func (w *messageWriter) End(context.Context) error { return nil }

// set is nats.Header.Set with the value slice carved from w.values.
func (w *messageWriter) set(name, value string) {
	if len(w.values) == cap(w.values) {
		w.values = make([]string, 0, headerCapacity)
	}
	w.values = append(w.values, value)
	n := len(w.values)
	w.msg.Header[name] = w.values[n-1 : n : n]
}

func (w *messageWriter) SetData(r io.Reader) error {
	switch b := r.(type) {
	case *bytes.Buffer:
		if w.ownData {
			w.msg.Data = b.Bytes()
		} else {
			w.msg.Data = bytes.Clone(b.Bytes())
		}
		return nil
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	w.msg.Data = b
	return nil
}

func (w *messageWriter) SetAttribute(attr spec.Attribute, value interface{}) error {
	// attr may come from an unprefixed spec version (an in-memory event), so
	// the header name is chosen by the attribute's kind.
	var name string
	if k := attr.Kind(); int(k) < len(headerByKind) {
		name = headerByKind[k]
	}
	if name == "" {
		name = headerPrefix + attr.Name()
	}
	if value == nil {
		w.msg.Header.Del(name)
		return nil
	}
	s, err := types.Format(value)
	if err != nil {
		return fmt.Errorf("attribute %s: %w", attr.Name(), err)
	}
	w.set(name, s)
	return nil
}

func (w *messageWriter) SetExtension(name string, value interface{}) error {
	if value == nil {
		w.msg.Header.Del(extensionHeader(name))
		return nil
	}
	s, err := types.Format(value)
	if err != nil {
		return fmt.Errorf("extension %s: %w", name, err)
	}
	w.set(extensionHeader(name), s)
	return nil
}

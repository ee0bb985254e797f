package cenats

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/spec"
	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/nats-io/nats.go"

	"github.com/tidemark-dev/tidemark/events"
)

// The direct paths encode a Tidemark event onto a NATS message, and decode
// one, through sdk-go's binding package (binding.Write and
// binding.DirectWrite, with a binding.MessageReader and a
// binding.BinaryWriter of our own, as sdk-go's protocol bindings are built)
// without materialising an sdk-go event.Event in between: building one, and
// converting it, cost more than the rest of encoding and decoding together.
//
// Each direct path takes only the events it can prove the event.Event path
// would handle in exactly the same way, and hands everything else to that
// path (events.Event.ToCloudEvent and Encode; binding.ToEvent and
// events.FromCloudEvent), so every error is still that path's own.
// direct_test.go holds the two paths to the same headers, bodies, events and
// errors, and FuzzDirectDecodeMatchesSDK fuzzes them against each other.

var (
	v1 = specs.Version(cloudevents.CloudEventsVersionV1)

	attrSpecVersion     = v1.AttributeFromKind(spec.SpecVersion)
	attrID              = v1.AttributeFromKind(spec.ID)
	attrSource          = v1.AttributeFromKind(spec.Source)
	attrType            = v1.AttributeFromKind(spec.Type)
	attrDataContentType = v1.AttributeFromKind(spec.DataContentType)
	attrSubject         = v1.AttributeFromKind(spec.Subject)
	attrTime            = v1.AttributeFromKind(spec.Time)
)

// headerByKind names the header of each attribute, so writing one does not
// build its name again.
var headerByKind = [...]string{
	spec.ID:              headerPrefix + "id",
	spec.Source:          headerPrefix + "source",
	spec.SpecVersion:     HeaderSpecVersion,
	spec.Type:            HeaderType,
	spec.DataContentType: headerContentType,
	spec.DataSchema:      headerPrefix + "dataschema",
	spec.Subject:         headerPrefix + "subject",
	spec.Time:            headerPrefix + "time",
}

var (
	headerCorrelationID = headerPrefix + events.ExtCorrelationID
	headerCausationID   = headerPrefix + events.ExtCausationID
)

func extensionHeader(name string) string {
	switch name {
	case events.ExtCorrelationID:
		return headerCorrelationID
	case events.ExtCausationID:
		return headerCausationID
	}
	return headerPrefix + name
}

// uriRef is a source as sdk-go reads it: url.Parse, then written back with
// URL.String(), which is the attribute's value from then on.
type uriRef struct {
	text string
	ok   bool
}

var (
	sourceCache     sync.Map // string -> uriRef
	sourceCacheSize atomic.Int64
)

// maxCachedSources bounds the cache: a process publishes from a handful of
// sources, but a consumer must not grow it without end on foreign input.
const maxCachedSources = 1024

func parseSource(s string) uriRef {
	if r, ok := sourceCache.Load(s); ok {
		return r.(uriRef)
	}
	var r uriRef
	if u, err := url.Parse(s); err == nil {
		ref := types.URIRef{URL: *u}
		r = uriRef{text: ref.String(), ok: true}
	}
	if sourceCacheSize.Add(1) <= maxCachedSources {
		sourceCache.Store(s, r)
	}
	return r
}

// trimmed reports whether s is non-empty and has no surrounding white
// space, which sdk-go's setters would strip.
func trimmed(s string) bool {
	return s != "" && strings.TrimSpace(s) == s
}

// eventMessage is a Tidemark event as a binary-mode binding.Message,
// holding the attribute values exactly as sdk-go would write them.
type eventMessage struct {
	ev     *events.Event
	typ    string
	source string
	time   string
	data   []byte
}

var (
	_ binding.Message               = (*eventMessage)(nil)
	_ binding.MessageMetadataReader = (*eventMessage)(nil)
)

// directEncodable prepares ev for the direct path, or reports false when
// only ToCloudEvent can say what becomes of it: an attribute sdk-go would
// trim, reject or rewrite, or a payload that does not marshal or validate.
func directEncodable(ev *events.Event) (*eventMessage, bool) {
	d, err := ev.Descriptor()
	if err != nil || !trimmed(ev.ID) || ev.Source == "" || ev.Time.IsZero() {
		return nil, false
	}
	if ev.Subject != "" && !trimmed(ev.Subject) {
		return nil, false
	}
	src := parseSource(ev.Source)
	if !src.ok || strings.TrimSpace(src.text) == "" {
		return nil, false
	}
	data, err := json.Marshal(ev.Data)
	if err != nil {
		return nil, false
	}
	if events.ValidatePayload(d.Type, data) != nil {
		return nil, false
	}
	return &eventMessage{ev: ev, typ: string(d.Type), source: src.text, time: types.FormatTime(ev.Time), data: data}, true
}

func (m *eventMessage) ReadEncoding() binding.Encoding { return binding.EncodingBinary }

func (m *eventMessage) ReadStructured(context.Context, binding.StructuredWriter) error {
	return binding.ErrNotStructured
}

// ReadBinary writes what sdk-go's event message would for the event
// ToCloudEvent builds: the set attributes, both extensions when set, and the
// data. (Constants and the type name are passed as values boxed once: each
// string boxed on the way costs an allocation.)
func (m *eventMessage) ReadBinary(ctx context.Context, w binding.BinaryWriter) error {
	set := func(attr spec.Attribute, value string) error {
		if value == "" {
			return nil
		}
		return w.SetAttribute(attr, value)
	}
	if err := w.SetAttribute(attrSpecVersion, cloudevents.CloudEventsVersionV1); err != nil {
		return err
	}
	if err := set(attrID, m.ev.ID); err != nil {
		return err
	}
	if err := set(attrSource, m.source); err != nil {
		return err
	}
	if err := w.SetAttribute(attrType, boxedTypes()[events.Type(m.typ)]); err != nil {
		return err
	}
	if err := w.SetAttribute(attrDataContentType, events.DataContentType); err != nil {
		return err
	}
	if err := set(attrSubject, m.ev.Subject); err != nil {
		return err
	}
	if err := set(attrTime, m.time); err != nil {
		return err
	}
	if v := m.ev.CorrelationID; v != "" {
		if err := w.SetExtension(events.ExtCorrelationID, v); err != nil {
			return err
		}
	}
	if v := m.ev.CausationID; v != "" {
		if err := w.SetExtension(events.ExtCausationID, v); err != nil {
			return err
		}
	}
	return w.SetData(bytes.NewBuffer(m.data))
}

// boxedTypes holds every registered type name as an interface value.
var boxedTypes = sync.OnceValue(func() map[events.Type]any {
	m := map[events.Type]any{}
	for _, d := range events.All() {
		m[d.Type] = string(d.Type)
	}
	return m
})

// subjects holds the subject of every type that is not routed, so
// encoding does not build it again for every event.
var subjects = sync.OnceValue(func() map[events.Type]string {
	m := map[events.Type]string{}
	for _, d := range events.All() {
		if !d.Routed {
			m[d.Type] = d.Subject()
		}
	}
	return m
})

// subjectOf is events.SubjectOf without rebuilding a fixed subject.
func subjectOf(ev events.Event) (string, error) {
	if _, routed := ev.Data.(events.Routed); !routed {
		if s, ok := subjects()[ev.Type()]; ok {
			return s, nil
		}
	}
	return events.SubjectOf(ev)
}

// GetAttribute implements binding.MessageMetadataReader.
func (m *eventMessage) GetAttribute(k spec.Kind) (spec.Attribute, interface{}) {
	attr := v1.AttributeFromKind(k)
	var v string
	switch k {
	case spec.SpecVersion:
		v = cloudevents.CloudEventsVersionV1
	case spec.ID:
		v = m.ev.ID
	case spec.Source:
		v = m.source
	case spec.Type:
		v = m.typ
	case spec.DataContentType:
		v = events.DataContentType
	case spec.Subject:
		v = m.ev.Subject
	case spec.Time:
		v = m.time
	}
	return attr, nilIfEmpty(v)
}

// GetExtension implements binding.MessageMetadataReader.
func (m *eventMessage) GetExtension(name string) interface{} {
	switch name {
	case events.ExtCorrelationID:
		return nilIfEmpty(m.ev.CorrelationID)
	case events.ExtCausationID:
		return nilIfEmpty(m.ev.CausationID)
	}
	return nil
}

func (m *eventMessage) Finish(error) error { return nil }

// encodeDirect encodes ev for subject when directEncodable allows it.
func encodeDirect(ctx context.Context, ev *events.Event, subject string) (*nats.Msg, bool) {
	m, ok := directEncodable(ev)
	if !ok {
		return nil, false
	}
	msg := &nats.Msg{Subject: subject}
	w := &messageWriter{msg: msg, ownData: true}
	if _, err := binding.Write(ctx, m, nil, w); err != nil {
		return nil, false // the sdk-go path says what is wrong
	}
	w.set(nats.MsgIdHdr, ev.ID)
	return msg, true
}

// eventBuilder collects a binary-mode message's attributes into a Tidemark
// event. It gives up (declined) on anything the sdk-go path would trim,
// rewrite or refuse, or that would reach events.FromCloudEvent's checks.
type eventBuilder struct {
	ev       events.Event
	typ      string
	data     []byte
	set      uint16 // attribute kinds and extensions seen
	declined bool
}

var _ binding.BinaryWriter = (*eventBuilder)(nil)

const (
	setCorrelationID = 1 << (iota + 8)
	setCausationID
)

func (b *eventBuilder) Start(context.Context) error { return nil }
func (b *eventBuilder) End(context.Context) error   { return nil }

func (b *eventBuilder) once(bit uint16) bool {
	if b.set&bit != 0 {
		b.declined = true // the same attribute twice, in two spellings
		return false
	}
	b.set |= bit
	return true
}

func (b *eventBuilder) SetAttribute(attr spec.Attribute, value interface{}) error {
	s, ok := value.(string)
	if !ok || s == "" || !b.once(uint16(1)<<attr.Kind()) {
		b.declined = true
		return nil
	}
	switch attr.Kind() {
	case spec.SpecVersion:
		b.declined = b.declined || s != cloudevents.CloudEventsVersionV1
	case spec.ID:
		b.declined = b.declined || !trimmed(s)
		b.ev.ID = s
	case spec.Source:
		src := parseSource(s)
		b.declined = b.declined || !src.ok || src.text == ""
		b.ev.Source = src.text
	case spec.Type:
		b.declined = b.declined || !trimmed(s)
		b.typ = s
	case spec.DataContentType:
		b.declined = b.declined || s != events.DataContentType
	case spec.Subject:
		b.declined = b.declined || !trimmed(s)
		b.ev.Subject = s
	case spec.Time:
		t, err := types.ParseTime(s)
		b.declined = b.declined || err != nil || t.IsZero()
		b.ev.Time = t
	default:
		b.declined = true
	}
	return nil
}

func (b *eventBuilder) SetExtension(name string, value interface{}) error {
	s, ok := value.(string)
	if !ok || s == "" {
		b.declined = true
		return nil
	}
	switch name {
	case events.ExtCorrelationID:
		if b.once(setCorrelationID) {
			b.ev.CorrelationID = s
		}
	case events.ExtCausationID:
		if b.once(setCausationID) {
			b.ev.CausationID = s
		}
	default:
		b.declined = true
	}
	return nil
}

func (b *eventBuilder) SetData(r io.Reader) error {
	buf, ok := r.(*bytes.Buffer)
	if !ok {
		b.declined = true
		return nil
	}
	b.data = buf.Bytes()
	return nil
}

const requiredAttributes = uint16(1)<<spec.SpecVersion | 1<<spec.ID | 1<<spec.Source | 1<<spec.Type | 1<<spec.Time

// decodeDirect decodes a binary-mode message whose specversion header is
// 1.0. It reports false when the message must take the sdk-go path.
func decodeDirect(ctx context.Context, msg *nats.Msg) (events.Event, bool, error) {
	var b eventBuilder
	if _, err := binding.DirectWrite(ctx, &Message{msg: msg, version: v1}, nil, &b); err != nil {
		return events.Event{}, false, nil
	}
	if b.declined || b.set&requiredAttributes != requiredAttributes || len(b.data) == 0 {
		return events.Event{}, false, nil
	}
	d, ok := events.Lookup(events.Type(b.typ))
	if !ok {
		return events.Event{}, false, nil
	}
	payload, err := events.DecodePayload(d.Type, b.data)
	if err != nil {
		return events.Event{}, true, err
	}
	b.ev.Data = payload
	return b.ev, true, nil
}

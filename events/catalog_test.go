package events

import (
	"encoding/json"
	"io/fs"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

type schemaDoc struct {
	ID                   string                     `json:"$id"`
	Schema               string                     `json:"$schema"`
	Type                 string                     `json:"type"`
	Title                string                     `json:"title"`
	Properties           map[string]json.RawMessage `json:"properties"`
	Required             []string                   `json:"required"`
	AdditionalProperties *bool                      `json:"additionalProperties"`
	Examples             []json.RawMessage          `json:"examples"`
}

// jsonFields returns the JSON names of a struct's fields and which of them
// are required (no omitempty).
func jsonFields(t reflect.Type) (all, required []string) {
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		all = append(all, name)
		if !strings.Contains(opts, "omitempty") {
			required = append(required, name)
		}
	}
	sort.Strings(all)
	sort.Strings(required)
	return all, required
}

func readSchemaDoc(t *testing.T, typ Type) schemaDoc {
	t.Helper()
	raw, err := SchemaJSON(typ)
	if err != nil {
		t.Fatalf("%s has no JSON Schema: add events/schemas/%s (%v)", typ, SchemaFile(typ), err)
	}
	var doc schemaDoc
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("schemas/%s: %v", SchemaFile(typ), err)
	}
	return doc
}

// TestEverySchemaMatchesItsGoType keeps the Go payloads and their JSON
// Schemas in step: same properties, same required set, closed objects, and
// at least one example that validates and decodes into the Go type without
// losing a field.
func TestEverySchemaMatchesItsGoType(t *testing.T) {
	for _, d := range All() {
		t.Run(string(d.Type), func(t *testing.T) {
			doc := readSchemaDoc(t, d.Type)
			if doc.ID != SchemaBaseURL+SchemaFile(d.Type) {
				t.Errorf("$id = %q, want %q", doc.ID, SchemaBaseURL+SchemaFile(d.Type))
			}
			if doc.Type != "object" || doc.AdditionalProperties == nil || *doc.AdditionalProperties {
				t.Errorf("schema must be a closed object (type: object, additionalProperties: false)")
			}
			goAll, goRequired := jsonFields(d.goType)
			var schemaAll []string
			for k := range doc.Properties {
				schemaAll = append(schemaAll, k)
			}
			sort.Strings(schemaAll)
			req := slices.Clone(doc.Required)
			sort.Strings(req)
			if !slices.Equal(goAll, schemaAll) {
				t.Errorf("properties differ:\n  Go struct %s: %v\n  schema:      %v", d.goType, goAll, schemaAll)
			}
			if !slices.Equal(goRequired, req) {
				t.Errorf("required differs:\n  Go (fields without omitempty): %v\n  schema: %v", goRequired, req)
			}
			if len(doc.Examples) == 0 {
				t.Fatalf("schema has no examples")
			}
			for i, ex := range doc.Examples {
				if err := ValidatePayload(d.Type, ex); err != nil {
					t.Errorf("example %d does not validate: %v", i, err)
					continue
				}
				p, err := d.decode(ex)
				if err != nil {
					t.Errorf("example %d does not decode strictly into %s: %v", i, d.goType, err)
					continue
				}
				back, _ := json.Marshal(p)
				if !jsonEqual(t, ex, back) {
					t.Errorf("example %d changes in a Go round trip:\n  example: %s\n  Go:      %s", i, ex, back)
				}
			}
		})
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(x, y)
}

func TestNoSchemaWithoutAType(t *testing.T) {
	entries, err := fs.ReadDir(schemaFiles, "schemas")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		name := strings.TrimSuffix(e.Name(), ".json")
		if name == "common" {
			continue
		}
		if _, ok := Lookup(Type(name)); !ok {
			t.Errorf("schemas/%s describes no registered event type; remove it or register the type", e.Name())
		}
	}
}

type asyncAPIDoc struct {
	AsyncAPI string `json:"asyncapi"`
	Channels map[string]struct {
		Address  string                     `json:"address"`
		Messages map[string]json.RawMessage `json:"messages"`
	} `json:"channels"`
	Operations map[string]struct {
		Action  string          `json:"action"`
		Channel json.RawMessage `json:"channel"`
	} `json:"operations"`
	Components struct {
		Messages map[string]struct {
			Name        string `json:"name"`
			ContentType string `json:"contentType"`
			Payload     struct {
				Ref string `json:"$ref"`
			} `json:"payload"`
		} `json:"messages"`
	} `json:"components"`
}

// TestAsyncAPIDescribesEveryType fails when a registered type has no message,
// channel and operation in events/asyncapi.yaml, or when the document names
// a type that no longer exists.
func TestAsyncAPIDescribesEveryType(t *testing.T) {
	var doc asyncAPIDoc
	// Only the shape read here is checked; AsyncAPI allows much more.
	if err := yaml.Unmarshal(AsyncAPI(), &doc); err != nil {
		t.Fatalf("asyncapi.yaml: %v", err)
	}
	if doc.AsyncAPI != "3.0.0" {
		t.Fatalf("asyncapi = %q, want 3.0.0", doc.AsyncAPI)
	}
	messageKeyByType := map[Type]string{}
	for key, m := range doc.Components.Messages {
		typ := Type(m.Name)
		if _, ok := Lookup(typ); !ok {
			t.Errorf("asyncapi message %q names %q, which is not a registered type", key, m.Name)
			continue
		}
		messageKeyByType[typ] = key
		if want := "./schemas/" + SchemaFile(typ); m.Payload.Ref != want {
			t.Errorf("message %s payload $ref = %q, want %q", key, m.Payload.Ref, want)
		}
		if m.ContentType != DataContentType {
			t.Errorf("message %s contentType = %q, want %s", key, m.ContentType, DataContentType)
		}
	}
	channelByAddress := map[string]string{}
	for key, ch := range doc.Channels {
		channelByAddress[ch.Address] = key
	}
	for _, d := range All() {
		key, ok := messageKeyByType[d.Type]
		if !ok {
			t.Errorf("%s has no message in asyncapi.yaml components.messages", d.Type)
			continue
		}
		address := d.Subject()
		if d.Routed {
			address = d.Subject() + ".{holder}"
		}
		chKey, ok := channelByAddress[address]
		if !ok {
			t.Errorf("%s: no channel with address %s", d.Type, address)
			continue
		}
		ref, ok := doc.Channels[chKey].Messages[key]
		if !ok || !strings.Contains(string(ref), "#/components/messages/"+key) {
			t.Errorf("channel %s does not reference message %s", chKey, key)
		}
		found := false
		for _, op := range doc.Operations {
			if strings.Contains(string(op.Channel), "#/channels/"+chKey+`"`) {
				found = true
			}
		}
		if !found {
			t.Errorf("channel %s (%s) has no operation", chKey, d.Type)
		}
	}
}

func TestDurationNeedsAUnit(t *testing.T) {
	for _, bad := range []string{`"60"`, `"0"`, `60`, `""`, `"5 minutes"`} {
		var d Duration
		if err := json.Unmarshal([]byte(bad), &d); err == nil {
			t.Errorf("%s decoded to %s; a duration without a unit must be refused", bad, d)
		} else if !strings.Contains(err.Error(), "unit") && !strings.Contains(err.Error(), "invalid") {
			t.Errorf("%s: error %q does not tell the user to add a unit", bad, err)
		}
	}
	var d Duration
	if err := json.Unmarshal([]byte(`"1m30s"`), &d); err != nil || d.Std() != 90*time.Second {
		t.Fatalf("1m30s decoded to %v, %v", d, err)
	}
}

func TestEncodeRejectsAnInvalidPayloadNamingTheField(t *testing.T) {
	ev := New("tidemark/test", "shop/postgres", BackupRequested{Application: ""}, time.Now())
	_, err := ev.ToCloudEvent()
	if err == nil || !strings.Contains(err.Error(), "/application") {
		t.Fatalf("ToCloudEvent with an empty application = %v, want an error naming /application", err)
	}
}

func TestPatternViolationsAreExplainedInWords(t *testing.T) {
	err := ValidatePayload(BackupRequested{}.EventType(), []byte(`{"application":"shop/pg","maxFreeze":"60"}`))
	if err == nil || !strings.Contains(err.Error(), "/maxFreeze") || !strings.Contains(err.Error(), "a duration with a unit") {
		t.Fatalf("err = %v, want it to name /maxFreeze and ask for a unit", err)
	}
}

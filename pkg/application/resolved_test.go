package application

import "testing"

func TestEmbeddedBlueprintRoundTrip(t *testing.T) {
	src := []byte("apiVersion: tidemark.io/v1alpha1\nkind: Blueprint\nmetadata: {name: pg}\n")
	name, got, ok := EmbeddedBlueprint(EmbedBlueprint("Blueprint shop/pg", src))
	if !ok || name != "Blueprint shop/pg" || string(got) != string(src) {
		t.Fatalf("EmbeddedBlueprint = %q, %q, %v", name, got, ok)
	}
	// Names of files and bundled blueprints are never taken for one.
	for _, ref := range []string{"", "postgres", "/etc/tidemark/pg.yaml", "pg.yaml", "embedded-blueprint"} {
		if _, _, ok := EmbeddedBlueprint(ref); ok {
			t.Errorf("EmbeddedBlueprint(%q) claims to be embedded", ref)
		}
	}
}

package kopiacli

import (
	"strings"
	"testing"

	"github.com/tidemark-dev/tidemark/tests/toolbuild"
)

// The binary is kopia, of the version go.mod requires.
func TestVersion(t *testing.T) {
	want, err := toolbuild.ModuleVersion(Module)
	if err != nil {
		t.Fatal(err)
	}
	c := New(t)
	if out := c.Run(t, "--version"); !strings.HasPrefix(out, strings.TrimPrefix(want, "v")+" ") && !strings.HasPrefix(out, want+" ") {
		t.Errorf("kopia --version = %q, want %s", out, want)
	}
}

// Package blueprints embeds Tidemark's bundled blueprints, so the binary
// carries them: FS holds <name>/blueprint.yaml for each one. They are
// checked by pkg/blueprint's tests (lint clean, every step renders).
package blueprints

import "embed"

// FS holds every bundled blueprint as <name>/blueprint.yaml.
//
//go:embed */blueprint.yaml
var FS embed.FS

// Package blueprints embeds Tidemark's bundled blueprints, so the binary
// carries them: FS holds <name>/blueprint.yaml for each one. They are
// checked by pkg/blueprint's tests (lint clean, every step renders).
package blueprints

import "embed"

// FS holds every bundled blueprint as <name>/blueprint.yaml.
//
//go:embed */blueprint.yaml
var FS embed.FS

// Kubernetes holds the bundled blueprints that use the Kubernetes
// platform's step kinds (apply, scale), as <name>/blueprint.kube.yaml.
// Those kinds exist only where pkg/platform/kube is linked (it registers
// them), so these blueprints are kept out of FS, which every platform
// loads; pkg/platform/kube's tests lint and run them.
//
//go:embed */blueprint.kube.yaml
var Kubernetes embed.FS

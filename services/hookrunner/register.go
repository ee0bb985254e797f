package hookrunner

import (
	"errors"

	"github.com/tidemark-dev/tidemark/pkg/application"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/pkg/platform/local"
	"github.com/tidemark-dev/tidemark/pkg/service"
)

func init() {
	service.Register(Name, func(d service.Deps) (service.Service, error) {
		cfg := Config{
			InstanceID: d.InstanceID,
			Apps:       application.Dir(d.AppsDir),
			Exec:       &local.Executor{},
			Logger:     d.Logger.With("service", Name),
		}
		if d.OnKube() {
			if d.Kube == nil {
				return nil, errors.New("--platform kube without a Kubernetes platform")
			}
			OnKube(&cfg, d.Kube)
		}
		return New(cfg, d.Bus)
	})
}

// OnKube makes cfg run steps on Kubernetes, as `serve --platform kube`
// does: exec through pods/exec (a target is namespace/pod, or a pod of
// the application's namespace, kube.AppName), scale and apply through the
// platform, and sql/http connections, secrets and params from the
// application's annotations (kube.AppSettings) instead of Application
// files.
func OnKube(cfg *Config, p *kube.Platform) {
	cfg.Exec = &kube.Executor{Platform: p}
	cfg.Steps = p
	cfg.Namespace = kube.AppNamespace
	cfg.Apps = &kube.AppSettings{Platform: p}
}

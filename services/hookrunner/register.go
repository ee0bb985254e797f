package hookrunner

import (
	"errors"

	"github.com/tidemark-dev/tidemark/pkg/application"
	"github.com/tidemark-dev/tidemark/pkg/platform"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/pkg/platform/local"
	"github.com/tidemark-dev/tidemark/pkg/service"
)

func init() {
	service.Register(Name, func(d service.Deps) (service.Service, error) {
		var exec platform.Executor = &local.Executor{}
		if d.OnKube() {
			if d.Kube == nil {
				return nil, errors.New("--platform kube without a Kubernetes platform")
			}
			// pods/exec; an exec step's target is namespace/pod.
			exec = &kube.Executor{Platform: d.Kube}
		}
		return New(Config{
			InstanceID: d.InstanceID,
			Apps:       application.Dir(d.AppsDir),
			Exec:       exec,
			Logger:     d.Logger.With("service", Name),
		}, d.Bus)
	})
}

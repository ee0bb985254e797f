package coordinator

import (
	"errors"

	"github.com/tidemark-dev/tidemark/pkg/application"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/pkg/service"
)

func init() {
	service.Register(Name, func(d service.Deps) (service.Service, error) {
		log := d.Logger.With("service", Name)
		var apps application.Source = application.Dir(d.AppsDir)
		if d.OnKube() {
			if d.Kube == nil {
				return nil, errors.New("--platform kube without a Kubernetes platform")
			}
			// Applications are named NAMESPACE[/[KIND/]NAME] or
			// NAMESPACE:SELECTOR and found in the cluster; blueprints by
			// their annotation; restores go into PVCs and namespaces
			// (docs/kubernetes.md).
			k := &kubeApps{Applications: &kube.Applications{Platform: d.Kube, BlueprintNamespace: kube.DefaultBlueprintNamespace()}}
			// Every backup captures the application's objects
			// (captureManifests).
			apps = k
		}
		return New(Config{
			InstanceID:     d.InstanceID,
			Apps:           apps,
			BlueprintDir:   d.AppsDir,
			Logger:         log,
			AnswerGrace:    d.Coordinator.AnswerGrace,
			InverseTimeout: d.Coordinator.InverseTimeout,
			ExportTimeout:  d.Coordinator.ExportTimeout,
		}, d.Bus)
	})
}

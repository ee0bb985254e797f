package coordinator

import (
	"github.com/tidemark-dev/tidemark/pkg/application"
	"github.com/tidemark-dev/tidemark/pkg/service"
)

func init() {
	service.Register(Name, func(d service.Deps) (service.Service, error) {
		return New(Config{
			InstanceID:     d.InstanceID,
			Apps:           application.Dir(d.AppsDir),
			BlueprintDir:   d.AppsDir,
			Logger:         d.Logger.With("service", Name),
			AnswerGrace:    d.Coordinator.AnswerGrace,
			InverseTimeout: d.Coordinator.InverseTimeout,
			ExportTimeout:  d.Coordinator.ExportTimeout,
		}, d.Bus)
	})
}

package catalog

import "github.com/tidemark-dev/tidemark/pkg/service"

func init() {
	service.Register(Name, func(d service.Deps) (service.Service, error) {
		return New(Config{Logger: d.Logger.With("service", Name)}, d.Bus)
	})
}

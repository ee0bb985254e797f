package snapshotter

import (
	"path/filepath"

	"github.com/tidemark-dev/tidemark/pkg/platform/local"
	"github.com/tidemark-dev/tidemark/pkg/service"
)

func init() {
	service.Register(Name, func(d service.Deps) (service.Service, error) {
		log := d.Logger.With("service", Name)
		// --data-dir may be relative; snapshot paths travel to other
		// services, so they must not depend on this process's directory.
		root, err := filepath.Abs(filepath.Join(d.DataDir, "snapshots"))
		if err != nil {
			return nil, err
		}
		snap, err := local.NewSnapshotter(root, log)
		if err != nil {
			return nil, err
		}
		return New(Config{Snapshotter: snap, Logger: log, MaxAge: d.SnapshotMaxAge}, d.Bus)
	})
}

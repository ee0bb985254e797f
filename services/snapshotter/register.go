package snapshotter

import (
	"errors"
	"path/filepath"

	"github.com/tidemark-dev/tidemark/pkg/platform"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/pkg/platform/local"
	"github.com/tidemark-dev/tidemark/pkg/service"
)

func init() {
	service.Register(Name, func(d service.Deps) (service.Service, error) {
		log := d.Logger.With("service", Name)
		var snap platform.Snapshotter
		if d.OnKube() {
			if d.Kube == nil {
				return nil, errors.New("--platform kube without a Kubernetes platform")
			}
			// CSI VolumeSnapshots; volume sources are namespace/pvc.
			snap = &kube.Snapshotter{Platform: d.Kube}
		} else {
			// --data-dir may be relative; snapshot paths travel to other
			// services, so they must not depend on this process's directory.
			root, err := filepath.Abs(filepath.Join(d.DataDir, "snapshots"))
			if err != nil {
				return nil, err
			}
			if snap, err = local.NewSnapshotter(root, log); err != nil {
				return nil, err
			}
		}
		return New(Config{Snapshotter: snap, Logger: log, MaxAge: d.SnapshotMaxAge}, d.Bus)
	})
}

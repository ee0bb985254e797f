package coordinator

import (
	"github.com/tidemark-dev/tidemark/pkg/application"
)

// resolvedAppInfo is appInfo for an application a platform found itself
// (Kubernetes): what it found is fixed with the run, its template context
// included.
func resolvedAppInfo(app *application.Application, params map[string]string) (AppInfo, error) {
	res := app.Resolved
	pc := res.Context
	return AppInfo{
		Name:      app.Metadata.Name,
		Namespace: res.Namespace,
		Volumes:   res.Volumes,
		Params:    params,
		Targets:   res.Targets,
		Platform:  &pc,
	}, nil
}

// platformContext returns the platform's part of the template context (none
// on the local platform) and the run's parameters.
func (a AppInfo) platformContext() (application.PlatformContext, map[string]string) {
	if a.Platform == nil {
		return application.PlatformContext{}, a.Params
	}
	return *a.Platform, a.Params
}

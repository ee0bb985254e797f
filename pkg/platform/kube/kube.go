// Package kube is Tidemark's Kubernetes platform: applications found in the
// API (a namespace and label selector, or a custom resource), blueprints
// bound by annotation, the template context blueprints see there, the scale
// and apply step kinds, pod exec, CSI volume snapshots, manifest capture
// and restore, and the mover pods that move each volume.
//
// Services never import this package's Kubernetes types: they see the
// interfaces of package platform. The kinds scale and apply register
// themselves with package blueprint when this package is linked in.
//
// Tests run against a real kube-apiserver (tests/kube, `make test-kube`);
// what needs a kubelet (exec, mover pods actually running) is covered by
// the real-cluster tests.
package kube

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// Annotations and labels Tidemark reads and writes.
const (
	// AnnotationBlueprint binds a workload or custom resource to a blueprint by name.
	AnnotationBlueprint = "tidemark.io/blueprint"
	// AnnotationKanisterBlueprint is Kanister's binding annotation, honoured too.
	AnnotationKanisterBlueprint = "kanister.kasten.io/blueprint"
	// AnnotationSnapshotClass on a PVC overrides the VolumeSnapshotClass chosen by its CSI driver.
	AnnotationSnapshotClass = "tidemark.io/volume-snapshot-class"
	// LabelRunID marks every object Tidemark creates for a run (snapshots,
	// mover pods, restore PVCs), so a crash sweep can find them.
	LabelRunID = "tidemark.io/run-id"
	// LabelVolume names the application volume a snapshot or mover is for.
	LabelVolume = "tidemark.io/volume"
	// LabelManagedBy is set to ManagedBy on every object Tidemark creates.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "tidemark"
	// FieldManager is the server-side apply field manager of the apply step and restores.
	FieldManager = "tidemark"
)

// DefaultPollInterval is how often waits re-read the objects they wait on.
const DefaultPollInterval = 250 * time.Millisecond

// Errors of this package; each is wrapped with the object it is about.
var (
	// ErrNotFound: an object the request names does not exist.
	ErrNotFound = errors.New("not found")
	// ErrInvalidSpec: a step's spec cannot be carried out as written.
	ErrInvalidSpec = errors.New("invalid spec")
	// ErrTimeout: a wait did not see its condition before its deadline.
	ErrTimeout = errors.New("timed out")
	// ErrConditionFailed: a wait saw its failure condition (an operator
	// reported that its backup failed).
	ErrConditionFailed = errors.New("failure condition met")
	// ErrNoSnapshotClass: no VolumeSnapshotClass exists for a PVC's CSI
	// driver, so the volume cannot be snapshotted; it must be backed up
	// live while the application stays quiesced.
	ErrNoSnapshotClass = errors.New("no VolumeSnapshotClass for the volume's CSI driver")
	// ErrSnapshotFailed: the CSI driver reported an error for a snapshot.
	ErrSnapshotFailed = errors.New("snapshot failed")
)

// Clients are the API clients the platform uses, made once from a rest.Config.
type Clients struct {
	Config    *rest.Config
	Core      kubernetes.Interface
	Dynamic   dynamic.Interface
	Discovery discovery.CachedDiscoveryInterface
	Mapper    meta.ResettableRESTMapper
	Snapshots snapclient.Interface
}

// Client-side request rate limits, when the rest.Config sets none.
const (
	DefaultQPS   = 50
	DefaultBurst = 300
)

// NewClients builds the clients. Custom resources are spoken to in JSON:
// protobuf is only served for built-in types.
func NewClients(cfg *rest.Config) (*Clients, error) {
	if cfg == nil {
		return nil, errors.New("kube: a rest.Config is required")
	}
	cfg = rest.CopyConfig(cfg)
	if cfg.UserAgent == "" {
		cfg.UserAgent = "tidemark"
	}
	// client-go's own defaults (5 requests/s, bursts of 10) throttle an
	// application's discovery, one list per resource kind: on the test
	// cluster a backup waited ~9 s before it was accepted. The apiserver's
	// priority and fairness protects the server; these only bound a loop
	// gone wrong. Values as kubectl uses for discovery.
	if cfg.QPS == 0 {
		cfg.QPS = DefaultQPS
	}
	if cfg.Burst == 0 {
		cfg.Burst = DefaultBurst
	}
	jsonCfg := rest.CopyConfig(cfg)
	jsonCfg.ContentType = "application/json"
	jsonCfg.AcceptContentTypes = "application/json"
	core, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	dyn, err := dynamic.NewForConfig(jsonCfg)
	if err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	snaps, err := snapclient.NewForConfig(jsonCfg)
	if err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	disc := memory.NewMemCacheClient(core.Discovery())
	return &Clients{
		Config: cfg, Core: core, Dynamic: dyn, Discovery: disc,
		Mapper:    restmapper.NewDeferredDiscoveryRESTMapper(disc),
		Snapshots: snaps,
	}, nil
}

// endingWith reports whether a read failed because ctx is ending: it
// ended, or client-go's rate limiter refused to wait past its deadline
// ("would exceed context deadline") just before it. A wait then reports
// its timeout, with what it last saw, rather than the failed read.
func endingWith(ctx context.Context, err error) bool {
	return ctx.Err() != nil || strings.Contains(err.Error(), "would exceed context deadline")
}

//go:build kubeapi

// Against a real kube-apiserver: `make test-kube` (go test -tags kubeapi).

package deploy

import (
	"context"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"

	kubetest "github.com/tidemark-dev/tidemark/tests/kube"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

const fieldManager = "tidemark-test"

type cluster struct {
	t      *testing.T
	core   kubernetes.Interface
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	cfg := kubetest.Config(t)
	core, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{t: t, core: core, dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))}
}

// apply server-side applies obj as `kubectl apply --server-side` would;
// with dryRun the apiserver runs admission, validation and defaulting and
// stores nothing.
func (c *cluster) apply(ctx context.Context, obj *unstructured.Unstructured, dryRun bool) (*unstructured.Unstructured, error) {
	gvk := obj.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		// A CRD installed since the mapper last looked.
		c.mapper.Reset()
		m, err = c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: the apiserver serves no such kind: %w", gvk.Kind, obj.GetName(), err)
	}
	var ri dynamic.ResourceInterface = c.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if obj.GetNamespace() == "" {
			return nil, fmt.Errorf("%s %s is namespaced but names no namespace (kubectl would put it in the current one)", gvk.Kind, obj.GetName())
		}
		ri = c.dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
	} else if obj.GetNamespace() != "" {
		return nil, fmt.Errorf("%s %s is cluster-scoped but names namespace %s", gvk.Kind, obj.GetName(), obj.GetNamespace())
	}
	opts := metav1.ApplyOptions{FieldManager: fieldManager, Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	return ri.Apply(ctx, obj.GetName(), obj, opts)
}

// install really creates the objects of these kinds (the namespace the
// rest goes into, and the CRDs, which must be served before anything of
// their kinds), waiting for each CRD to be established.
func (c *cluster) install(ctx context.Context, objs []*unstructured.Unstructured, kinds ...string) {
	c.t.Helper()
	for _, o := range objs {
		if !slices.Contains(kinds, o.GetKind()) {
			continue
		}
		if _, err := c.apply(ctx, o, false); err != nil {
			c.t.Fatal(err)
		}
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		err := wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			crd, err := c.dyn.Resource(crdGVR).Get(ctx, o.GetName(), metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, cd := range conds {
				cm, _ := cd.(map[string]any)
				if cm["type"] == "Established" && cm["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			c.t.Fatalf("CRD %s not established: %v", o.GetName(), err)
		}
	}
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// TestOverlaysPassServerSideDryRun applies every object of each overlay
// with server-side dry-run: the apiserver's schema validation (strict
// field validation: a misspelt field fails), defaulting and admission.
func TestOverlaysPassServerSideDryRun(t *testing.T) {
	c := newCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, ov := range overlays {
		t.Run(path.Base(ov), func(t *testing.T) {
			objs := render(t, ov)
			// The namespace must exist for a dry-run of what goes in it,
			// and the CRDs must be served before objects of their kinds.
			c.install(ctx, objs, "Namespace", "CustomResourceDefinition")
			kinds := map[string]int{}
			for _, o := range objs {
				got, err := c.apply(ctx, o, true)
				if err != nil {
					t.Errorf("server-side dry-run of %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
					continue
				}
				kinds[o.GetKind()]++
				if got.GetName() != o.GetName() {
					t.Errorf("%s %s came back as %s", o.GetKind(), o.GetName(), got.GetName())
				}
			}
			t.Logf("%s: %d objects accepted by dry-run: %v", ov, len(objs), kinds)
			// Nothing of the dry-run was stored.
			for _, name := range prefixed(services) {
				if _, err := c.core.AppsV1().Deployments("tidemark").Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
					t.Errorf("Deployment %s after a dry-run: %v (want NotFound)", name, err)
				}
			}
		})
	}
}

// action is one request a service account may or may not make.
type action struct {
	verb, group, resource, subresource string
}

func (a action) String() string {
	r := a.resource
	if a.subresource != "" {
		r += "/" + a.subresource
	}
	if a.group != "" {
		r += "." + a.group
	}
	return a.verb + " " + r
}

// TestRBACIsLeastPrivilege installs the overlay's ServiceAccounts and RBAC
// for real, then asks the apiserver's authorizer (SubjectAccessReview)
// what each service account may do in an application's namespace.
func TestRBACIsLeastPrivilege(t *testing.T) {
	c := newCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	objs := render(t, "overlays/dev")
	c.install(ctx, objs, "Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")

	// The account that alone may do each of these (nobody: "").
	exclusive := []struct {
		a     action
		owner string
	}{
		{action{"create", "", "pods", "exec"}, "hookrunner"},
		{action{"get", "", "pods", "exec"}, "hookrunner"},
		{action{"update", "apps", "statefulsets", "scale"}, "hookrunner"},
		{action{"patch", "apps", "deployments", "scale"}, "hookrunner"},
		{action{"patch", "apps", "statefulsets", ""}, "hookrunner"},
		{action{"get", "", "secrets", ""}, "hookrunner"},
		{action{"create", "snapshot.storage.k8s.io", "volumesnapshots", ""}, "snapshotter"},
		{action{"delete", "snapshot.storage.k8s.io", "volumesnapshots", ""}, "snapshotter"},
		{action{"create", "groupsnapshot.storage.k8s.io", "volumegroupsnapshots", ""}, "snapshotter"},
		{action{"delete", "groupsnapshot.storage.k8s.io", "volumegroupsnapshots", ""}, "snapshotter"},
		{action{"list", "snapshot.storage.k8s.io", "volumesnapshotclasses", ""}, "snapshotter"},
		{action{"get", "groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents", ""}, "snapshotter"},
		// The PVCs of a group snapshot carry its selector label for the call.
		{action{"patch", "", "persistentvolumeclaims", ""}, "snapshotter"},
		{action{"create", "", "pods", ""}, "datamover"},
		{action{"delete", "", "pods", ""}, "datamover"},
		{action{"create", "", "persistentvolumeclaims", ""}, "datamover"},
		{action{"delete", "", "persistentvolumeclaims", ""}, "datamover"},
		// A mover pod's own Secret (the repository credentials it mounts),
		// and its log (progress).
		{action{"create", "", "secrets", ""}, "datamover"},
		{action{"delete", "", "secrets", ""}, "datamover"},
		{action{"get", "", "pods", "log"}, "datamover"},
		{action{"get", "tidemark.io", "blueprints", ""}, "coordinator"},
		{action{"list", "apiextensions.k8s.io", "customresourcedefinitions", ""}, "coordinator"},
		// Nobody changes VolumeSnapshotContents, lists or changes Secrets,
		// RBAC, or anything of Tidemark's own.
		{action{"update", "snapshot.storage.k8s.io", "volumesnapshotcontents", ""}, ""},
		{action{"list", "", "secrets", ""}, ""},
		{action{"update", "", "secrets", ""}, ""},
		{action{"watch", "", "secrets", ""}, ""},
		{action{"create", "rbac.authorization.k8s.io", "clusterrolebindings", ""}, ""},
		{action{"bind", "rbac.authorization.k8s.io", "clusterroles", ""}, ""},
		{action{"escalate", "rbac.authorization.k8s.io", "roles", ""}, ""},
		{action{"create", "", "serviceaccounts", "token"}, ""},
		{action{"update", "apps", "deployments", ""}, ""},
		{action{"create", "tidemark.io", "blueprints", ""}, ""},
		{action{"delete", "", "namespaces", ""}, ""},
		{action{"update", "", "nodes", ""}, ""},
		{action{"create", "", "pods", "eviction"}, ""},
	}
	// What each account must be able to do for its own work.
	needs := map[string][]action{
		"coordinator": {{"list", "", "pods", ""}, {"list", "apps", "statefulsets", ""}, {"list", "tidemark.io", "blueprints", ""}, {"get", "", "namespaces", ""}},
		"hookrunner":  {{"list", "", "pods", ""}, {"get", "apps", "statefulsets", "scale"}, {"get", "apps", "deployments", ""}},
		"snapshotter": {{"get", "", "persistentvolumeclaims", ""}, {"get", "", "persistentvolumes", ""}, {"list", "snapshot.storage.k8s.io", "volumesnapshots", ""}},
		"datamover":   {{"get", "snapshot.storage.k8s.io", "volumesnapshots", ""}, {"list", "", "pods", ""}, {"list", "", "persistentvolumeclaims", ""}},
	}

	allowed := func(svc string, a action, ns string) bool {
		t.Helper()
		sa := "tidemark-" + svc
		r, err := c.core.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   "system:serviceaccount:tidemark:" + sa,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:tidemark", "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: ns, Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.subresource,
			},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SubjectAccessReview for %s: %v", sa, err)
		}
		return r.Status.Allowed
	}

	// "shop" is an application's namespace (it need not exist for a
	// review); "tidemark" is Tidemark's own.
	for _, ns := range []string{"shop", "tidemark"} {
		for _, e := range exclusive {
			for _, svc := range services {
				got := allowed(svc, e.a, ns)
				if want := svc == e.owner; got != want {
					t.Errorf("%s may %s in %s: %v, want %v", svc, e.a, ns, got, want)
				}
			}
		}
		for svc, as := range needs {
			for _, a := range as {
				if !allowed(svc, a, ns) {
					t.Errorf("%s may not %s in %s, which its work needs", svc, a, ns)
				}
			}
		}
		// The catalog: nothing at all, not even reads.
		for _, a := range []action{
			{"get", "", "pods", ""}, {"list", "", "configmaps", ""}, {"get", "", "secrets", ""},
			{"list", "tidemark.io", "blueprints", ""}, {"get", "", "namespaces", ""}, {"*", "*", "*", ""},
		} {
			if allowed("catalog", a, ns) {
				t.Errorf("catalog may %s in %s; it needs no Kubernetes access", a, ns)
			}
		}
	}

	// And in the manifests: no binding names the catalog's account, and
	// its pods get no token.
	for _, o := range objs {
		if !strings.HasSuffix(o.GetKind(), "Binding") {
			continue
		}
		subjects, _, _ := unstructured.NestedSlice(o.Object, "subjects")
		for _, s := range subjects {
			if sm, _ := s.(map[string]any); sm["name"] == "tidemark-catalog" {
				t.Errorf("%s %s binds the catalog's ServiceAccount", o.GetKind(), o.GetName())
			}
		}
	}
	sa, err := c.core.CoreV1().ServiceAccounts("tidemark").Get(ctx, "tidemark-catalog", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Error("the catalog's ServiceAccount mounts a token it has no use for")
	}
}

//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// Names of deploy/ and of the test cluster (tools/cluster).
const (
	namespace = "tidemark"
	// The dev overlay with an S3 repository on versitygw in the cluster:
	// mover pods open the repository themselves, from the application's
	// namespace, so it must be reachable over the network.
	overlay       = "overlays/e2e"
	repoSecret    = "tidemark-repository"
	natsPod       = "nats-0"
	storageClass  = "tidemark-test-csi"
	busyboxImage  = "tidemark.local/busybox:test"
	fieldManager  = "tidemark-e2e"
	deployTimeout = 5 * time.Minute
)

// cluster is the running test cluster with Tidemark deployed on it.
type cluster struct {
	cfg    *rest.Config
	core   kubernetes.Interface
	snap   snapclient.Interface
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper

	// Measured by deploy: how long until every Deployment was Available
	// and NATS Ready, counted from the start of the apply.
	applied   int
	available time.Duration

	// The repository, as the data mover and catalog open it; read from
	// the Secrets deploy made or found. Never logged.
	s3       s3Credentials
	password string
}

var (
	deployOnce sync.Once
	deployed   *cluster
	deployErr  error
	skipReason string
)

// kubeconfigPath is $TIDEMARK_KUBECONFIG, else the test cluster's
// ($TIDEMARK_CLUSTER_DIR, else ~/.cache/tidemark-cluster).
func kubeconfigPath() (string, error) {
	if p := os.Getenv("TIDEMARK_KUBECONFIG"); p != "" {
		return p, nil
	}
	dir := os.Getenv("TIDEMARK_CLUSTER_DIR")
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(base, "tidemark-cluster")
	}
	return filepath.Join(dir, "kubeconfig"), nil
}

// connect returns clients of the test cluster, or a reason to skip: no
// kubeconfig, or one whose apiserver does not answer (the kubeconfig
// outlives `make cluster-down`).
func connect() (*cluster, string, error) {
	path, err := kubeconfigPath()
	if err != nil {
		return nil, "", err
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Sprintf("no cluster kubeconfig at %s (set TIDEMARK_KUBECONFIG, or run `make cluster-up` and `make images`)", path), nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, "", fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	probe := rest.CopyConfig(cfg)
	probe.Timeout = 5 * time.Second
	disc, err := discovery.NewDiscoveryClientForConfig(probe)
	if err != nil {
		return nil, "", err
	}
	if _, err := disc.ServerVersion(); err != nil {
		return nil, fmt.Sprintf("the cluster of %s does not answer (%v): run `make cluster-up` and `make images`", path, err), nil
	}
	c := &cluster{cfg: cfg}
	if c.core, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, "", err
	}
	if c.snap, err = snapclient.NewForConfig(cfg); err != nil {
		return nil, "", err
	}
	if c.dyn, err = dynamic.NewForConfig(cfg); err != nil {
		return nil, "", err
	}
	d, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, "", err
	}
	c.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(d))
	return c, "", nil
}

// tidemark returns the cluster with deploy/overlays/e2e applied and up,
// deploying it (once per test binary) if need be; it skips the test when
// there is no cluster.
func tidemark(t *testing.T) *cluster {
	t.Helper()
	deployOnce.Do(func() {
		var c *cluster
		c, skipReason, deployErr = connect()
		if c == nil || deployErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), deployTimeout+time.Minute)
		defer cancel()
		deployErr = c.deploy(ctx, t)
		deployed = c
	})
	if skipReason != "" {
		t.Skip(skipReason)
	}
	if deployErr != nil {
		t.Fatalf("deploying %s: %v", overlay, deployErr)
	}
	return deployed
}

// deployDir is the repository's deploy/ directory.
func deployDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "deploy")
}

// render builds deploy/<rel> as `kubectl apply -k` does (krusty, default
// options), in its order.
func render(rel string) ([]*unstructured.Unstructured, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(deployDir(), rel))
	if err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	for _, r := range rm.Resources() {
		m, err := r.Map()
		if err != nil {
			return nil, err
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
	return out, nil
}

// apply server-side applies obj (`kubectl apply --server-side --force-conflicts`).
func (c *cluster) apply(ctx context.Context, obj *unstructured.Unstructured) error {
	gvk := obj.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		c.mapper.Reset() // a CRD applied since the mapper last looked
		m, err = c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	var ri dynamic.ResourceInterface = c.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = c.dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
	}
	_, err = ri.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: fieldManager, Force: true})
	if err != nil {
		return fmt.Errorf("applying %s %s/%s: %w", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
	}
	return nil
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// deploy does what docs/deploy.md tells users: the namespace, the
// repository password Secret (kept if it exists: the repository on its
// volume is encrypted with it), then every object of the overlay; and
// waits until every Deployment is Available and NATS is Ready.
func (c *cluster) deploy(ctx context.Context, t *testing.T) error {
	objs, err := render(overlay)
	if err != nil {
		return err
	}
	start := time.Now()
	// The Namespace and the CRDs first: what goes in the one, and the
	// other's kinds, need them.
	for _, kind := range []string{"Namespace", "CustomResourceDefinition"} {
		for _, o := range objs {
			if o.GetKind() != kind {
				continue
			}
			if err := c.apply(ctx, o); err != nil {
				return err
			}
			if kind == "CustomResourceDefinition" {
				if err := c.waitEstablished(ctx, o.GetName()); err != nil {
					return err
				}
			}
		}
	}
	if err := c.repositorySecrets(ctx); err != nil {
		return err
	}
	// The S3 server, its bucket and the repository before the services
	// that open it: the data mover and the catalog would each create the
	// repository in an empty bucket, and two processes on different hosts
	// creating one at the same moment are not excluded (pkg/repository).
	first := func(o *unstructured.Unstructured) bool {
		return o.GetKind() == "Namespace" || o.GetKind() == "CustomResourceDefinition"
	}
	for _, o := range objs {
		if !first(o) && isS3Server(o) {
			if err := c.apply(ctx, o); err != nil {
				return err
			}
		}
	}
	if err := c.prepareRepository(ctx, t); err != nil {
		return err
	}
	for _, o := range objs {
		if first(o) || isS3Server(o) {
			continue
		}
		if err := c.apply(ctx, o); err != nil {
			return err
		}
	}
	c.applied = len(objs)
	t.Logf("applied %d objects of deploy/%s in %v", len(objs), overlay, time.Since(start).Round(time.Millisecond))

	var deployments []string
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			deployments = append(deployments, o.GetName())
		}
	}
	why, err := poll(ctx, deployTimeout, func() (bool, string) {
		var waiting []string
		for _, name := range deployments {
			d, err := c.core.AppsV1().Deployments(namespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			if !available(d) {
				waiting = append(waiting, name)
			}
		}
		ss, err := c.core.AppsV1().StatefulSets(namespace).Get(ctx, "nats", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if ss.Status.ReadyReplicas < replicas(ss.Spec.Replicas) || ss.Status.ObservedGeneration < ss.Generation {
			waiting = append(waiting, "nats")
		}
		if len(waiting) > 0 {
			return false, "not yet available: " + strings.Join(waiting, ", ")
		}
		return true, ""
	})
	if err != nil {
		return fmt.Errorf("%s: %s\n%s", err, why, c.podReport(ctx, namespace))
	}
	c.available = time.Since(start)
	t.Logf("every Deployment Available and NATS Ready %v after the apply began", c.available.Round(time.Millisecond))
	return nil
}

// available: the Deployment's current template rolled out, all replicas
// updated and ready, and its Available condition true.
func available(d *appsv1.Deployment) bool {
	if d.Status.ObservedGeneration < d.Generation || d.Status.UpdatedReplicas < replicas(d.Spec.Replicas) ||
		d.Status.AvailableReplicas < replicas(d.Spec.Replicas) || d.Status.Replicas != d.Status.UpdatedReplicas {
		return false
	}
	for _, cd := range d.Status.Conditions {
		if cd.Type == appsv1.DeploymentAvailable {
			return cd.Status == corev1.ConditionTrue
		}
	}
	return false
}

func replicas(r *int32) int32 {
	if r == nil {
		return 1
	}
	return *r
}

func (c *cluster) waitEstablished(ctx context.Context, name string) error {
	why, err := poll(ctx, time.Minute, func() (bool, string) {
		crd, err := c.dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		for _, cd := range conds {
			if cm, _ := cd.(map[string]any); cm["type"] == "Established" && cm["status"] == "True" {
				return true, ""
			}
		}
		return false, "not Established"
	})
	if err != nil {
		return fmt.Errorf("CRD %s: %v: %s", name, err, why)
	}
	return nil
}

// repositorySecrets makes the S3 server's root credentials and the
// repository Secret as the overlay's comment says (random keys, a password
// of 32 random bytes in base64), keeping what exists: the repository in the
// bucket is encrypted with that password, and the server keeps its keys.
// The repository Secret gets the server's keys if it lacks them.
func (c *cluster) repositorySecrets(ctx context.Context) error {
	secrets := c.core.CoreV1().Secrets(namespace)
	root, err := secrets.Get(ctx, s3RootSecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		root, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: s3RootSecret},
			Data:       map[string][]byte{"access-key": []byte("tidemark" + randomText(6)), "secret-key": []byte(randomText(30))},
		}, metav1.CreateOptions{})
	}
	if err != nil {
		return fmt.Errorf("Secret %s: %w", s3RootSecret, err)
	}
	c.s3 = s3Credentials{AccessKey: string(root.Data["access-key"]), SecretKey: string(root.Data["secret-key"])}
	if c.s3.AccessKey == "" || c.s3.SecretKey == "" {
		return fmt.Errorf("Secret %s lacks access-key or secret-key", s3RootSecret)
	}

	repo, err := secrets.Get(ctx, repoSecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		repo, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: repoSecret},
			Data:       map[string][]byte{"password": []byte(randomText(32) + "\n")},
		}, metav1.CreateOptions{})
	}
	if err != nil {
		return fmt.Errorf("Secret %s: %w", repoSecret, err)
	}
	if string(repo.Data["s3-access-key"]) != c.s3.AccessKey || string(repo.Data["s3-secret-key"]) != c.s3.SecretKey {
		repo.Data["s3-access-key"], repo.Data["s3-secret-key"] = []byte(c.s3.AccessKey), []byte(c.s3.SecretKey)
		if repo, err = secrets.Update(ctx, repo, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("Secret %s: %w", repoSecret, err)
		}
	}
	c.password = strings.TrimRight(string(repo.Data["password"]), "\r\n")
	if c.password == "" {
		return fmt.Errorf("Secret %s has no password", repoSecret)
	}
	return nil
}

// randomText is n random bytes in base64, without padding or characters
// a shell or URL would treat specially.
func randomText(n int) string {
	raw := make([]byte, n)
	if _, err := rand.Read(raw); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(raw)
}

// podReport describes every pod of ns that is not Ready, with its last
// events and log lines, for a failure message.
func (c *cluster) podReport(ctx context.Context, ns string) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	pods, err := c.core.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range pods.Items {
		if podReady(&p) {
			continue
		}
		fmt.Fprintf(&b, "pod %s: phase %s\n", p.Name, p.Status.Phase)
		for _, cs := range p.Status.ContainerStatuses {
			fmt.Fprintf(&b, "  container %s ready=%v restarts=%d state=%+v last=%+v\n", cs.Name, cs.Ready, cs.RestartCount, cs.State, cs.LastTerminationState)
		}
		evs, _ := c.core.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + p.Name})
		if evs != nil {
			for _, e := range evs.Items[max(0, len(evs.Items)-5):] {
				fmt.Fprintf(&b, "  event %s %s: %s\n", e.Type, e.Reason, e.Message)
			}
		}
		tail := int64(15)
		if logs, err := c.core.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{TailLines: &tail}).DoRaw(ctx); err == nil {
			fmt.Fprintf(&b, "  log:\n%s\n", logs)
		}
	}
	return b.String()
}

func podReady(p *corev1.Pod) bool {
	for _, cd := range p.Status.Conditions {
		if cd.Type == corev1.PodReady {
			return cd.Status == corev1.ConditionTrue
		}
	}
	return false
}

// poll calls f every 200ms until it says done or timeout passes; it
// returns f's last reason.
func poll(ctx context.Context, timeout time.Duration, f func() (bool, string)) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, why := f()
		if ok {
			return "", nil
		}
		select {
		case <-ctx.Done():
			return why, fmt.Errorf("not within %v", timeout)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// testNamespace creates a namespace for one test, deleted (and waited
// for, PVs included) when it ends.
func (c *cluster) testNamespace(t *testing.T, prefix string) string {
	t.Helper()
	ctx := context.Background()
	ns, err := c.core.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := c.core.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("deleting namespace %s: %v", ns.Name, err)
			return
		}
		why, err := poll(ctx, 3*time.Minute, func() (bool, string) {
			if _, err := c.core.CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{}); err == nil {
				return false, "namespace still there"
			}
			pvs, err := c.core.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, err.Error()
			}
			for _, pv := range pvs.Items {
				if pv.Spec.ClaimRef != nil && pv.Spec.ClaimRef.Namespace == ns.Name {
					return false, "PV " + pv.Name + " still there"
				}
			}
			return true, ""
		})
		if err != nil {
			t.Errorf("namespace %s and its volumes: %v: %s", ns.Name, err, why)
		}
	})
	// Pods are refused until the namespace's default ServiceAccount exists.
	if why, err := poll(ctx, time.Minute, func() (bool, string) {
		_, err := c.core.CoreV1().ServiceAccounts(ns.Name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, fmt.Sprint(err)
	}); err != nil {
		t.Fatalf("ServiceAccount default in %s: %v: %s", ns.Name, err, why)
	}
	return ns.Name
}

// waitPodReady waits for a pod to be Ready.
func (c *cluster) waitPodReady(t *testing.T, ns, name string, timeout time.Duration) {
	t.Helper()
	ctx := context.Background()
	why, err := poll(ctx, timeout, func() (bool, string) {
		p, err := c.core.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return podReady(p), string(p.Status.Phase)
	})
	if err != nil {
		t.Fatalf("pod %s/%s Ready: %v: %s\n%s", ns, name, err, why, c.podReport(ctx, ns))
	}
}

// portForward forwards a local port to a pod's port through the
// apiserver (pods/portforward, SPDY, as `kubectl port-forward` does) until
// the test ends, and returns the local address.
func (c *cluster) portForward(t *testing.T, ns, pod string, port int) string {
	t.Helper()
	addr, stop, err := c.forward(ns, pod, port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr
}

// forward is portForward until stop is called.
func (c *cluster) forward(ns, pod string, port int) (addr string, stop func(), err error) {
	transport, upgrader, err := spdy.RoundTripperFor(c.cfg)
	if err != nil {
		return "", nil, err
	}
	req := c.core.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("portforward")
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, req.URL())
	stopCh, ready := make(chan struct{}), make(chan struct{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	local := l.Addr().(*net.TCPAddr).Port
	l.Close() // portforward listens itself; take a free port number
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("%d:%d", local, port)}, stopCh, ready, io.Discard, io.Discard)
	if err != nil {
		return "", nil, err
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	stop = func() {
		close(stopCh)
		<-done
	}
	select {
	case <-ready:
	case err := <-done:
		return "", nil, fmt.Errorf("port-forward to %s/%s:%d: %v", ns, pod, port, err)
	case <-time.After(30 * time.Second):
		stop()
		return "", nil, fmt.Errorf("port-forward to %s/%s:%d not ready after 30s", ns, pod, port)
	}
	return fmt.Sprintf("127.0.0.1:%d", local), stop, nil
}

// TestDeploy is (a): deploy/overlays/e2e (the dev overlay with an S3
// repository on versitygw in the cluster) applied as docs/deploy.md says,
// every Deployment Available and NATS Ready, each pod Ready. A service
// that started before NATS resolved exits and is restarted (`tidemark
// serve` does not retry its first connection), which is logged; a restart
// after NATS became Ready fails the test.
func TestDeploy(t *testing.T) {
	c := tidemark(t)
	if c.available > 0 {
		t.Logf("time to Available: %v (%d objects)", c.available.Round(time.Millisecond), c.applied)
	}
	ctx := context.Background()
	nats, err := c.core.CoreV1().Pods(namespace).Get(ctx, natsPod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var natsReady time.Time
	for _, cd := range nats.Status.Conditions {
		if cd.Type == corev1.PodReady && cd.Status == corev1.ConditionTrue {
			natsReady = cd.LastTransitionTime.Time
		}
	}
	if natsReady.IsZero() {
		t.Fatalf("%s is not Ready", natsPod)
	}
	pods, err := c.core.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		names = append(names, p.Labels["app.kubernetes.io/component"]+p.Labels["app.kubernetes.io/name"])
		if !podReady(&p) {
			t.Errorf("pod %s is not Ready", p.Name)
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.RestartCount == 0 {
				continue
			}
			last := cs.LastTerminationState.Terminated
			if last == nil || last.FinishedAt.After(natsReady) {
				t.Errorf("pod %s container %s restarted %d times, after NATS was Ready at %s (last: %+v)", p.Name, cs.Name, cs.RestartCount, natsReady, cs.LastTerminationState)
				continue
			}
			t.Logf("pod %s container %s restarted %d times before NATS was Ready (last exit %d at %s)", p.Name, cs.Name, cs.RestartCount, last.ExitCode, last.FinishedAt.Format(time.RFC3339))
		}
	}
	slices.Sort(names)
	want := []string{"catalogtidemark", "coordinatortidemark", "datamovertidemark", "hookrunnertidemark", "nats", "snapshottertidemark", "versitygw"}
	if !slices.Equal(names, want) {
		t.Errorf("pods in %s: %v, want one each of %v", namespace, names, want)
	}
}

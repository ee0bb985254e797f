package deploy

import (
	"fmt"
	"path"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

const (
	tidemarkImage = "tidemark.local/tidemark:test"
	natsImage     = "tidemark.local/nats:test"
	natsURL       = "nats://nats.tidemark.svc:4222"
	listenPort    = 8480
)

func typed[T any](t *testing.T, o *unstructured.Unstructured) *T {
	t.Helper()
	var v T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &v); err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
	return &v
}

// TestEveryServiceDeploymentHasItsShape checks what the docs promise of
// each Tidemark Deployment, in every overlay.
func TestEveryServiceDeploymentHasItsShape(t *testing.T) {
	for _, ov := range overlays {
		objs := render(t, ov)
		wantStreamReplicas := map[string]string{"overlays/dev": "1", "overlays/ha": "3"}[ov]
		for _, svc := range services {
			t.Run(path.Base(ov)+"/"+svc, func(t *testing.T) {
				o := find(objs, "Deployment", "tidemark-"+svc)
				if o == nil {
					t.Fatalf("no Deployment tidemark-%s", svc)
				}
				if o.GetNamespace() != "tidemark" {
					t.Errorf("namespace %q, want tidemark", o.GetNamespace())
				}
				d := typed[appsv1.Deployment](t, o)
				checkPod(t, objs, &d.Spec.Template.Spec, svc, wantStreamReplicas)
			})
		}
	}
}

func checkPod(t *testing.T, objs []*unstructured.Unstructured, pod *corev1.PodSpec, svc, wantStreamReplicas string) {
	t.Helper()
	if pod.ServiceAccountName != "tidemark-"+svc {
		t.Errorf("serviceAccountName %q, want tidemark-%s", pod.ServiceAccountName, svc)
	}
	if find(objs, "ServiceAccount", "tidemark-"+svc) == nil {
		t.Errorf("no ServiceAccount tidemark-%s", svc)
	}
	if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("pod securityContext %+v: want runAsNonRoot with a non-zero runAsUser", psc)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if c.Image != tidemarkImage || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %s (%s), want %s (IfNotPresent)", c.Image, c.ImagePullPolicy, tidemarkImage)
	}
	flags := map[string]string{}
	if len(c.Args) == 0 || c.Args[0] != "serve" {
		t.Fatalf("args %q: want `serve` first", c.Args)
	}
	for _, a := range c.Args[1:] {
		k, v, ok := strings.Cut(a, "=")
		if !ok || !strings.HasPrefix(k, "--") {
			t.Errorf("arg %q: want --flag=value (one argument, no shell)", a)
			continue
		}
		flags[k] = v
	}
	for k, want := range map[string]string{
		"--services": svc, "--nats-url": natsURL, "--listen": fmt.Sprintf("0.0.0.0:%d", listenPort),
		"--stream-replicas": "$(TIDEMARK_STREAM_REPLICAS)",
	} {
		if flags[k] != want {
			t.Errorf("%s=%q, want %q", k, flags[k], want)
		}
	}
	// Every service that acts on applications uses the Kubernetes
	// platform; the catalog has no token, with which `--platform=kube`
	// would fail to start.
	if want := map[bool]string{true: "", false: "kube"}[svc == "catalog"]; flags["--platform"] != want {
		t.Errorf("--platform=%q, want %q", flags["--platform"], want)
	}
	if svc == "datamover" && (flags["--datamover-concurrency"] == "" || flags["--mover-limit"] == "") {
		t.Error("the data mover does not set --datamover-concurrency and --mover-limit")
	}
	// $(TIDEMARK_STREAM_REPLICAS) is expanded by the kubelet from the
	// container's env, here a key of the generated tidemark-config.
	if got := envFromConfigMap(t, objs, c, "TIDEMARK_STREAM_REPLICAS"); got != wantStreamReplicas {
		t.Errorf("stream replicas %q, want %q", got, wantStreamReplicas)
	}

	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != listenPort || c.Ports[0].Name != "http" {
		t.Errorf("ports %+v: want http %d (--listen)", c.Ports, listenPort)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}, {"startup", c.StartupProbe, "/healthz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "http" {
			t.Errorf("%s probe %+v: want GET %s on port http", p.name, p.probe, p.path)
		}
	}
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("container securityContext %+v: want a read-only root, no privilege escalation, all capabilities dropped", sc)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v: want cpu and memory requests and a memory limit", c.Resources)
	}

	// The data directory and /tmp are the only writable places on the
	// read-only root: both must be emptyDirs.
	for _, dir := range []string{flags["--data-dir"], "/tmp"} {
		v := volumeAt(pod, c, dir)
		if v == nil || v.EmptyDir == nil {
			t.Errorf("%s: want an emptyDir mounted there, got %+v", dir, v)
		}
	}

	usesRepository := svc == "datamover" || svc == "catalog"
	pwFile := envFromConfigMap(t, objs, c, "TIDEMARK_REPOSITORY_PASSWORD_FILE")
	if !usesRepository {
		if pwFile != "" {
			t.Errorf("the %s does not open the repository but gets its password file", svc)
		}
		return
	}
	v := volumeAt(pod, c, path.Dir(pwFile))
	if pwFile == "" || v == nil || v.Secret == nil || v.Secret.SecretName != "tidemark-repository" {
		t.Errorf("TIDEMARK_REPOSITORY_PASSWORD_FILE=%q: want a file of the mounted Secret tidemark-repository, got volume %+v", pwFile, v)
	}
	if find(objs, "Secret", "tidemark-repository") != nil {
		t.Error("the manifests create the repository Secret; users create it with their own password")
	}
	if repo := envFromConfigMap(t, objs, c, "TIDEMARK_REPOSITORY_PATH"); repo != "" {
		if v := volumeAt(pod, c, repo); v == nil || v.PersistentVolumeClaim == nil {
			t.Errorf("TIDEMARK_REPOSITORY_PATH=%s: want a PVC mounted there, got %+v", repo, v)
		}
	}
}

// envFromConfigMap resolves a container's environment variable the way
// the kubelet would, from env (value or configMapKeyRef) or envFrom
// ConfigMaps of the rendered set; "" when it is not set.
func envFromConfigMap(t *testing.T, objs []*unstructured.Unstructured, c corev1.Container, name string) string {
	t.Helper()
	data := func(cm string) map[string]string {
		o := find(objs, "ConfigMap", cm)
		if o == nil {
			t.Fatalf("container refers to ConfigMap %s, which the manifests do not have", cm)
		}
		m, _, _ := unstructured.NestedStringMap(o.Object, "data")
		return m
	}
	for _, e := range c.Env {
		if e.Name != name {
			continue
		}
		if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
			return data(e.ValueFrom.ConfigMapKeyRef.Name)[e.ValueFrom.ConfigMapKeyRef.Key]
		}
		return e.Value
	}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef != nil {
			if v, ok := data(ef.ConfigMapRef.Name)[name]; ok {
				return v
			}
		}
	}
	return ""
}

func volumeAt(pod *corev1.PodSpec, c corev1.Container, dir string) *corev1.Volume {
	for _, m := range c.VolumeMounts {
		if m.MountPath != dir {
			continue
		}
		for i := range pod.Volumes {
			if pod.Volumes[i].Name == m.Name {
				return &pod.Volumes[i]
			}
		}
	}
	return nil
}

// TestNATS checks the NATS StatefulSet of each overlay: one server in dev,
// a three-server cluster with routes, spread over nodes, in ha.
func TestNATS(t *testing.T) {
	for _, tc := range []struct {
		overlay  string
		replicas int32
		routes   int
	}{{"overlays/dev", 1, 0}, {"overlays/ha", 3, 3}} {
		t.Run(path.Base(tc.overlay), func(t *testing.T) {
			objs := render(t, tc.overlay)
			o := find(objs, "StatefulSet", "nats")
			if o == nil {
				t.Fatal("no StatefulSet nats")
			}
			s := typed[appsv1.StatefulSet](t, o)
			if s.Spec.Replicas == nil || *s.Spec.Replicas != tc.replicas {
				t.Errorf("replicas %v, want %d", s.Spec.Replicas, tc.replicas)
			}
			svc := find(objs, "Service", s.Spec.ServiceName)
			if svc == nil {
				t.Fatalf("no Service %s (the StatefulSet's serviceName)", s.Spec.ServiceName)
			}
			if ip, _, _ := unstructured.NestedString(svc.Object, "spec", "clusterIP"); ip != "None" {
				t.Errorf("Service %s clusterIP %q, want None (headless)", svc.GetName(), ip)
			}
			if len(s.Spec.VolumeClaimTemplates) != 1 {
				t.Errorf("%d volumeClaimTemplates, want 1 (the JetStream store)", len(s.Spec.VolumeClaimTemplates))
			}
			pod := s.Spec.Template.Spec
			c := pod.Containers[0]
			if c.Image != natsImage || c.ImagePullPolicy != corev1.PullIfNotPresent {
				t.Errorf("image %s (%s), want %s (IfNotPresent)", c.Image, c.ImagePullPolicy, natsImage)
			}
			var conf string
			for _, v := range pod.Volumes {
				if v.ConfigMap != nil {
					cm := find(objs, "ConfigMap", v.ConfigMap.Name)
					if cm == nil {
						t.Fatalf("no ConfigMap %s", v.ConfigMap.Name)
					}
					conf, _, _ = unstructured.NestedString(cm.Object, "data", "nats.conf")
				}
			}
			if !strings.Contains(conf, "jetstream") {
				t.Errorf("nats.conf has no jetstream block:\n%s", conf)
			}
			if got := strings.Count(conf, "nats://nats-"); got != tc.routes {
				t.Errorf("nats.conf has %d routes, want %d:\n%s", got, tc.routes, conf)
			}
			aff := pod.Affinity
			spread := aff != nil && aff.PodAntiAffinity != nil && len(aff.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) > 0
			if spread != (tc.replicas > 1) {
				t.Errorf("required anti-affinity %v with %d replicas", spread, tc.replicas)
			}
		})
	}
}

// TestHADisruptionBudgets: in ha, every workload has a budget that keeps
// all but one of its pods through a drain.
func TestHADisruptionBudgets(t *testing.T) {
	objs := render(t, "overlays/ha")
	for _, name := range append([]string{"nats"}, prefixed(services)...) {
		o := find(objs, "PodDisruptionBudget", name)
		if o == nil {
			t.Errorf("no PodDisruptionBudget %s", name)
			continue
		}
		if v, _, _ := unstructured.NestedFieldNoCopy(o.Object, "spec", "maxUnavailable"); fmt.Sprint(v) != "1" {
			t.Errorf("PodDisruptionBudget %s maxUnavailable %v, want 1", name, v)
		}
	}
	if len(render(t, "overlays/dev")) == 0 {
		t.Fatal("dev renders nothing")
	}
	for _, o := range render(t, "overlays/dev") {
		if o.GetKind() == "PodDisruptionBudget" {
			t.Errorf("dev has PodDisruptionBudget %s: with one replica it would block every drain", o.GetName())
		}
	}
}

func prefixed(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = "tidemark-" + n
	}
	return out
}

// TestEverythingIsInTheTidemarkNamespace: a namespaced object without a
// namespace would land in whatever namespace kubectl's context has.
func TestEverythingIsInTheTidemarkNamespace(t *testing.T) {
	clusterScoped := []string{"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
	for _, ov := range overlays {
		for _, o := range render(t, ov) {
			want := "tidemark"
			if slices.Contains(clusterScoped, o.GetKind()) {
				want = ""
			}
			if o.GetNamespace() != want {
				t.Errorf("%s: %s %s in namespace %q, want %q", ov, o.GetKind(), o.GetName(), o.GetNamespace(), want)
			}
		}
	}
}

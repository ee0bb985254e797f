package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// KubeletStandIn is a TEST-ONLY stand-in for the kubelet, which this
// harness does not run (it has an apiserver and etcd only, no node): for
// each new pod that Options.Selector picks it does what a kubelet would
// do with a one-container pod, on this machine instead of in a container:
//
//   - mounts its volumes as local directories: a PVC as the directory
//     Options.Volume says stands for it, a Secret as a fresh directory
//     holding its keys as files (read from the apiserver, as the kubelet
//     reads them; a missing Secret keeps the pod pending, retried), an
//     emptyDir as a fresh directory;
//   - resolves the container's environment (values, secretKeyRef,
//     configMapKeyRef, resourceFieldRef limits.memory);
//   - runs the container's args as a process (Options.Command: the
//     image's entrypoint), where any arg or environment value that is a
//     path under a mount path is rewritten to the directory standing for
//     it (the container's view of its mounts); the terminationMessagePath
//     is a file of its own;
//   - reports the pod Running, then Succeeded or Failed with the
//     container's exit code and termination message (with
//     FallbackToLogsOnError, the tail of its output when it failed
//     without writing one);
//   - kills the process when the pod is deleted while it runs.
//
// What it does not do: scheduling (pods get no node), image pulls,
// read-only mounts, resource limits, restarts (it is for
// restartPolicy Never pods). Hold and KillWith make it act out a kubelet
// that cannot start a pod, or one that kills it.
type KubeletStandIn struct {
	t    testing.TB
	opts KubeletOptions
	core kubernetes.Interface

	mu       sync.Mutex
	seen     map[string]bool // namespace/name of pods taken on
	pods     []corev1.Pod    // each pod as it was when started
	hold     *corev1.ContainerStateWaiting
	kill     *corev1.ContainerStateTerminated
	linger   time.Duration
	running  int
	most     int
	finished map[string]corev1.ContainerStateTerminated
	wg       sync.WaitGroup
}

// KubeletOptions configure a KubeletStandIn.
type KubeletOptions struct {
	// Selector is a label selector: the pods this stand-in runs.
	Selector string
	// Volume returns the directory standing for the volume of pvc.
	Volume func(ctx context.Context, pvc *corev1.PersistentVolumeClaim) (string, error)
	// Command returns the process that runs a container's args.
	Command func(args []string) *exec.Cmd
}

// StartKubeletStandIn runs the stand-in until the test ends; then it
// kills what still runs and waits for it.
func StartKubeletStandIn(t testing.TB, cfg *rest.Config, opts KubeletOptions) *KubeletStandIn {
	t.Helper()
	k := &KubeletStandIn{t: t, opts: opts, core: kubernetes.NewForConfigOrDie(cfg),
		seen: map[string]bool{}, finished: map[string]corev1.ContainerStateTerminated{}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); k.wg.Wait() })
	loop(t, func(context.Context) { k.sync(ctx) })
	return k
}

// Hold leaves new pods pending, their container waiting with reason and
// message (ImagePullBackOff, say), until Release.
func (k *KubeletStandIn) Hold(reason, message string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.hold = &corev1.ContainerStateWaiting{Reason: reason, Message: message}
}

// Release lets held pods start.
func (k *KubeletStandIn) Release() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.hold = nil
}

// KillWith makes the stand-in end each new pod's container as the
// kubelet ends one it kills (OOMKilled, exit code 137), with output as
// what the container had written (its log), instead of running it.
func (k *KubeletStandIn) KillWith(reason string, exitCode int32, output string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.kill = &corev1.ContainerStateTerminated{Reason: reason, ExitCode: exitCode, Message: output}
}

// StopKilling undoes KillWith.
func (k *KubeletStandIn) StopKilling() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.kill = nil
}

// Linger keeps each container running at least d before it is reported
// ended, so that tests see pods live side by side.
func (k *KubeletStandIn) Linger(d time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.linger = d
}

// Pods returns every pod started, as it was then.
func (k *KubeletStandIn) Pods() []corev1.Pod {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.pods)
}

// MostRunning is the most pods it ran at once.
func (k *KubeletStandIn) MostRunning() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.most
}

// Ended returns how the container of pod namespace/name ended, once it did.
func (k *KubeletStandIn) Ended(key string) (corev1.ContainerStateTerminated, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	st, ok := k.finished[key]
	return st, ok
}

func (k *KubeletStandIn) sync(ctx context.Context) {
	l, err := k.core.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{LabelSelector: k.opts.Selector})
	if err != nil {
		return
	}
	for _, pod := range l.Items {
		key := pod.Namespace + "/" + pod.Name
		if pod.DeletionTimestamp != nil || (pod.Status.Phase != "" && pod.Status.Phase != corev1.PodPending) {
			continue
		}
		k.mu.Lock()
		if k.seen[key] {
			k.mu.Unlock()
			continue
		}
		if hold := k.hold; hold != nil {
			k.mu.Unlock()
			if cs := pod.Status.ContainerStatuses; len(cs) == 0 || cs[0].State.Waiting == nil || cs[0].State.Waiting.Reason != hold.Reason {
				k.report(ctx, &pod, corev1.PodPending, corev1.ContainerState{Waiting: hold.DeepCopy()})
			}
			continue
		}
		k.seen[key] = true
		k.mu.Unlock()
		k.wg.Add(1)
		go func() {
			defer k.wg.Done()
			if err := k.run(ctx, pod.DeepCopy()); err != nil {
				// Not started (a Secret or volume not there yet): the
				// kubelet retries such a pod, so does the stand-in.
				k.mu.Lock()
				delete(k.seen, key)
				k.mu.Unlock()
			}
		}()
	}
}

// run runs pod's container to its end; an error means it could not start.
func (k *KubeletStandIn) run(ctx context.Context, pod *corev1.Pod) error {
	if len(pod.Spec.Containers) != 1 {
		return fmt.Errorf("the kubelet stand-in runs one-container pods; %s has %d", pod.Name, len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	root, err := os.MkdirTemp("", "kubelet-standin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	dirs := map[string]string{} // volume name → directory
	for _, v := range pod.Spec.Volumes {
		switch {
		case v.PersistentVolumeClaim != nil:
			pvc, err := k.core.CoreV1().PersistentVolumeClaims(pod.Namespace).Get(ctx, v.PersistentVolumeClaim.ClaimName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if dirs[v.Name], err = k.opts.Volume(ctx, pvc); err != nil {
				return err
			}
		case v.Secret != nil:
			sec, err := k.core.CoreV1().Secrets(pod.Namespace).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			dir := filepath.Join(root, "secret-"+v.Name)
			if err := os.Mkdir(dir, 0o700); err != nil {
				return err
			}
			for name, data := range sec.Data {
				if err := os.WriteFile(filepath.Join(dir, name), data, 0o400); err != nil {
					return err
				}
			}
			dirs[v.Name] = dir
		case v.EmptyDir != nil:
			dir := filepath.Join(root, "empty-"+v.Name)
			if err := os.Mkdir(dir, 0o700); err != nil {
				return err
			}
			dirs[v.Name] = dir
		default:
			return fmt.Errorf("the kubelet stand-in has no %s volumes", v.Name)
		}
	}
	mounts := map[string]string{} // mount path → directory or file
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = dirs[m.Name]
	}
	termination := filepath.Join(root, "termination-log")
	if err := os.WriteFile(termination, nil, 0o600); err != nil {
		return err
	}
	if c.TerminationMessagePath != "" {
		mounts[c.TerminationMessagePath] = termination
	}
	inContainer := func(v string) string {
		// The longest mount path first: /a/b is inside /a/b, not /a.
		paths := slices.Collect(maps.Keys(mounts))
		slices.SortFunc(paths, func(a, b string) int { return len(b) - len(a) })
		for _, p := range paths {
			if v == p || strings.HasPrefix(v, p+"/") {
				return mounts[p] + strings.TrimPrefix(v, p)
			}
		}
		return v
	}
	env, err := k.env(ctx, pod, c, inContainer)
	if err != nil {
		return err
	}
	args := make([]string, len(c.Args))
	for i, a := range c.Args {
		args[i] = inContainer(a)
	}

	k.mu.Lock()
	kill, linger := k.kill, k.linger
	k.pods = append(k.pods, *pod.DeepCopy())
	k.running++
	k.most = max(k.most, k.running)
	k.mu.Unlock()
	defer func() {
		k.mu.Lock()
		k.running--
		k.mu.Unlock()
	}()
	started := time.Now()
	k.report(ctx, pod, corev1.PodRunning, corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}})

	var (
		exitCode int32
		out      bytes.Buffer
		killedBy *corev1.ContainerStateTerminated
	)
	if kill != nil {
		killedBy = kill.DeepCopy()
		exitCode = kill.ExitCode
		out.WriteString(kill.Message)
	} else {
		cmd := k.opts.Command(args)
		cmd.Env = append(cmd.Env, env...)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			exitCode = 128
			out.WriteString(err.Error())
		} else {
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			deleted := k.whenDeleted(ctx, pod)
			select {
			case err := <-exited:
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					exitCode = int32(ee.ExitCode())
				} else if err != nil {
					exitCode = 128
				}
			case <-deleted:
				_ = cmd.Process.Kill()
				<-exited
				return nil // nothing left to report to
			case <-ctx.Done():
				_ = cmd.Process.Kill()
				<-exited
				return nil
			}
		}
	}
	if rest := linger - time.Since(started); rest > 0 {
		select {
		case <-time.After(rest):
		case <-ctx.Done():
			return nil
		}
	}
	st := corev1.ContainerStateTerminated{ExitCode: exitCode, StartedAt: metav1.NewTime(started), FinishedAt: metav1.Now(), Reason: "Completed"}
	if exitCode != 0 {
		st.Reason = "Error"
	}
	if killedBy != nil {
		st.Reason = killedBy.Reason
	}
	msg, _ := os.ReadFile(termination)
	if len(msg) == 0 && exitCode != 0 && c.TerminationMessagePolicy == corev1.TerminationMessageFallbackToLogsOnError {
		msg = logTail(out.Bytes())
	}
	if len(msg) > 4096 {
		msg = msg[:4096] // the kubelet's limit
	}
	st.Message = string(msg)
	phase := corev1.PodSucceeded
	if exitCode != 0 {
		phase = corev1.PodFailed
	}
	k.mu.Lock()
	k.finished[pod.Namespace+"/"+pod.Name] = st
	k.mu.Unlock()
	k.report(ctx, pod, phase, corev1.ContainerState{Terminated: &st})
	return nil
}

// logTail is what the kubelet keeps of a log for FallbackToLogsOnError:
// the last 80 lines, at most 2048 bytes.
func logTail(out []byte) []byte {
	lines := bytes.Split(bytes.TrimRight(out, "\n"), []byte("\n"))
	if len(lines) > 80 {
		lines = lines[len(lines)-80:]
	}
	tail := bytes.Join(lines, []byte("\n"))
	if len(tail) > 2048 {
		tail = tail[len(tail)-2048:]
	}
	return tail
}

func (k *KubeletStandIn) env(ctx context.Context, pod *corev1.Pod, c corev1.Container, inContainer func(string) string) ([]string, error) {
	var env []string
	for _, e := range c.Env {
		v := e.Value
		switch src := e.ValueFrom; {
		case src == nil:
		case src.SecretKeyRef != nil:
			sec, err := k.core.CoreV1().Secrets(pod.Namespace).Get(ctx, src.SecretKeyRef.Name, metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			v = string(sec.Data[src.SecretKeyRef.Key])
		case src.ConfigMapKeyRef != nil:
			cm, err := k.core.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, src.ConfigMapKeyRef.Name, metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			v = cm.Data[src.ConfigMapKeyRef.Key]
		case src.ResourceFieldRef != nil && src.ResourceFieldRef.Resource == "limits.memory":
			if q, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
				v = strconv.FormatInt(q.Value(), 10)
			}
		default:
			return nil, fmt.Errorf("the kubelet stand-in cannot resolve env %s", e.Name)
		}
		env = append(env, e.Name+"="+inContainer(v))
	}
	return env, nil
}

// whenDeleted is closed once pod is gone or being deleted.
func (k *KubeletStandIn) whenDeleted(ctx context.Context, pod *corev1.Pod) <-chan struct{} {
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		for ctx.Err() == nil {
			p, err := k.core.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) || (err == nil && (p.DeletionTimestamp != nil || p.UID != pod.UID)) {
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return gone
}

// report sets the pod's phase and its container's state, as the kubelet
// does through the status subresource.
func (k *KubeletStandIn) report(ctx context.Context, pod *corev1.Pod, phase corev1.PodPhase, state corev1.ContainerState) {
	for range 10 {
		cur, err := k.core.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil || cur.UID != pod.UID {
			return
		}
		cur.Status.Phase = phase
		if cur.Status.StartTime == nil {
			cur.Status.StartTime = &metav1.Time{Time: time.Now()}
		}
		cs := corev1.ContainerStatus{Name: pod.Spec.Containers[0].Name, Image: pod.Spec.Containers[0].Image, State: state,
			Ready: state.Running != nil, Started: new(state.Running != nil)}
		cur.Status.ContainerStatuses = []corev1.ContainerStatus{cs}
		_, err = k.core.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) {
			return
		}
	}
}

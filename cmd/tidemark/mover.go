package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/services/datamover"
)

type moverOptions struct {
	direction  string
	item       string
	path       string
	resultFile string
	cacheDir   string
}

func newMoverCommand(g *globalOptions) *cobra.Command {
	o := &moverOptions{}
	cmd := &cobra.Command{
		Use:   "mover",
		Short: "Move one volume between a directory and the repository (what a mover pod runs)",
		Long: `Move exactly one work item between the directory --path, where a volume is
mounted, and the repository, then exit: 0 when the item is done, 1 with a
one-line reason when it failed (2 for a bad flag).

This is what the data mover's mover pods run on Kubernetes ("tidemark serve
--platform kube"): the data mover starts a pod per volume with this command,
the work item (--item) and the volume mounted at --path, reads the result from
the pod's termination message (--result-file) and publishes it. Run by hand,
it needs no NATS and no cluster.

--item is the work item's data: an io.tidemark.volume.export.requested.v1
(export: --path is stored as the item's volume) or
io.tidemark.volume.import.requested.v1 (import: the snapshot is restored into
--path; targetKind replace replaces what --path holds and keeps the previous
contents in --path/.tidemark-previous-<run>).

The repository is the one TIDEMARK_REPOSITORY_PATH or the
TIDEMARK_REPOSITORY_S3_* variables name, opened with the password in
TIDEMARK_REPOSITORY_PASSWORD or the file TIDEMARK_REPOSITORY_PASSWORD_FILE
names (docs/repository.md). It must exist: a mover never creates one.

Standard output gets a JSON line per progress report ({"progress":{...}},
about once a second) and the result at the end ({"result":{...}}); the same
result, or {"error":"...","permanent":...}, goes to --result-file.`,
		Example: `  TIDEMARK_REPOSITORY_PATH=/backups/repo TIDEMARK_REPOSITORY_PASSWORD_FILE=./pw \
    tidemark mover --direction export --path /mnt/data \
    --item '{"runId":"r1","application":"shop/db","volume":"data","sourceKind":"snapshot","snapshotId":"shop/snap-1","repository":"default","idempotencyKey":"r1:export:data"}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := g.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if err := o.validate(); err != nil {
				return usageError{err}
			}
			res, err := o.run(cmd.Context(), cmd.OutOrStdout(), log)
			if err != nil {
				res = datamover.FailedResult(err)
			}
			if werr := o.writeResult(res); werr != nil {
				log.Error("writing the result", "file", o.resultFile, "err", werr)
			}
			if err != nil {
				// One line: it is the pod's reason, read where lines are cut.
				return errors.New(res.Error)
			}
			line, _ := json.Marshal(map[string]datamover.MoveResult{"result": res})
			fmt.Fprintln(cmd.OutOrStdout(), string(line))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.direction, "direction", "", "export (the directory into the repository) or import (the repository into the directory)")
	f.StringVar(&o.item, "item", "", "the work item: a volume export or import command's data, JSON")
	f.StringVar(&o.path, "path", kube.MoverMountPath, "the directory where the volume is mounted")
	f.StringVar(&o.resultFile, "result-file", "", "file to write the result to, JSON (a mover pod's termination message); empty: none")
	f.StringVar(&o.cacheDir, "cache-dir", filepath.Join(os.TempDir(), "tidemark-mover"), "directory for the repository's local caches")
	return cmd
}

func (o *moverOptions) validate() error {
	switch {
	case o.direction != datamover.DirectionExport && o.direction != datamover.DirectionImport:
		return fmt.Errorf("--direction %q: want export or import", o.direction)
	case o.item == "":
		return errors.New("--item is empty: give the work item's data (JSON)")
	case o.path == "":
		return errors.New("--path is empty: give the directory where the volume is mounted")
	case o.cacheDir == "":
		return errors.New("--cache-dir is empty")
	}
	return nil
}

func (o *moverOptions) run(ctx context.Context, stdout io.Writer, log *slog.Logger) (datamover.MoveResult, error) {
	it, err := datamover.ParseItem(o.direction, o.item)
	if err != nil {
		return datamover.MoveResult{}, err
	}
	cfg, err := moverRepositoryConfig(o.cacheDir)
	if err != nil {
		return datamover.MoveResult{}, err
	}
	cfg.Logger = log
	repo, err := repository.Open(ctx, cfg)
	if err != nil {
		return datamover.MoveResult{}, fmt.Errorf("opening the repository %s: %w", cfg.Location(), err)
	}
	defer func() {
		if err := repo.Close(context.WithoutCancel(ctx)); err != nil {
			log.Warn("closing the repository", "err", err)
		}
	}()
	return datamover.MoveOne(ctx, repo, it, o.path, func(p repository.Progress) {
		_ = datamover.WriteProgress(stdout, p)
	})
}

// moverRepositoryConfig is the repository the environment names. Unlike
// serve's, there is no default directory and nothing is created: a mover
// given the wrong settings must fail, not fill an empty repository.
func moverRepositoryConfig(cacheDir string) (repository.Config, error) {
	path := os.Getenv(repository.EnvPath)
	s3, err := repository.S3FromEnvironment(nil)
	if err != nil {
		return repository.Config{}, err
	}
	if path == "" && s3 == nil {
		return repository.Config{}, fmt.Errorf("%w: no repository: set %s, or %s and the other TIDEMARK_REPOSITORY_S3_* variables",
			repository.ErrInvalidConfig, repository.EnvPath, repository.EnvS3Bucket)
	}
	cfg, err := repository.Resolve(cacheDir, path, os.Getenv(repository.EnvPassword), os.Getenv(repository.EnvPasswordFile), false, nil)
	if err != nil {
		return repository.Config{}, err
	}
	cfg.CacheDir = filepath.Join(cacheDir, "repository")
	cfg.NoCreate = true
	return cfg, nil
}

func (o *moverOptions) writeResult(res datamover.MoveResult) error {
	if o.resultFile == "" {
		return nil
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	return os.WriteFile(o.resultFile, b, 0o644)
}

// moverFlags are serve's settings for mover pods (--platform kube).
type moverFlags struct {
	image, pullPolicy, serviceAccount                string
	cpuRequest, memoryRequest, cpuLimit, memoryLimit string
	nodeSelector, tolerations                        []string
	limit                                            int
	startTimeout                                     time.Duration
}

func (f *moverFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.image, "mover-image", "", "data mover on --platform kube: the tidemark image of mover pods (default: the data mover's own, read from its pod)")
	fs.StringVar(&f.pullPolicy, "mover-image-pull-policy", "", "data mover: Always, IfNotPresent or Never (default: IfNotPresent, or the data mover's own with its image)")
	fs.StringVar(&f.serviceAccount, "mover-service-account", "", "data mover: ServiceAccount of mover pods in the volume's namespace (default: the namespace's default; no token is mounted either way)")
	fs.StringVar(&f.cpuRequest, "mover-cpu-request", "100m", "data mover: CPU request of a mover pod")
	fs.StringVar(&f.memoryRequest, "mover-memory-request", "256Mi", "data mover: memory request of a mover pod")
	fs.StringVar(&f.cpuLimit, "mover-cpu-limit", "", "data mover: CPU limit of a mover pod (empty: none)")
	fs.StringVar(&f.memoryLimit, "mover-memory-limit", "2Gi", "data mover: memory limit of a mover pod (empty: none)")
	fs.StringSliceVar(&f.nodeSelector, "mover-node-selector", nil, "data mover: node labels mover pods must run on, KEY=VALUE, comma-separated")
	fs.StringSliceVar(&f.tolerations, "mover-tolerations", nil, "data mover: taints mover pods tolerate, KEY[=VALUE][:EFFECT] (as kubectl taint writes them; no EFFECT: every effect), comma-separated")
	fs.IntVar(&f.limit, "mover-limit", 4, "data mover: mover pods this process runs at once (1-256); each holds one of its work items")
	fs.DurationVar(&f.startTimeout, "mover-start-timeout", kube.DefaultMoverStartTimeout, "data mover: how long a mover pod may take to start (scheduling, its PVC, the image) before its move fails with what held it back")
}

// options validates the flags into the pods' options; an error names the flag.
func (f *moverFlags) options() (kube.MoverOptions, int, error) {
	o := kube.MoverOptions{Image: f.image, ServiceAccount: f.serviceAccount, StartTimeout: f.startTimeout}
	if f.limit < 1 || f.limit > 256 {
		return o, 0, fmt.Errorf("--mover-limit %d: want 1 to 256 mover pods at once per data mover process", f.limit)
	}
	if f.startTimeout < time.Second {
		return o, 0, fmt.Errorf("--mover-start-timeout %s: give a pod at least 1s to start (pulling an image takes minutes)", f.startTimeout)
	}
	switch p := corev1.PullPolicy(f.pullPolicy); p {
	case "":
		if f.image != "" {
			o.ImagePullPolicy = corev1.PullIfNotPresent
		}
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
		o.ImagePullPolicy = p
	default:
		return o, 0, fmt.Errorf("--mover-image-pull-policy %q: want Always, IfNotPresent or Never", f.pullPolicy)
	}
	if f.serviceAccount != "" {
		if errs := validation.IsDNS1123Subdomain(f.serviceAccount); len(errs) > 0 {
			return o, 0, fmt.Errorf("--mover-service-account %q: %s", f.serviceAccount, strings.Join(errs, "; "))
		}
	}
	o.Resources = corev1.ResourceRequirements{Requests: corev1.ResourceList{}, Limits: corev1.ResourceList{}}
	for _, q := range []struct {
		flag, value string
		list        corev1.ResourceList
		name        corev1.ResourceName
	}{
		{"--mover-cpu-request", f.cpuRequest, o.Resources.Requests, corev1.ResourceCPU},
		{"--mover-memory-request", f.memoryRequest, o.Resources.Requests, corev1.ResourceMemory},
		{"--mover-cpu-limit", f.cpuLimit, o.Resources.Limits, corev1.ResourceCPU},
		{"--mover-memory-limit", f.memoryLimit, o.Resources.Limits, corev1.ResourceMemory},
	} {
		if q.value == "" {
			continue
		}
		v, err := resource.ParseQuantity(q.value)
		if err != nil || v.Sign() <= 0 {
			return o, 0, fmt.Errorf("%s %q: want a positive quantity, such as 500m or 1 for CPU and 512Mi or 2Gi for memory", q.flag, q.value)
		}
		q.list[q.name] = v
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := o.Resources.Requests[r]
		lim, hasLim := o.Resources.Limits[r]
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			return o, 0, fmt.Errorf("--mover-%s-request %s is above --mover-%s-limit %s", r, req.String(), r, lim.String())
		}
	}
	if len(f.nodeSelector) > 0 {
		o.NodeSelector = map[string]string{}
	}
	for _, kv := range f.nodeSelector {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || len(validation.IsQualifiedName(k)) > 0 || len(validation.IsValidLabelValue(v)) > 0 {
			return o, 0, fmt.Errorf("--mover-node-selector %q: want KEY=VALUE with a label key and value, such as kubernetes.io/os=linux", kv)
		}
		o.NodeSelector[k] = v
	}
	for _, t := range f.tolerations {
		tol, err := parseToleration(t)
		if err != nil {
			return o, 0, fmt.Errorf("--mover-tolerations %q: %v", t, err)
		}
		o.Tolerations = append(o.Tolerations, tol)
	}
	return o, f.limit, nil
}

// parseToleration reads KEY[=VALUE][:EFFECT], the syntax of kubectl taint.
func parseToleration(s string) (corev1.Toleration, error) {
	rest, effect, hasEffect := strings.Cut(s, ":")
	key, value, hasValue := strings.Cut(rest, "=")
	t := corev1.Toleration{Key: key, Operator: corev1.TolerationOpExists}
	if hasValue {
		t.Operator, t.Value = corev1.TolerationOpEqual, value
		if errs := validation.IsValidLabelValue(value); len(errs) > 0 {
			return t, errors.New(strings.Join(errs, "; "))
		}
	}
	if errs := validation.IsQualifiedName(key); len(errs) > 0 {
		return t, fmt.Errorf("want KEY[=VALUE][:EFFECT] with a taint key, such as dedicated=backup:NoSchedule (%s)", strings.Join(errs, "; "))
	}
	if hasEffect {
		switch e := corev1.TaintEffect(effect); e {
		case corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute:
			t.Effect = e
		default:
			return t, fmt.Errorf("effect %q: want NoSchedule, PreferNoSchedule or NoExecute", effect)
		}
	}
	return t, nil
}

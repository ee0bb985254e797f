package datamover

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/platform/kube"
	"github.com/tidemark-dev/tidemark/pkg/repository"
)

// PodMover moves each volume of a work item in a mover pod on Kubernetes
// (kube.Platform.StartMover), for exactly that item.
//
// Who does what: the mover pod (`tidemark mover`) reads or writes the
// volume and the repository, nothing else; it has no NATS connection and
// no Kubernetes token. The data mover service that took the work item
// keeps it (the bus heartbeats it while the handler waits on the pod),
// relays the pod's progress lines from its log, reads its result from
// the pod's termination message, and publishes the result event and
// records it by idempotency key, exactly as for a move it did itself;
// then it deletes the pod, its PVC and its Secret, after a failure too
// (not when it is stopping: the item's next delivery adopts the pod).
// So the application's namespace never holds anything that could publish
// a command, and a pod that dies leaves its work item with a service
// that reports why.
//
// The repository credentials reach the pod only as files of a Secret
// made for that pod (kube.MoverOptions.Credentials); its spec names them
// through TIDEMARK_REPOSITORY_*_FILE. They are never in an event, a pod
// argument or an environment value.
type PodMover struct {
	Platform *kube.Platform
	// Options shape every mover pod; Env and Credentials must let it open
	// the repository (MoverRepository).
	Options kube.MoverOptions
	Logger  *slog.Logger
	// LogRetry is how soon following a pod's log is tried again while
	// its container has not started (2s when zero).
	LogRetry time.Duration
}

var _ VolumeMover = (*PodMover)(nil)

// moverError is a mover pod's failure as the pod reported it (or the
// kubelet, for a pod that died), with whether retrying can help.
type moverError struct {
	msg       string
	permanent bool
}

func (e *moverError) Error() string { return e.msg }

// Export implements VolumeMover: the item's snapshot (a VolumeSnapshot,
// or a live PVC) is mounted read-only in a mover pod.
func (m *PodMover) Export(ctx context.Context, req events.VolumeExportRequested, progress func(repository.Progress)) (repository.ExportResult, error) {
	item, err := json.Marshal(req)
	if err != nil {
		return repository.ExportResult{}, err
	}
	res, err := m.run(ctx, kube.MoverRequest{
		Run: req.RunID, Volume: req.Volume, Direction: kube.MoverExport, Item: string(item), Snapshot: req.SnapshotID,
	}, progress)
	if err != nil {
		return repository.ExportResult{}, err
	}
	if res.ManifestID == "" {
		return repository.ExportResult{}, fmt.Errorf("the mover pod of volume %q succeeded but reported no snapshot", req.Volume)
	}
	return repository.ExportResult{
		ManifestID: res.ManifestID, Files: res.Files, Bytes: res.Bytes, BytesUploaded: res.BytesUploaded,
		StartedAt: res.StartedAt, FinishedAt: res.FinishedAt,
	}, nil
}

// Import implements VolumeMover: the item's target is a PVC,
// namespace/name, mounted read-write in a mover pod.
func (m *PodMover) Import(ctx context.Context, req events.VolumeImportRequested, progress func(repository.Progress)) (repository.ImportResult, string, error) {
	ns, pvc, ok := kube.ParsePVCRef(req.Target)
	if !ok {
		return repository.ImportResult{}, "", fmt.Errorf("%w: on Kubernetes an import's target is a PVC, namespace/name, not %q", repository.ErrInvalidRequest, req.Target)
	}
	item, err := json.Marshal(req)
	if err != nil {
		return repository.ImportResult{}, "", err
	}
	res, err := m.run(ctx, kube.MoverRequest{
		Run: req.RunID, Volume: req.Volume, Direction: kube.MoverImport, Item: string(item), Namespace: ns, PVC: pvc,
	}, progress)
	if err != nil {
		return repository.ImportResult{}, "", err
	}
	previous := ""
	if res.Previous != "" {
		previous = req.Target + "/" + res.Previous
	}
	return repository.ImportResult{ManifestID: string(req.ManifestID), Files: res.Files, Bytes: res.Bytes,
		StartedAt: res.StartedAt, FinishedAt: res.FinishedAt}, previous, nil
}

func (m *PodMover) run(ctx context.Context, req kube.MoverRequest, progress func(repository.Progress)) (res MoveResult, err error) {
	mv, err := m.Platform.StartMover(ctx, req, m.Options)
	if err != nil {
		if ctx.Err() == nil {
			err = classify(err)
		}
		return MoveResult{}, err
	}
	pod := mv.Pod.Namespace + "/" + mv.Pod.Name
	defer func() {
		if ctx.Err() != nil {
			// This process is stopping: its work item goes back to the
			// queue, and the data mover that gets it next adopts the pod,
			// still moving, instead of starting over. If the run ends
			// first, the sweep of ended runs deletes it.
			m.logger().Info("stopping: the mover pod is left running for the work item's next delivery", "pod", pod)
			return
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if cerr := mv.Cleanup(cctx); cerr != nil {
			// The run's sweep (or the garbage collector, for the Secret)
			// removes what is left.
			m.logger().Warn("deleting a mover pod", "pod", pod, "err", cerr)
		}
	}()
	err = func() error {
		m.logger().Info("mover pod started", "run", req.Run, "volume", req.Volume, "direction", req.Direction, "pod", pod)
		relayCtx, stopRelay := context.WithCancel(ctx)
		relayed := make(chan struct{})
		var following atomic.Bool
		go func() {
			defer close(relayed)
			m.relay(relayCtx, mv, &following, progress)
		}()
		end, err := mv.WaitEnd(ctx)
		if following.Load() {
			// The log ends with the container; give the relay a moment
			// to pass on its last lines before the pod is deleted.
			select {
			case <-relayed:
			case <-time.After(2 * time.Second):
			}
		}
		stopRelay()
		<-relayed
		if err != nil {
			return err
		}
		res, err = result(mv, end)
		return err
	}()
	if err != nil && ctx.Err() == nil {
		err = classify(err)
	}
	return res, err
}

// result reads how the pod ended: its termination message is the
// mover's MoveResult, unless the container died before writing one (then
// the kubelet put the tail of its log there).
func result(mv *kube.Mover, end kube.MoverEnd) (MoveResult, error) {
	pod := mv.Pod.Namespace + "/" + mv.Pod.Name
	var res MoveResult
	parsed := json.Unmarshal([]byte(strings.TrimSpace(end.Message)), &res) == nil
	switch {
	case end.Succeeded && parsed && res.Error == "":
		return res, nil
	case end.Succeeded:
		return MoveResult{}, &moverError{msg: fmt.Sprintf("mover pod %s succeeded without reporting a result (termination message %q)", pod, end.Message)}
	case parsed && res.Error != "":
		return MoveResult{}, &moverError{msg: fmt.Sprintf("mover pod %s: %s", pod, res.Error), permanent: res.Permanent}
	}
	end.Message = logTail(end.Message)
	return MoveResult{}, &moverError{msg: fmt.Sprintf("mover pod %s: %s", pod, end)}
}

// logTail keeps the last lines of a log a message carries, on one line.
func logTail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	out := strings.Join(lines, " | ")
	if len(out) > 1024 {
		out = "…" + out[len(out)-1024:]
	}
	return out
}

// classify marks what retrying cannot help: the request itself cannot be
// carried out (a snapshot that is gone, a spec Kubernetes refuses).
func classify(err error) error {
	var me *moverError
	switch {
	case errors.As(err, &me):
		return err
	case errors.Is(err, kube.ErrNotFound):
		return fmt.Errorf("%w: %w", ErrSnapshotNotFound, err)
	case errors.Is(err, kube.ErrInvalidSpec):
		return &moverError{msg: err.Error(), permanent: true}
	}
	return err
}

// relay passes the mover's progress lines on, from its log. Progress is
// advisory: where the log cannot be read (the container has not started
// yet, or no kubelet serves logs) it waits and tries again, and it never
// fails the move.
func (m *PodMover) relay(ctx context.Context, mv *kube.Mover, following *atomic.Bool, progress func(repository.Progress)) {
	retry := m.LogRetry
	if retry <= 0 {
		retry = 2 * time.Second
	}
	for ctx.Err() == nil {
		rc, err := mv.Logs(ctx)
		if err == nil {
			following.Store(true)
			RelayProgress(rc, progress)
			rc.Close()
			return
		}
		m.logger().Debug("mover pod log not readable yet", "pod", mv.Pod.Namespace+"/"+mv.Pod.Name, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(retry):
		}
	}
}

// RelayProgress calls progress for each ProgressLine of a mover's output
// and skips every other line, until r ends.
func RelayProgress(r io.Reader, progress func(repository.Progress)) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		if !json.Valid(line) {
			continue
		}
		var pl ProgressLine
		if json.Unmarshal(line, &pl) != nil || pl.Progress == nil {
			continue
		}
		c := pl.Progress
		progress(repository.Progress{BytesDone: c.BytesDone, BytesTotal: c.BytesTotal, FilesDone: c.FilesDone, FilesTotal: c.FilesTotal})
	}
}

func (m *PodMover) logger() *slog.Logger {
	if m.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Logger
}

// runEnds are the facts after which a run has no use for mover pods.
var runEnds = []events.Payload{events.BackupFailed{}, events.BackupCancelled{}, events.RestoreFailed{}, events.RestoreCancelled{}}

// SweepEndedRuns deletes the mover pods, PVCs and Secrets of every run
// that fails or is cancelled (kube.Platform.CleanupMovers), until ctx is
// done: a mover still running for such a run is stopped (its work item
// then fails, saying its pod was deleted), and one left behind by a data
// mover that died is removed. The data movers share the consumer, so
// each run is swept once; the first time it also sweeps the runs that
// ended before, from the audit log.
func (m *PodMover) SweepEndedRuns(ctx context.Context, b bus.Consumer) error {
	var subjects []string
	for _, p := range runEnds {
		d, _ := events.Lookup(p.EventType())
		subjects = append(subjects, d.Subject())
	}
	spec := bus.ConsumerSpec{
		Name: "datamover-mover-sweep", Stream: bus.StreamEvents, FilterSubjects: subjects,
		AckWait: 30 * time.Second, MaxDeliver: 10, Concurrency: 1,
	}
	return b.Consume(ctx, spec, func(ctx context.Context, ev events.Event) ([]events.Event, error) {
		run := endedRun(ev)
		if run == "" {
			return nil, nil
		}
		if err := m.Platform.CleanupMovers(ctx, run); err != nil {
			return nil, fmt.Errorf("deleting the mover pods of ended run %s: %w", run, err)
		}
		m.logger().Debug("swept the mover pods of an ended run", "run", run, "type", ev.Type())
		return nil, nil
	})
}

func endedRun(ev events.Event) events.RunID {
	if p, ok := events.As[events.BackupFailed](ev); ok {
		return p.RunID
	}
	if p, ok := events.As[events.BackupCancelled](ev); ok {
		return p.RunID
	}
	if p, ok := events.As[events.RestoreFailed](ev); ok {
		return p.RunID
	}
	if p, ok := events.As[events.RestoreCancelled](ev); ok {
		return p.RunID
	}
	return ""
}

package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/cenats"
	"github.com/tidemark-dev/tidemark/pkg/natsserver"
	"github.com/tidemark-dev/tidemark/pkg/repository"
	"github.com/tidemark-dev/tidemark/services/datamover"
)

// moverMain is `benchmover mover`: one data mover process, the service as
// `tidemark serve --services datamover` runs it, on a given repository,
// with snapshot IDs resolved to directories under -root. It prints
// "ready" once consuming and stops on SIGTERM.
func moverMain(args []string) int {
	fl := flag.NewFlagSet("mover", flag.ExitOnError)
	url := fl.String("nats", "", "NATS URL")
	repo := fl.String("repo", "", "repository directory")
	cache := fl.String("cache", "", "kopia cache directory")
	root := fl.String("root", "", "snapshot IDs are directories under this")
	concurrency := fl.Int("concurrency", 1, "volumes at once")
	compression := fl.String("compression", "", "kopia compressor (default: Tidemark's)")
	_ = fl.Parse(args)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	nc, err := nats.Connect(*url)
	if err != nil {
		log.Error("connect", "err", err)
		return 1
	}
	defer nc.Close()
	b, err := bus.New(nc, bus.WithSource("tidemark/bench-mover"), bus.WithLogger(log))
	if err != nil {
		log.Error("bus", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	r, err := repository.Open(ctx, repository.Config{Path: *repo, Password: os.Getenv(repository.EnvPassword), CacheDir: *cache, Logger: log,
		Tuning: repository.Tuning{Compression: *compression}})
	if err != nil {
		log.Error("repository", "err", err)
		return 1
	}
	defer r.Close(context.Background())
	resolve := func(_ context.Context, id events.SnapshotID) (string, error) {
		return filepath.Join(*root, string(id)), nil
	}
	s, err := datamover.New(datamover.Config{Repository: r, Resolver: resolve, Concurrency: *concurrency, Logger: log}, b)
	if err != nil {
		log.Error("mover", "err", err)
		return 1
	}
	go func() {
		// The consumers are created within moments of Run starting.
		time.Sleep(300 * time.Millisecond)
		fmt.Println("ready")
	}()
	if err := s.Run(ctx); err != nil {
		log.Error("run", "err", err)
		return 1
	}
	return 0
}

// mover is a running mover process.
type mover struct {
	cmd   *exec.Cmd
	ready chan struct{}
	done  chan struct{}
	peak  int64 // peak RSS in bytes, after it exited
}

func (b *bench) startMover(env *busEnv, repo, root string, concurrency int, flags ...string) (*mover, error) {
	cache := repo + "-cache"
	cmd := exec.Command(b.self, append([]string{"mover", "-nats", env.url, "-repo", repo, "-cache", cache, "-root", root,
		"-concurrency", fmt.Sprint(concurrency)}, flags...)...)
	cmd.Env = append(os.Environ(), repository.EnvPassword+"="+password)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	m := &mover{cmd: cmd, ready: make(chan struct{}), done: make(chan struct{})}
	go func() {
		var once sync.Once
		lines(out, func(l string) {
			if strings.TrimSpace(l) == "ready" {
				once.Do(func() { close(m.ready) })
			}
		})
		_ = cmd.Wait()
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			m.peak = ru.Maxrss * 1024
		}
		close(m.done)
	}()
	select {
	case <-m.ready:
		return m, nil
	case <-m.done:
		return nil, fmt.Errorf("mover exited at start")
	case <-time.After(time.Minute):
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("mover did not start")
	}
}

// stop stops the mover and returns its peak RSS.
func (m *mover) stop() int64 {
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(time.Minute):
		_ = m.cmd.Process.Kill()
		<-m.done
	}
	return m.peak
}

// busEnv is an embedded NATS server with Tidemark's topology, a bus on it
// and a stream of the facts published.
type busEnv struct {
	srv   *natsserver.Server
	nc    *nats.Conn
	bus   *bus.Bus
	url   string
	facts chan events.Event
	stop  func()
}

func startBus(dir string) (*busEnv, error) {
	srv, err := natsserver.Start(natsserver.Config{StoreDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		return nil, err
	}
	nc, err := srv.Connect()
	if err != nil {
		return nil, err
	}
	b, err := bus.New(nc, bus.WithSource("tidemark/bench"))
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	if err := b.EnsureTopology(ctx); err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	cons, err := js.OrderedConsumer(ctx, bus.StreamEvents, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return nil, err
	}
	facts := make(chan events.Event, 100000)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		ev, err := cenats.Decode(ctx, &nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
		if err == nil {
			facts <- ev
		}
	})
	if err != nil {
		return nil, err
	}
	return &busEnv{srv: srv, nc: nc, bus: b, url: srv.ClientURL(), facts: facts, stop: func() {
		cc.Stop()
		nc.Close()
		srv.Shutdown()
	}}, nil
}

func (e *busEnv) publish(p events.Payload, subject string) (events.Event, error) {
	ev := events.New("tidemark/bench", subject, p, time.Now())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := e.bus.Publish(ctx, ev)
	return ev, err
}

// await waits for n facts that match, failing on a failure fact of the
// same run.
func (e *busEnv) await(n int, timeout time.Duration, match func(events.Event) (ok bool, failed error)) ([]events.Event, error) {
	var got []events.Event
	deadline := time.After(timeout)
	for len(got) < n {
		select {
		case ev := <-e.facts:
			ok, failed := match(ev)
			if failed != nil {
				return got, failed
			}
			if ok {
				got = append(got, ev)
			}
		case <-deadline:
			return got, fmt.Errorf("timed out with %d of %d results", len(got), n)
		}
	}
	return got, nil
}

// exportResult matches the result of an export in run.
func exportResult(run events.RunID) func(events.Event) (bool, error) {
	return func(ev events.Event) (bool, error) {
		if p, ok := events.As[events.VolumeExported](ev); ok && p.RunID == run {
			return true, nil
		}
		if p, ok := events.As[events.VolumeExportFailed](ev); ok && p.RunID == run {
			return false, fmt.Errorf("export %s/%s failed: %s", run, p.Volume, p.Error)
		}
		return false, nil
	}
}

func importResult(run events.RunID) func(events.Event) (bool, error) {
	return func(ev events.Event) (bool, error) {
		if p, ok := events.As[events.VolumeImported](ev); ok && p.RunID == run {
			return true, nil
		}
		if p, ok := events.As[events.VolumeImportFailed](ev); ok && p.RunID == run {
			return false, fmt.Errorf("import %s/%s failed: %s", run, p.Volume, p.Error)
		}
		return false, nil
	}
}

func exportCmd(run events.RunID, app, volume, snapshot string) events.VolumeExportRequested {
	return events.VolumeExportRequested{
		RunID: run, Application: app, Volume: volume, SourceKind: datamover.SourceSnapshot,
		SnapshotID: events.SnapshotID(snapshot), Repository: "default", IdempotencyKey: string(run) + ":" + volume,
	}
}

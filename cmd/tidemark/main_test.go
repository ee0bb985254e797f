package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// The test binary doubles as the tidemark binary, so subprocess tests run
// exactly the code under test without a separate build.
func TestMain(m *testing.M) {
	if os.Getenv("TIDEMARK_TEST_RUN_MAIN") == "1" {
		os.Args = append([]string{"tidemark"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// tidemarkProcess is `tidemark ARGS...` running as a child process.
type tidemarkProcess struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []map[string]any
	done chan error
}

func startTidemark(t testing.TB, args ...string) *tidemarkProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "TIDEMARK_TEST_RUN_MAIN=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &tidemarkProcess{cmd: cmd, done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) != nil {
				rec = map[string]any{"msg": sc.Text()}
			}
			p.mu.Lock()
			p.logs = append(p.logs, rec)
			p.mu.Unlock()
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
	})
	return p
}

// logField waits for a log record with msg and returns its field.
func (p *tidemarkProcess) logField(t testing.TB, msg, field string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		for _, rec := range p.logs {
			if rec["msg"] == msg {
				p.mu.Unlock()
				return fmt.Sprint(rec[field])
			}
		}
		p.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %q log line; logs: %v", msg, p.logs)
	return ""
}

func (p *tidemarkProcess) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		return err
	case <-time.After(timeout):
		t.Fatalf("tidemark did not exit within %s", timeout)
		return nil
	}
}

// runTidemark runs a short-lived tidemark command in-process.
func runTidemark(t *testing.T, ctx context.Context, args ...string) (string, error) {
	t.Helper()
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestServeBecomesReadyAndStopsCleanlyOnSIGTERM(t *testing.T) {
	dataDir := t.TempDir()
	p := startTidemark(t, "serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--log-format", "json")
	httpAddr := p.logField(t, "tidemark serving", "http")
	natsURL := p.logField(t, "embedded NATS started", "url")

	if code, body := get(t, "http://"+httpAddr+"/healthz"); code != 200 {
		t.Fatalf("/healthz = %d %s", code, body)
	}
	if code, body := get(t, "http://"+httpAddr+"/readyz"); code != 200 {
		t.Fatalf("/readyz = %d %s", code, body)
	}

	// A second process joins the embedded server: publish, then replay.
	ctx := context.Background()
	out, err := runTidemark(t, ctx, "events", "publish", "io.tidemark.backup.accepted.v1", "--nats-url", natsURL,
		"--subject", "shop/postgres", "--correlation-id", "run-7",
		"--data", `{"runId":"run-7","application":"shop/postgres","blueprint":"postgres"}`)
	if err != nil {
		t.Fatalf("publish: %v\n%s", err, out)
	}
	out, err = runTidemark(t, ctx, "events", "tail", "--nats-url", natsURL, "--since", "1h", "--limit", "1", "-o", "json")
	if err != nil {
		t.Fatalf("tail: %v\n%s", err, out)
	}
	var ce map[string]any
	if err := json.Unmarshal([]byte(out), &ce); err != nil {
		t.Fatalf("tail -o json printed %q: %v", out, err)
	}
	if ce["type"] != "io.tidemark.backup.accepted.v1" || ce["correlationid"] != "run-7" || ce["subject"] != "shop/postgres" {
		t.Fatalf("tail printed %v", ce)
	}
	if code, body := get(t, "http://"+httpAddr+"/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("/metrics = %d", code)
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t, 40*time.Second); err != nil {
		t.Fatalf("tidemark serve exited with %v after SIGTERM, want 0", err)
	}
	p.logField(t, "tidemark stopped cleanly", "msg")

	// The streams persisted: a restart on the same data dir replays the event.
	p2 := startTidemark(t, "serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--log-format", "json")
	natsURL = p2.logField(t, "embedded NATS started", "url")
	p2.logField(t, "tidemark serving", "http")
	out, err = runTidemark(t, ctx, "events", "tail", "--nats-url", natsURL, "--since", "1h", "--limit", "1")
	if err != nil || !strings.Contains(out, "io.tidemark.backup.accepted.v1") || !strings.Contains(out, "run=run-7") {
		t.Fatalf("after restart, tail printed %q, %v", out, err)
	}
	_ = p2.cmd.Process.Signal(syscall.SIGTERM)
	if err := p2.wait(t, 40*time.Second); err != nil {
		t.Fatalf("second serve exited with %v; logs: %v", err, p2.logs)
	}
}

func TestTailFiltersByTypeAndSubject(t *testing.T) {
	p := startTidemark(t, "serve", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--log-format", "json")
	natsURL := p.logField(t, "embedded NATS started", "url")
	ctx := context.Background()
	for _, e := range []struct{ typ, subject, data string }{
		{"io.tidemark.backup.accepted.v1", "shop/postgres", `{"runId":"r1","application":"shop/postgres","blueprint":"postgres"}`},
		{"io.tidemark.backup.accepted.v1", "billing/mariadb", `{"runId":"r2","application":"billing/mariadb","blueprint":"mariadb"}`},
		{"io.tidemark.restorepoint.expired.v1", "shop/postgres", `{"restorePointId":"rp1","application":"shop/postgres","reason":"retention"}`},
	} {
		if out, err := runTidemark(t, ctx, "events", "publish", e.typ, "--nats-url", natsURL, "--subject", e.subject, "--data", e.data); err != nil {
			t.Fatalf("publish: %v %s", err, out)
		}
	}
	out, err := runTidemark(t, ctx, "events", "tail", "--nats-url", natsURL, "--since", "1h", "--limit", "1", "--type", "io.tidemark.backup.*", "--subject", "billing/*")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "billing/mariadb") || strings.Count(out, "\n") != 1 {
		t.Fatalf("filtered tail printed %q", out)
	}
	out, err = runTidemark(t, ctx, "events", "tail", "--nats-url", natsURL, "--since", "1h", "--limit", "1", "--type", "*.expired.*")
	if err != nil || !strings.Contains(out, "restorepoint.expired") {
		t.Fatalf("tail --type '*.expired.*' printed %q, %v", out, err)
	}
}

func TestBadSettingsAreRejectedWithTheFlagName(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"serve", "--listen", "8480"}, nil, "--listen"},
		{[]string{"serve", "--services", "mover"}, nil, `unknown service "mover"`},
		{[]string{"serve", "--services", "scheduler"}, nil, "not built into this version"},
		{[]string{"serve", "--stream-replicas", "2"}, nil, "--stream-replicas"},
		{[]string{"serve", "--snapshot-max-age", "10m"}, nil, "--snapshot-max-age"},
		{[]string{"serve", "--instance-id", "host.example"}, nil, "--instance-id"},
		{[]string{"serve", "--shutdown-timeout", "soon"}, nil, "--shutdown-timeout"},
		{[]string{"serve"}, map[string]string{"TIDEMARK_SHUTDOWN_TIMEOUT": "10"}, "TIDEMARK_SHUTDOWN_TIMEOUT"},
		{[]string{"serve", "--nats-url", "nats://127.0.0.1:1", "--nats-tls-cert", "main.go"}, nil, "--nats-tls-key"},
		{[]string{"events", "tail", "-o", "yaml"}, nil, "--output"},
		{[]string{"events", "publish", "io.tidemark.backup.requested.v1", "--data", `{"application":"x","maxFreeze":"60"}`}, nil, "maxFreeze"},
		{[]string{"events", "publish", "io.tidemark.backup.exploded.v1", "--data", `{}`}, nil, "unknown event type"},
	}
	for _, c := range cases {
		for k, v := range c.env {
			t.Setenv(k, v)
		}
		_, err := runTidemark(t, ctx, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v %v: err = %v, want it to mention %q", c.env, c.args, err, c.want)
		}
		for k := range c.env {
			os.Unsetenv(k)
		}
	}
}

// Flags beat the environment, which beats the config file.
func TestSettingsPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "tidemark.yaml")
	if err := os.WriteFile(cfg, []byte("listen: 127.0.0.1:1111\nshutdown-timeout: 7s\nservices: [all]\nstream-replicas: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"TIDEMARK_SHUTDOWN_TIMEOUT": "9s", "TIDEMARK_LISTEN": "127.0.0.1:2222"}
	var got *serveOptions
	root := newRootCommand()
	serve, _, _ := root.Find([]string{"serve"})
	serve.RunE = func(cmd *cobra.Command, args []string) error {
		got = &serveOptions{}
		got.listen, _ = cmd.Flags().GetString("listen")
		got.shutdownTimeout, _ = cmd.Flags().GetDuration("shutdown-timeout")
		got.replicas, _ = cmd.Flags().GetInt("stream-replicas")
		return nil
	}
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		return applySettings(cmd, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	}
	root.SetArgs([]string{"serve", "--config", cfg, "--listen", "127.0.0.1:3333"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if got.listen != "127.0.0.1:3333" {
		t.Errorf("listen = %s, want the flag's value", got.listen)
	}
	if got.shutdownTimeout != 9*time.Second {
		t.Errorf("shutdown-timeout = %s, want the environment's 9s over the file's 7s", got.shutdownTimeout)
	}
	if got.replicas != 3 {
		t.Errorf("stream-replicas = %d, want the file's 3", got.replicas)
	}
}

func TestConfigFileRejectsUnknownSettings(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "tidemark.yaml")
	if err := os.WriteFile(cfg, []byte("data_dir: /srv/tidemark\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := runTidemark(t, context.Background(), "serve", "--config", cfg)
	if err == nil || !strings.Contains(err.Error(), `unknown setting "data_dir"`) {
		t.Fatalf("err = %v", err)
	}
}

// On Kubernetes every service starts before NATS has an address: serve
// keeps dialling until NATS answers instead of exiting.
func TestServeWaitsForNATS(t *testing.T) {
	port := freeTCPPort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	svc := startTidemark(t, "serve", "--services", "catalog", "--nats-url", url, "--listen", "127.0.0.1:0", "--log-format", "json",
		"--data-dir", t.TempDir(), "--instance-id", "waiter")
	svc.logField(t, "NATS not reachable yet; retrying", "url")
	select {
	case err := <-svc.done:
		t.Fatalf("serve exited while NATS was down: %v", err)
	default:
	}
	startTidemark(t, "serve", "--services", "none", "--nats-listen", fmt.Sprintf("127.0.0.1:%d", port), "--listen", "127.0.0.1:0",
		"--log-format", "json", "--data-dir", t.TempDir())
	svc.logField(t, "tidemark serving", "services")
}

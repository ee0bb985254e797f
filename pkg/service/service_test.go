package service

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

type runFunc func(ctx context.Context) error

func (f runFunc) Run(ctx context.Context) error { return f(ctx) }

func TestResolveExplainsWhatIsMissing(t *testing.T) {
	if _, err := Resolve([]string{"coordinator"}); err == nil || !strings.Contains(err.Error(), "not built into this version") {
		t.Errorf("a planned but unbuilt service: %v", err)
	}
	if _, err := Resolve([]string{"mover"}); err == nil || !strings.Contains(err.Error(), `unknown service "mover"`) {
		t.Errorf("an unknown service: %v", err)
	}
	got, err := Resolve([]string{"all"})
	if err != nil || len(got) != len(Registered()) {
		t.Errorf("all = %v, %v", got, err)
	}
}

func TestRunAllStopsTheOthersWhenOneFails(t *testing.T) {
	stopped := make(chan struct{})
	err := RunAll(context.Background(), map[string]Service{
		"broken": runFunc(func(ctx context.Context) error { return errors.New("disk full") }),
		"healthy": runFunc(func(ctx context.Context) error {
			<-ctx.Done()
			close(stopped)
			return nil
		}),
	}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "service broken: disk full") {
		t.Fatalf("RunAll = %v", err)
	}
	select {
	case <-stopped:
	case <-time.After(time.Second):
		t.Fatal("the healthy service was not stopped")
	}
}

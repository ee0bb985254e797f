package hookrunner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/sqlsession"
)

type holdKey struct {
	run  events.RunID
	step string
}

func (k holdKey) kvKey() string { return bus.KeyFor("hold", string(k.run)+"\x00"+k.step) }

// hold is a live session keeping a lock.
type hold struct {
	key      holdKey
	subject  string
	session  *sqlsession.Session
	release  []string
	since    time.Time
	deadline *time.Timer
	// done is closed when the hold ends, stopping its progress reports.
	done chan struct{}
}

// holdState is the durable record of a hold, kept in KV.
type holdState struct {
	Holder string `json:"holder"`
	// State is "holding" or "released".
	State string `json:"state"`
	// RunID and Step name the hold, for whoever answers for a lost holder.
	RunID events.RunID `json:"runId,omitempty"`
	Step  string       `json:"step,omitempty"`
}

func (s *Service) recordHold(ctx context.Context, key holdKey, st holdState) error {
	st.RunID, st.Step = key.run, key.step
	raw, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return s.kv.Put(ctx, key.kvKey(), raw)
}

func (s *Service) startHold(key holdKey, req events.HookRequested, session *sqlsession.Session, release []string, holdFor time.Duration) {
	h := &hold{key: key, subject: string(req.RunID), session: session, release: release, since: s.cfg.Now(), done: make(chan struct{})}
	s.mu.Lock()
	if old := s.holds[key]; old != nil {
		// A duplicate hold for the same step: keep the newer session only.
		old.deadline.Stop()
		close(old.done)
		old.session.Close()
	}
	s.holds[key] = h
	s.mu.Unlock()
	h.deadline = time.AfterFunc(holdFor, func() {
		if h := s.takeHold(key); h != nil {
			s.cfg.Logger.Warn("no release before the hold deadline; releasing the lock (dead man's switch)", "run", key.run, "step", key.step, "holdFor", holdFor)
			s.publishRelease(h, "deadline")
		}
	})
	go s.reportProgress(h, holdFor)
}

// reportProgress says, every HoldHeartbeat, that the lock is still held and
// for how long, so a watcher sees a freeze as it happens and not only after.
func (s *Service) reportProgress(h *hold, holdFor time.Duration) {
	t := time.NewTicker(s.cfg.HoldHeartbeat)
	defer t.Stop()
	for {
		select {
		case <-h.done:
			return
		case <-t.C:
			held := events.Duration(s.cfg.Now().Sub(h.since))
			ev := events.Event{Subject: h.subject, CorrelationID: string(h.key.run), Data: events.HookProgress{
				RunID: h.key.run, Step: h.key.step, HeldFor: &held,
				Message: fmt.Sprintf("holding the lock; the dead man's switch releases it after %s", holdFor),
			}}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if _, err := s.bus.Publish(ctx, ev); err != nil {
				s.cfg.Logger.Warn("reporting a held lock", "run", h.key.run, "step", h.key.step, "err", err)
			}
			cancel()
		}
	}
}

// takeHold removes and returns the hold for key, if this instance has it.
// Whoever takes it releases it: the request, the deadline or shutdown.
func (s *Service) takeHold(key holdKey) *hold {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.holds[key]
	if h == nil {
		return nil
	}
	delete(s.holds, key)
	if h.deadline != nil {
		h.deadline.Stop()
	}
	close(h.done)
	return h
}

// finish runs the release statements on the held session and closes it.
// Closing ends any session-bound lock even when the statements failed.
func (s *Service) finish(h *hold, by string) events.HookReleased {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ReleaseTimeout)
	defer cancel()
	outputs, err := h.session.Run(ctx, h.release)
	closeErr := h.session.Close()
	r := events.HookReleased{RunID: h.key.run, Step: h.key.step, HeldFor: events.Duration(s.cfg.Now().Sub(h.since)), By: by, Outputs: nonEmpty(outputs)}
	if err = errors.Join(err, closeErr); err != nil {
		r.Error = err.Error()
	}
	if err := s.recordHold(ctx, h.key, holdState{Holder: s.cfg.InstanceID, State: "released"}); err != nil {
		s.cfg.Logger.Warn("recording a release", "run", h.key.run, "step", h.key.step, "err", err)
	}
	return r
}

// publishRelease releases h outside any command (deadline, shutdown) and
// reports it.
func (s *Service) publishRelease(h *hold, by string) {
	r := s.finish(h, by)
	ev := events.Event{Subject: h.subject, CorrelationID: string(h.key.run), Data: r}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.bus.Publish(ctx, ev); err != nil {
		s.cfg.Logger.Error("reporting a release", "run", h.key.run, "step", h.key.step, "by", by, "err", err)
	}
}

func (s *Service) releaseAll(by string) {
	s.mu.Lock()
	keys := make([]holdKey, 0, len(s.holds))
	for k := range s.holds {
		keys = append(keys, k)
	}
	s.mu.Unlock()
	for _, k := range keys {
		if h := s.takeHold(k); h != nil {
			s.publishRelease(h, by)
		}
	}
}

// handleRelease releases a held lock on request. Releasing is idempotent:
// a second request, or one for a step that never took a lock, succeeds.
func (s *Service) handleRelease(ctx context.Context, ev events.Event) ([]events.Event, error) {
	req, ok := events.As[events.HookReleaseRequested](ev)
	if !ok {
		return nil, bus.Permanentf("hookrunner: unexpected %s", ev.Type())
	}
	hk := holdKey{req.RunID, req.Step}
	var r events.HookReleased
	// A lock this process holds is released before anything else: every
	// round trip spent first is added to the application's freeze.
	if h := s.takeHold(hk); h != nil {
		r = s.finish(h, "request")
	} else if p, done, err := s.releases.Load(ctx, req.IdempotencyKey); err != nil {
		return nil, err
	} else if done {
		return []events.Event{{Subject: ev.Subject, Data: p}}, nil
	} else {
		r = events.HookReleased{RunID: req.RunID, Step: req.Step, By: "request"}
		raw, err := s.kv.Get(ctx, hk.kvKey())
		switch {
		case errors.Is(err, bus.ErrKeyNotFound):
			// The step never took its lock: releasing nothing succeeds.
		case err != nil:
			return nil, err
		default:
			var st holdState
			if json.Unmarshal(raw, &st) == nil && st.State == "holding" {
				// Recorded as held, but not by this live process: the
				// session ended with the process that opened it, and the
				// database released the lock then.
				r.By = "disconnect"
				r.Error = "the session holding the lock had already ended (its hookrunner restarted); the database released the lock when it ended"
				_ = s.recordHold(ctx, hk, holdState{Holder: st.Holder, State: "released"})
			}
		}
	}
	if err := s.releases.Store(ctx, req.IdempotencyKey, r); err != nil {
		return nil, err
	}
	return []events.Event{{Subject: ev.Subject, Data: r}}, nil
}

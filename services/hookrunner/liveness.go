package hookrunner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
)

// A held lock lives in its hookrunner's session: when that process dies,
// the database ends the session and the lock with it. What does not end
// by itself is the run's wait for the release: releases are routed to the
// holder's own subject, which nobody reads any more. So every instance
// says, in KV, until when it is alive; and any instance that sees a
// holder's word run out answers for it — hook.released "disconnect" for
// each lock the dead holder still had recorded — so the coordinator fails
// the run at once instead of waiting out its release timeouts.

// Liveness defaults.
const (
	DefaultLivenessTTL      = 10 * time.Second
	DefaultLivenessInterval = 2 * time.Second
)

type liveness struct {
	ExpiresAt time.Time `json:"expiresAt"`
}

func liveKey(instance string) string { return "live." + instance }

// beat records this instance alive for LivenessTTL from now.
func (s *Service) beat(ctx context.Context) error {
	raw, err := json.Marshal(liveness{ExpiresAt: s.cfg.Now().Add(s.cfg.LivenessTTL).UTC()})
	if err != nil {
		return err
	}
	return s.kv.Put(ctx, liveKey(s.cfg.InstanceID), raw)
}

// keepAlive beats every LivenessInterval until ctx ends, looking for dead
// holders after each beat, then withdraws this instance's word.
func (s *Service) keepAlive(ctx context.Context) {
	t := time.NewTicker(s.cfg.LivenessInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = s.kv.Delete(dctx, liveKey(s.cfg.InstanceID))
			cancel()
			return
		case <-t.C:
		}
		bctx, cancel := context.WithTimeout(ctx, s.cfg.LivenessInterval*2)
		if err := s.beat(bctx); err != nil && ctx.Err() == nil {
			s.cfg.Logger.Warn("recording this hookrunner alive", "err", err)
		}
		if err := s.sweepOrphans(bctx, false); err != nil && ctx.Err() == nil {
			s.cfg.Logger.Warn("looking for locks of lost hookrunners", "err", err)
		}
		cancel()
	}
}

// sweepOrphans answers for the held locks of hookrunners that are gone.
// The hold records are read only when some instance's word ran out, or
// at start (atStart), when this instance's own records from a previous
// life count too: its sessions died with that process.
func (s *Service) sweepOrphans(ctx context.Context, atStart bool) error {
	vkv, ok := s.kv.(bus.VersionedKV)
	if !ok {
		return nil
	}
	lives, err := vkv.EntriesUnder(ctx, "live")
	if err != nil {
		return err
	}
	now := s.cfg.Now()
	alive := map[string]bool{}
	var expired []bus.Entry
	for _, e := range lives {
		var l liveness
		inst := e.Key[len("live."):]
		if json.Unmarshal(e.Value, &l) == nil && l.ExpiresAt.After(now) {
			alive[inst] = true
		} else {
			expired = append(expired, e)
		}
	}
	if !atStart && len(expired) == 0 {
		return nil
	}
	holds, err := vkv.EntriesUnder(ctx, "hold")
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range holds {
		var st holdState
		if json.Unmarshal(e.Value, &st) != nil || st.State != "holding" || st.RunID == "" {
			continue
		}
		self := st.Holder == s.cfg.InstanceID
		if (self && !atStart) || (!self && alive[st.Holder]) {
			continue
		}
		errs = append(errs, s.answerForLost(ctx, vkv, e, st))
	}
	for _, e := range expired {
		// Swept: the next instance need not look again. Losing this race
		// to another instance is fine.
		_ = vkv.DeleteAt(ctx, e.Key, e.Revision)
	}
	return errors.Join(errs...)
}

// answerForLost marks a dead holder's lock released and says so. Only the
// instance whose compare-and-set wins publishes.
func (s *Service) answerForLost(ctx context.Context, vkv bus.VersionedKV, e bus.Entry, st holdState) error {
	released := st
	released.State = "released"
	raw, err := json.Marshal(released)
	if err != nil {
		return err
	}
	if _, err := vkv.Update(ctx, e.Key, raw, e.Revision); errors.Is(err, bus.ErrConflict) {
		return nil
	} else if err != nil {
		return err
	}
	s.cfg.Logger.Warn("a hookrunner holding a lock is gone; its session, and the lock, ended with it", "run", st.RunID, "step", st.Step, "holder", st.Holder)
	ev := events.Event{Subject: string(st.RunID), CorrelationID: string(st.RunID), Data: events.HookReleased{
		RunID: st.RunID, Step: st.Step, By: "disconnect",
		Error: fmt.Sprintf("the hookrunner holding the lock (%s) is gone; its database session ended with it, and the database released the lock then", st.Holder),
	}}
	_, err = s.bus.Publish(ctx, ev)
	return err
}

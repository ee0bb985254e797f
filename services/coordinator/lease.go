package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
)

// liveness is an instance's heartbeat record. Its incarnation changes at
// every start, so a restarted instance does not mistake the runs of its
// previous life for live ones: it takes them over like any orphan.
type liveness struct {
	Incarnation string    `json:"incarnation"`
	ExpiresAt   time.Time `json:"expiresAt"`
}

// lease names a run's owner.
type lease struct {
	Owner       string    `json:"owner"`
	Incarnation string    `json:"incarnation"`
	Since       time.Time `json:"since"`
}

func (s *Service) heartbeat(ctx context.Context) error {
	raw, _ := json.Marshal(liveness{Incarnation: s.incarnation, ExpiresAt: s.cfg.Now().Add(s.cfg.LeaseTTL).UTC()})
	return s.leases.Put(ctx, instanceKey(s.cfg.InstanceID), raw)
}

func (s *Service) myLease() []byte {
	raw, _ := json.Marshal(lease{Owner: s.cfg.InstanceID, Incarnation: s.incarnation, Since: s.cfg.Now().UTC()})
	return raw
}

// takeLease makes this instance the owner of a new run.
func (s *Service) takeLease(ctx context.Context, id events.RunID) error {
	rev, err := s.leases.Create(ctx, leaseKey(id), s.myLease())
	if err != nil && !errors.Is(err, bus.ErrConflict) {
		return err
	}
	if err == nil {
		s.rememberLease(id, rev)
	}
	return nil
}

// rememberLease keeps the revision of a lease this instance wrote, so
// giving it back is one conditional delete.
func (s *Service) rememberLease(id events.RunID, rev uint64) {
	s.mu.Lock()
	s.leaseRevs[id] = rev
	s.mu.Unlock()
}

// livenessLoop renews this instance's heartbeat and takes over the runs of
// instances that stopped renewing theirs.
func (s *Service) livenessLoop(ctx context.Context) {
	beat := time.NewTicker(s.cfg.LeaseTTL / 4)
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			if err := s.heartbeat(ctx); err != nil && ctx.Err() == nil {
				s.cfg.Logger.Warn("heartbeat not written", "err", err)
			}
			s.scan(ctx)
		}
	}
}

// scan looks at every run lease: runs whose owner is gone are taken over;
// runs this instance thought it owned but another took are let go.
func (s *Service) scan(ctx context.Context) {
	all, err := s.leases.Entries(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.cfg.Logger.Warn("lease scan failed", "err", err)
		}
		return
	}
	now := s.cfg.Now()
	alive := map[string]string{}
	for _, e := range all {
		if id, ok := strings.CutPrefix(e.Key, "instance."); ok {
			var l liveness
			if json.Unmarshal(e.Value, &l) == nil && now.Before(l.ExpiresAt) {
				alive[id] = l.Incarnation
			}
		}
	}
	for _, e := range all {
		id, ok := strings.CutPrefix(e.Key, "run.")
		if !ok {
			continue
		}
		run := events.RunID(id)
		var l lease
		_ = json.Unmarshal(e.Value, &l)
		if l.Owner == s.cfg.InstanceID && l.Incarnation == s.incarnation {
			s.own(run)
			continue
		}
		s.disown(run)
		if inc, ok := alive[l.Owner]; ok && inc == l.Incarnation {
			continue
		}
		rev, err := s.leases.Update(ctx, e.Key, s.myLease(), e.Revision)
		if err != nil {
			continue // another survivor was faster
		}
		s.rememberLease(run, rev)
		s.takeOver(ctx, run, l.Owner)
	}
}

// takeOver resumes or compensates a run whose owner died.
func (s *Service) takeOver(ctx context.Context, id events.RunID, from string) {
	s.cfg.Logger.Warn("taking over a run whose coordinator is gone", "run", id, "from", from)
	err := s.update(ctx, id, false, func(sg *saga) { sg.recoverFrom(from) })
	if errors.Is(err, bus.ErrKeyNotFound) {
		// The run was never written (its owner died accepting it).
		_ = s.leases.Delete(ctx, leaseKey(id))
		return
	}
	if err != nil {
		s.cfg.Logger.Error("taking over a run failed; the next scan tries again", "run", id, "err", err)
		s.disown(id)
		return
	}
	s.own(id)
}

// recoverFrom decides what a new owner does with a run: a run that was
// inside the freeze, before its snapshots were complete, is compensated
// (the application stayed quiesced while nobody watched); any other is
// resumed by sending again what was never answered.
func (sg *saga) recoverFrom(from string) {
	r := sg.r
	r.log(sg.now, "coordinator %s took over the run from %s", sg.cfg.InstanceID, from)
	if r.Status == StatusRunning && r.Frozen() && !r.quiescedWorkDone() && !sg.snapshotAnsweredMeanwhile() {
		sg.fail("the coordinator ("+from+") was lost while the application was quiesced; the run is compensated, not resumed", "")
		return
	}
	sg.out = append(sg.out, outstanding(r, sg, sg.now.Add(-republishWindow))...)
	sg.tick()
}

func (s *Service) own(id events.RunID) {
	s.mu.Lock()
	if _, ok := s.owned[id]; !ok {
		s.owned[id] = s.cfg.Now()
	}
	s.mu.Unlock()
}

func (s *Service) disown(id events.RunID) {
	s.mu.Lock()
	delete(s.owned, id)
	delete(s.leaseRevs, id)
	s.mu.Unlock()
}

// schedule records when an owned run next needs its owner; a run that
// needs nothing more gives its lease back.
func (s *Service) schedule(r *Run) {
	s.mu.Lock()
	_, mine := s.owned[r.ID]
	if !mine {
		s.mu.Unlock()
		// A new run's lease was taken by this instance before the run
		// existed; anything else is another owner's business.
		return
	}
	next := r.nextWake()
	if r.Status.Terminal() && next.IsZero() {
		delete(s.owned, r.ID)
		rev := s.leaseRevs[r.ID]
		delete(s.leaseRevs, r.ID)
		s.mu.Unlock()
		s.giveBack(r.ID, rev)
		return
	}
	recheck := s.cfg.Now().Add(s.cfg.Recheck)
	if next.IsZero() || recheck.Before(next) {
		next = recheck
	}
	s.owned[r.ID] = next
	s.mu.Unlock()
}

// giveBack deletes the run's lease if it is still this instance's: at the
// revision this instance wrote (rev, when known), else after reading it.
func (s *Service) giveBack(id events.RunID, rev uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if rev != 0 {
		if err := s.leases.DeleteAt(ctx, leaseKey(id), rev); err == nil || errors.Is(err, bus.ErrKeyNotFound) {
			return
		}
	}
	e, err := s.leases.Entry(ctx, leaseKey(id))
	if err != nil {
		return
	}
	var l lease
	if json.Unmarshal(e.Value, &l) == nil && l.Owner == s.cfg.InstanceID && l.Incarnation == s.incarnation {
		_ = s.leases.DeleteAt(ctx, leaseKey(id), e.Revision)
	}
}

// clockLoop wakes owned runs whose time has come.
func (s *Service) clockLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := s.cfg.Now()
		var due []events.RunID
		s.mu.Lock()
		for id, at := range s.owned {
			if !at.After(now) {
				due = append(due, id)
				// Not again until the update below reschedules it.
				s.owned[id] = now.Add(s.cfg.Recheck)
			}
		}
		s.mu.Unlock()
		for _, id := range due {
			err := s.update(ctx, id, false, func(sg *saga) { sg.tick() })
			switch {
			case errors.Is(err, bus.ErrKeyNotFound):
				s.disown(id)
			case err != nil && ctx.Err() == nil:
				s.cfg.Logger.Warn("run clock", "run", id, "err", err)
			}
		}
	}
}

// snapshotAnsweredMeanwhile applies the snapshotter's answer when the
// snapshots were complete before the crash was noticed: the run is then past
// the barrier, and resuming it only thaws sooner.
func (sg *saga) snapshotAnsweredMeanwhile() bool {
	t := sg.r.snapshotTask()
	if t == nil || t.State != TaskSent || sg.snapshots == nil {
		return false
	}
	var req events.SnapshotRequested
	if json.Unmarshal(t.Command, &req) != nil {
		return false
	}
	ready, ok, err := sg.snapshots(req.IdempotencyKey)
	if err != nil || !ok {
		return false
	}
	sg.r.log(sg.now, "the snapshots were complete before the takeover")
	sg.apply(events.Event{CausationID: t.CommandID, Data: ready})
	return true
}

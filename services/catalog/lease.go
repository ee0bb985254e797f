package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tidemark-dev/tidemark/pkg/bus"
)

// errLeaseLost cancels work whose lease could not be renewed: another
// instance may hold it now.
var errLeaseLost = errors.New("catalog: lease lost")

// lease is a lock shared by every catalog instance through the catalog's
// KV bucket, so housekeeping that must not run twice at once (a retention
// pass, repository maintenance) runs in one instance at a time. The
// holder renews it while working; a holder that dies loses it when its
// expiry passes.
type lease struct {
	kv     bus.VersionedKV
	key    string
	holder string
	ttl    time.Duration
	now    func() time.Time
}

type leaseValue struct {
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires"`
}

func (l *lease) value() ([]byte, error) {
	return json.Marshal(leaseValue{Holder: l.holder, Expires: l.now().Add(l.ttl).UTC()})
}

// acquire takes the lease if it is free or expired. ok is false when
// another holder has it.
func (l *lease) acquire(ctx context.Context) (rev uint64, ok bool, err error) {
	for range 3 {
		v, err := l.value()
		if err != nil {
			return 0, false, err
		}
		rev, err := l.kv.Create(ctx, l.key, v)
		if err == nil {
			return rev, true, nil
		}
		if !errors.Is(err, bus.ErrConflict) {
			return 0, false, fmt.Errorf("taking lease %s: %w", l.key, err)
		}
		e, err := l.kv.Entry(ctx, l.key)
		if errors.Is(err, bus.ErrKeyNotFound) {
			continue // released meanwhile
		}
		if err != nil {
			return 0, false, fmt.Errorf("reading lease %s: %w", l.key, err)
		}
		var cur leaseValue
		if err := json.Unmarshal(e.Value, &cur); err == nil && l.now().Before(cur.Expires) {
			return 0, false, nil
		}
		// Expired (or unreadable): take it over, unless someone else
		// does first.
		rev, err = l.kv.Update(ctx, l.key, v, e.Revision)
		if errors.Is(err, bus.ErrConflict) {
			return 0, false, nil
		}
		if err != nil {
			return 0, false, fmt.Errorf("taking over lease %s: %w", l.key, err)
		}
		return rev, true, nil
	}
	return 0, false, nil
}

// run calls fn while holding the lease, renewing it every third of its
// ttl; ran is false, and fn not called, when another holder has it. If a
// renewal fails, fn's context is cancelled with errLeaseLost.
func (l *lease) run(ctx context.Context, fn func(context.Context) error) (ran bool, err error) {
	rev, ok, err := l.acquire(ctx)
	if err != nil || !ok {
		return false, err
	}
	var mu sync.Mutex // guards rev
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := make(chan struct{})
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		t := time.NewTicker(l.ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-wctx.Done():
				return
			case <-t.C:
				v, err := l.value()
				if err == nil {
					mu.Lock()
					var n uint64
					if n, err = l.kv.Update(wctx, l.key, v, rev); err == nil {
						rev = n
					}
					mu.Unlock()
				}
				if err != nil {
					cancel(fmt.Errorf("%w: %s: %v", errLeaseLost, l.key, err))
					return
				}
			}
		}
	}()
	err = fn(wctx)
	close(stop)
	<-renewed
	if cause := context.Cause(wctx); err != nil && errors.Is(cause, errLeaseLost) {
		err = fmt.Errorf("%w (%v)", cause, err)
	}
	// Release on a fresh context: shutting down must not leave the lease
	// to expire.
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer rcancel()
	mu.Lock()
	defer mu.Unlock()
	if derr := l.kv.DeleteAt(rctx, l.key, rev); derr != nil && !errors.Is(derr, bus.ErrConflict) && err == nil {
		err = fmt.Errorf("releasing lease %s: %w", l.key, derr)
	}
	return true, err
}

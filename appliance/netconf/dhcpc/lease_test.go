package dhcpc

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

var t0 = time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)

// fakeClock is a Clock that moves only when the test advances it.
type fakeClock struct {
	mu        sync.Mutex
	now       time.Time
	waiters   []waiter
	deadlines []*deadline
	// blocked counts exchanges waiting for their context to end: only then is a deadline what
	// the client waits for (an exchange that answers at once leaves its deadline unwaited).
	blocked int
}

type deadline struct {
	at     time.Time
	cancel context.CancelFunc
}

func (f *fakeClock) Until(ctx context.Context, t time.Time) (context.Context, context.CancelFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	if !t.After(f.now) {
		cancel()
		return ctx, cancel
	}
	d := &deadline{at: t, cancel: cancel}
	f.deadlines = append(f.deadlines, d)
	return ctx, func() {
		f.mu.Lock()
		f.deadlines = slices.DeleteFunc(f.deadlines, func(x *deadline) bool { return x == d })
		f.mu.Unlock()
		cancel()
	}
}

func (f *fakeClock) block(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blocked += n
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- f.now
		return ch
	}
	f.waiters = append(f.waiters, waiter{f.now.Add(d), ch})
	return ch
}

// next waits until the client sleeps on the clock and returns when it wants to wake.
func (f *fakeClock) next(t *testing.T) time.Time {
	t.Helper()
	var at time.Time
	testenv.WaitFor(t, "the client to sleep", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		switch {
		case len(f.waiters) > 0:
			at = f.waiters[0].at
		case f.blocked > 0 && len(f.deadlines) > 0:
			at = f.deadlines[0].at
		default:
			return false
		}
		return true
	})
	return at
}

// advanceTo sets the time and wakes the sleepers that are due.
func (f *fakeClock) advanceTo(at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = at
	kept := f.waiters[:0]
	for _, w := range f.waiters {
		if !w.at.After(at) {
			w.ch <- at
		} else {
			kept = append(kept, w)
		}
	}
	f.waiters = kept
	f.deadlines = slices.DeleteFunc(f.deadlines, func(d *deadline) bool {
		if d.at.After(at) {
			return false
		}
		d.cancel()
		return true
	})
}

// world is the fake network and interface: every call is logged with the clock time.
type world struct {
	clock *fakeClock
	mu    sync.Mutex
	log   []string
	// answer decides each exchange; n counts calls of that kind so far (from 1).
	answer func(call string, n int, l Lease) (Lease, error)
	counts map[string]int
}

func (w *world) record(call string, l Lease) (Lease, error) {
	w.mu.Lock()
	if w.counts == nil {
		w.counts = map[string]int{}
	}
	w.counts[call]++
	n := w.counts[call]
	w.log = append(w.log, fmt.Sprintf("%s@%v", call, w.clock.Now().Sub(t0)))
	w.mu.Unlock()
	return w.answer(call, n, l)
}

func (w *world) entries() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.log...)
}

func (w *world) Acquire(ctx context.Context) (Lease, error) { return w.record("acquire", Lease{}) }
func (w *world) Renew(ctx context.Context, l Lease) (Lease, error) {
	return w.exchange(ctx, "renew", l)
}
func (w *world) Rebind(ctx context.Context, l Lease) (Lease, error) {
	return w.exchange(ctx, "rebind", l)
}

// errHang makes an exchange wait for its context, like a client retransmitting to a server that
// never answers.
var errHang = errors.New("no answer yet")

func (w *world) exchange(ctx context.Context, call string, l Lease) (Lease, error) {
	nl, err := w.record(call, l)
	if errors.Is(err, errHang) {
		w.clock.block(1)
		<-ctx.Done()
		w.clock.block(-1)
		return Lease{}, ctx.Err()
	}
	return nl, err
}
func (w *world) Release(l Lease) error { _, err := w.record("release", l); return err }
func (w *world) Apply(prev, cur Lease) error {
	_, err := w.record("apply "+cur.Addr.String(), cur)
	return err
}
func (w *world) Remove(l Lease) error { _, err := w.record("remove "+l.Addr.String(), l); return err }

func (w *world) lease(life, t1, t2 time.Duration) Lease {
	return Lease{
		Addr:   netip.MustParsePrefix("192.0.2.10/24"),
		Router: netip.MustParseAddr("192.0.2.1"),
		DNS:    []netip.Addr{netip.MustParseAddr("192.0.2.53")},
		Server: netip.MustParseAddr("192.0.2.1"),
		Start:  w.clock.Now(), T1: t1, T2: t2, Lifetime: life,
	}
}

var errTimeout = errors.New("no answer")

// run starts a client in w and drives the clock from one sleep to the next until the log has want
// entries (or more), then stops the client and compares the log.
func run(t *testing.T, w *world, want []string) {
	t.Helper()
	testenv.CheckLeaks(t)
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{Ex: w, Apply: w, Clock: w.clock, Logf: t.Logf}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	for len(w.entries()) < len(want) {
		w.clock.advanceTo(w.clock.next(t))
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	got := w.entries()
	if len(got) > len(want) {
		got = got[:len(want)]
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("calls (-want +got):\n%s\nall: %s", diff, strings.Join(w.entries(), " "))
	}
}

func ok(call string) bool {
	return call == "release" || strings.HasPrefix(call, "apply") || strings.HasPrefix(call, "remove")
}

// TestServerGone: the server answers once and never again. Renewal starts at T1 and retries at
// half the time left until T2 (never more often than a minute); rebinding from T2 to expiry
// likewise; at expiry the address goes and the client starts over.
func TestServerGone(t *testing.T) {
	w := &world{clock: &fakeClock{now: t0}}
	w.answer = func(call string, n int, l Lease) (Lease, error) {
		if call == "acquire" && n == 1 {
			return w.lease(1000*time.Second, 500*time.Second, 875*time.Second), nil
		}
		if ok(call) {
			return Lease{}, nil
		}
		return Lease{}, errTimeout
	}
	run(t, w, []string{
		"acquire@0s", "apply 192.0.2.10/24@0s",
		"renew@8m20s",                 // T1 = 500 s
		"renew@11m27.5s",              // + half of the 375 s left to T2
		"renew@13m1.25s",              // + 93.75 s
		"renew@14m1.25s",              // + 60 s: half would be 46.875 s, below the minimum
		"rebind@14m35s",               // T2 = 875 s, 33.75 s later
		"rebind@15m37.5s",             // + half of 125 s
		"rebind@16m37.5s",             // + 60 s
		"remove 192.0.2.10/24@16m40s", // expiry, 2.5 s later
		"acquire@16m40s",
	})
}

// TestExchangeEndsWithPhase: an exchange that retransmits without an answer (a server gone; the
// exchanger's own back-off reaches 30 s in nclient6) is cut off at the end of its phase: the
// renewal at T2, where rebinding starts, and the rebinding at expiry, where the address goes on
// time. Without the bound the RENEW ran on past the lease's end.
func TestExchangeEndsWithPhase(t *testing.T) {
	w := &world{clock: &fakeClock{now: t0}}
	w.answer = func(call string, n int, l Lease) (Lease, error) {
		switch {
		case call == "acquire" && n == 1:
			return w.lease(100*time.Second, 50*time.Second, 87*time.Second), nil
		case call == "renew", call == "rebind":
			return Lease{}, errHang
		case ok(call):
			return Lease{}, nil
		}
		return Lease{}, errTimeout
	}
	run(t, w, []string{"acquire@0s", "apply 192.0.2.10/24@0s", "renew@50s", "rebind@1m27s", "remove 192.0.2.10/24@1m40s", "acquire@1m40s"})
}

// TestRenewed: every renewal is handed to the Applier (the expiry moves on); the next renewal is
// at T1 of the new lease.
func TestRenewed(t *testing.T) {
	w := &world{clock: &fakeClock{now: t0}}
	w.answer = func(call string, n int, l Lease) (Lease, error) {
		switch {
		case call == "acquire" && n == 1, call == "renew" && n == 1:
			return w.lease(100*time.Second, 50*time.Second, 87*time.Second), nil
		case call == "renew" && n == 2:
			nl := w.lease(100*time.Second, 50*time.Second, 87*time.Second)
			nl.DNS = []netip.Addr{netip.MustParseAddr("192.0.2.54")}
			return nl, nil
		case ok(call):
			return Lease{}, nil
		}
		return Lease{}, errTimeout
	}
	run(t, w, []string{"acquire@0s", "apply 192.0.2.10/24@0s", "renew@50s", "apply 192.0.2.10/24@50s", "renew@1m40s", "apply 192.0.2.10/24@1m40s", "renew@2m30s"})
}

// TestNAK: a NAK on renewal takes the address away at once and starts over.
func TestNAK(t *testing.T) {
	w := &world{clock: &fakeClock{now: t0}}
	w.answer = func(call string, n int, l Lease) (Lease, error) {
		switch {
		case call == "acquire" && n <= 2:
			return w.lease(100*time.Second, 50*time.Second, 87*time.Second), nil
		case call == "renew":
			return Lease{}, fmt.Errorf("server says: %w", ErrNAK)
		case ok(call):
			return Lease{}, nil
		}
		return Lease{}, errTimeout
	}
	run(t, w, []string{"acquire@0s", "apply 192.0.2.10/24@0s", "renew@50s", "remove 192.0.2.10/24@50s", "acquire@50s", "apply 192.0.2.10/24@50s", "renew@1m40s"})
}

// TestAcquireBackoff: failed acquisitions are retried after 1, 2, 4 … s, capped.
func TestAcquireBackoff(t *testing.T) {
	w := &world{clock: &fakeClock{now: t0}}
	w.answer = func(call string, n int, l Lease) (Lease, error) { return Lease{}, errTimeout }
	want := []string{"acquire@0s", "acquire@1s", "acquire@3s", "acquire@7s", "acquire@15s", "acquire@31s", "acquire@1m3s", "acquire@2m7s", "acquire@3m11s"}
	run(t, w, want)
}

// TestReleaseOnShutdown: stopping while bound releases the lease and removes the address.
func TestReleaseOnShutdown(t *testing.T) {
	testenv.CheckLeaks(t)
	w := &world{clock: &fakeClock{now: t0}}
	w.answer = func(call string, n int, l Lease) (Lease, error) {
		if call == "acquire" {
			return w.lease(100*time.Second, 50*time.Second, 87*time.Second), nil
		}
		return Lease{}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{Ex: w, Apply: w, Clock: w.clock}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	w.clock.next(t) // bound, asleep until T1
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := []string{"acquire@0s", "apply 192.0.2.10/24@0s", "release@0s", "remove 192.0.2.10/24@0s"}
	if diff := cmp.Diff(want, w.entries()); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
}

// Package dhcpc keeps a DHCP lease on the management port, for IPv4 (RFC 2131 §4.4) and IPv6
// (RFC 8415 §18): it acquires one, renews it from its server at T1, rebinds from any server at
// T2, gives the address up when the lease expires unrenewed, and releases it on shutdown. Both
// protocols share this one state machine; it is apart from the wire (an Exchanger: NClient4 on
// nclient4, NClient6 on nclient6) and from time (a Clock), so that T1, T2 and expiry are tested
// to the second without waiting for them; what a lease means for the interface is the Applier's
// business.
package dhcpc

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Lease is a bound lease, reduced to what the box uses.
type Lease struct {
	// Addr is the address with the subnet's prefix length (DHCPv4), or with /128 (DHCPv6, whose
	// on-link prefix comes from router advertisements).
	Addr   netip.Prefix
	Router netip.Addr // DHCPv4 only; zero if the server sent none
	DNS    []netip.Addr
	NTP    []netip.Addr
	Server netip.Addr // DHCPv4: server identifier; DHCPv6: the address the reply came from

	Start    time.Time     // when the ACK arrived (Clock time)
	T1, T2   time.Duration // renewal and rebinding times, from Start
	Lifetime time.Duration

	// Raw is the exchanger's own record of the lease (the ACK), handed back to Renew, Rebind
	// and Release.
	Raw any
}

// Same reports whether two leases configure the box identically (times aside), so that a renewal
// that changes nothing leaves the interface alone.
func (l Lease) Same(o Lease) bool {
	return l.Addr == o.Addr && l.Router == o.Router && slices.Equal(l.DNS, o.DNS) && slices.Equal(l.NTP, o.NTP)
}

// describe names the lease's router and server, where there are.
func (l Lease) describe() string {
	s := ""
	if l.Router.IsValid() {
		s += " via " + l.Router.String()
	}
	if l.Server.IsValid() {
		s += " from " + l.Server.String()
	}
	return s
}

// ErrNAK is returned (wrapped) by an Exchanger when the server refused the request (DHCPNAK, or a
// DHCPv6 NoBinding status): the address must go at once and the client starts over.
var ErrNAK = errors.New("DHCPNAK")

// Exchanger speaks DHCP. Each call returns when it has an answer or has given up (its own
// retransmission timeouts, or ctx); start is the Clock time to record as the new lease's Start.
type Exchanger interface {
	// Acquire runs DISCOVER/OFFER/REQUEST/ACK.
	Acquire(ctx context.Context) (Lease, error)
	// Renew sends REQUEST to the lease's server (RENEWING).
	Renew(ctx context.Context, l Lease) (Lease, error)
	// Rebind broadcasts REQUEST to any server (REBINDING).
	Rebind(ctx context.Context, l Lease) (Lease, error)
	// Release sends RELEASE to the lease's server.
	Release(l Lease) error
}

// Applier makes a lease take effect on the box. Apply gets the previous lease (zero Addr if none)
// so that it can remove what the new one no longer has, and is called after every renewal, even
// one that changes nothing but the times (Same tells); Remove undoes a lease entirely.
type Applier interface {
	Apply(prev, cur Lease) error
	Remove(l Lease) error
}

// Clock is time for the state machine. After must behave like time.After, Until like
// context.WithDeadline.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
	Until(ctx context.Context, t time.Time) (context.Context, context.CancelFunc)
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
func (realClock) Until(ctx context.Context, t time.Time) (context.Context, context.CancelFunc) {
	return context.WithDeadline(ctx, t)
}

// RealClock is the wall clock.
var RealClock Clock = realClock{}

// Client runs the lease state machine. Zero values of the tuning fields take the defaults.
type Client struct {
	Ex    Exchanger
	Apply Applier
	Clock Clock
	Logf  func(format string, args ...any)
	// Proto names the protocol in log lines: "dhcp4" (the default) or "dhcp6".
	Proto string

	// MinRetry is the shortest wait between two renewal (or rebinding) attempts: RFC 2131
	// §4.4.5 says half the time remaining, down to 60 s.
	MinRetry time.Duration
	// AcquireBackoff bounds the wait between failed acquisitions (doubling from 1 s).
	AcquireBackoff time.Duration

	// OnState, if set, is told every state change (for the status report and tests).
	OnState func(State, Lease)
}

// State is where the client is in RFC 2131's state diagram.
type State string

const (
	Init      State = "init"
	Bound     State = "bound"
	Renewing  State = "renewing"
	Rebinding State = "rebinding"
	Released  State = "released"
)

func (c *Client) logf(format string, args ...any) {
	if c.Logf != nil {
		proto := c.Proto
		if proto == "" {
			proto = "dhcp4"
		}
		c.Logf(proto+": "+format, args...)
	}
}

func (c *Client) state(s State, l Lease) {
	if c.OnState != nil {
		c.OnState(s, l)
	}
}

// wait returns false if ctx ended before d passed.
func (c *Client) wait(ctx context.Context, d time.Duration) bool {
	if d < 0 {
		d = 0
	}
	select {
	case <-ctx.Done():
		return false
	case <-c.Clock.After(d):
		return true
	}
}

// retryIn is the wait before the next attempt when deadline is the end of the current phase.
func (c *Client) retryIn(now, deadline time.Time) time.Duration {
	rest := deadline.Sub(now)
	if half := rest / 2; half > c.MinRetry {
		return half
	}
	if rest > c.MinRetry {
		return c.MinRetry
	}
	return rest
}

// Run keeps a lease until ctx ends, then releases it and removes it from the box. It returns nil
// after a clean shutdown; only an Applier failure on shutdown is an error (a failure while running
// is logged and retried, since the next lease may apply).
func (c *Client) Run(ctx context.Context) error {
	if c.Clock == nil {
		c.Clock = RealClock
	}
	if c.MinRetry == 0 {
		c.MinRetry = 60 * time.Second
	}
	if c.AcquireBackoff == 0 {
		c.AcquireBackoff = 64 * time.Second
	}
	var cur Lease
	backoff := time.Second
	for {
		// INIT: no address.
		c.state(Init, Lease{})
		l, err := c.Ex.Acquire(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			c.logf("acquiring a lease: %v (again in %v)", err, backoff)
			if !c.wait(ctx, backoff) {
				return nil
			}
			backoff = min(2*backoff, c.AcquireBackoff)
			continue
		}
		backoff = time.Second
		if err := c.Apply.Apply(cur, l); err != nil {
			c.logf("applying lease %s: %v", l.Addr, err)
		}
		cur = l
		c.logf("bound %s%s for %v", l.Addr, l.describe(), l.Lifetime)
		var ok bool
		cur, ok = c.keep(ctx, cur)
		if !ok {
			// ctx ended while bound.
			c.state(Released, cur)
			if err := c.Ex.Release(cur); err != nil {
				c.logf("releasing %s: %v", cur.Addr, err)
			}
			if err := c.Apply.Remove(cur); err != nil {
				return fmt.Errorf("removing lease %s: %w", cur.Addr, err)
			}
			return nil
		}
		// The lease expired or was refused: the address is no longer ours.
		if err := c.Apply.Remove(cur); err != nil {
			c.logf("removing lease %s: %v", cur.Addr, err)
		}
		cur = Lease{}
	}
}

// keep holds l through BOUND, RENEWING and REBINDING. It returns the lease last held and ok=true
// when that lease is gone (expired or NAKed), or ok=false when ctx ended while it was still valid.
func (c *Client) keep(ctx context.Context, l Lease) (Lease, bool) {
	for {
		c.state(Bound, l)
		t1, t2, end := l.Start.Add(l.T1), l.Start.Add(l.T2), l.Start.Add(l.Lifetime)
		if !c.wait(ctx, t1.Sub(c.Clock.Now())) {
			return l, false
		}
		next, renewed, gone := c.phase(ctx, Renewing, l, t2)
		if ctx.Err() != nil {
			return l, false
		}
		if !renewed && !gone {
			next, renewed, gone = c.phase(ctx, Rebinding, l, end)
			if ctx.Err() != nil {
				return l, false
			}
		}
		if gone {
			return l, true
		}
		if !renewed {
			c.logf("lease %s expired", l.Addr)
			return l, true
		}
		// Applied even when nothing but the times changed: the expiry others read moves on.
		if err := c.Apply.Apply(l, next); err != nil {
			c.logf("applying lease %s: %v", next.Addr, err)
		}
		l = next
	}
}

// phase tries to extend l in state s until deadline. gone: the server refused (NAK).
func (c *Client) phase(ctx context.Context, s State, l Lease, deadline time.Time) (next Lease, renewed, gone bool) {
	c.state(s, l)
	for c.Clock.Now().Before(deadline) {
		// An exchange ends with its phase (RFC 8415 §18.2.4-5: a RENEW's retransmissions until
		// T2, a REBIND's until the lease expires; RFC 2131 likewise): the exchanger's own
		// retransmissions (2 s doubling to 30 s in nclient6) would otherwise keep an expired
		// address on the port, or start rebinding late.
		actx, cancel := c.Clock.Until(ctx, deadline)
		var err error
		if s == Renewing {
			next, err = c.Ex.Renew(actx, l)
		} else {
			next, err = c.Ex.Rebind(actx, l)
		}
		cancel()
		if ctx.Err() != nil {
			return l, false, false
		}
		if err == nil {
			return next, true, false
		}
		if errors.Is(err, ErrNAK) {
			c.logf("%s %s: %v", s, l.Addr, err)
			return l, false, true
		}
		now := c.Clock.Now()
		if !now.Before(deadline) {
			c.logf("%s %s: %v (no answer by %s)", s, l.Addr, err, deadline.Format(time.RFC3339))
			break
		}
		wait := c.retryIn(now, deadline)
		c.logf("%s %s: %v (again in %v)", s, l.Addr, err, wait)
		if !c.wait(ctx, wait) {
			return l, false, false
		}
	}
	return l, false, false
}

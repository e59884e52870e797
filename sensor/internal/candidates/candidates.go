// Package candidates finds the addresses that send DNS queries on the tap: on a box whose
// resolver is not configured (or configured wrongly) the busiest sources of queries to port 53
// are almost always the resolver's own addresses, and the status page offers them as a one-click
// fix.
//
// The addresses may be clients', so they live in memory only: never in a record, the spool, a
// log line or a metric label; sensord serves them on its local health socket, and the status
// page shows them on the management port only.
//
// Memory is bounded whatever the traffic: a Space-Saving summary (Metwally et al.) of K
// addresses per one-minute window, two windows (the one being counted and the last complete
// one). Any address that sent more than 1/K of a window's queries is guaranteed to be in it, and
// its count is over-estimated by at most the smallest count kept, which is what a resolver among
// a crowd of clients needs.
package candidates

import (
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// K is the number of addresses each window keeps.
const K = 64

// Window is the length of a counting window.
const Window = time.Minute

// Candidate is one source of queries and how many it sent in the window.
type Candidate struct {
	Addr    netip.Addr `json:"addr"`
	Queries uint64     `json:"queries"`
}

// Tracker counts query sources. Safe for concurrent use: every capture port's reader calls
// Query, the health server Top.
type Tracker struct {
	// Counted is the number of queries counted since start.
	Counted atomic.Uint64

	mu      sync.Mutex
	start   int64 // current window's start, packet time (ns)
	cur     summary
	prev    summary
	prevEnd int64 // end of the last complete window; 0: none yet
}

type summary struct {
	idx  map[netip.Addr]int32
	addr [K]netip.Addr
	n    [K]uint64
	used int
	// The smallest count, how many slots hold it, and where the search for the next one goes
	// on: counts only grow, so no slot before cursor holds minN, and a flood of new addresses
	// (clients) costs O(1) amortised instead of a scan of K slots each.
	minN   uint64
	atMin  int
	cursor int
}

func (s *summary) reset() {
	if s.idx == nil {
		s.idx = make(map[netip.Addr]int32, K)
	}
	clear(s.idx)
	s.used, s.atMin = 0, 0
}

// minSlot is a slot holding the smallest count.
func (s *summary) minSlot() int {
	for {
		if s.atMin == 0 {
			s.minN, s.cursor = s.n[0], 0
			for _, n := range s.n[1:] {
				s.minN = min(s.minN, n)
			}
			for _, n := range s.n {
				if n == s.minN {
					s.atMin++
				}
			}
		}
		for ; s.cursor < K; s.cursor++ {
			if s.n[s.cursor] == s.minN {
				return s.cursor
			}
		}
		s.atMin = 0 // cannot happen; recount rather than trust a wrong tally
	}
}

// add counts one query from a: a known address counts up; a new one takes a free slot, or
// replaces the smallest count and inherits it (+1), as Space-Saving does.
func (s *summary) add(a netip.Addr) {
	if i, ok := s.idx[a]; ok {
		if s.atMin > 0 && s.n[i] == s.minN {
			s.atMin--
		}
		s.n[i]++
		return
	}
	if s.used < K {
		s.idx[a] = int32(s.used)
		s.addr[s.used], s.n[s.used] = a, 1
		s.used++
		return
	}
	m := s.minSlot()
	s.atMin--
	s.cursor++
	delete(s.idx, s.addr[m])
	s.idx[a] = int32(m)
	s.addr[m] = a
	s.n[m]++
}

func (s *summary) top(n int) []Candidate {
	out := make([]Candidate, 0, s.used)
	for i := 0; i < s.used; i++ {
		out = append(out, Candidate{Addr: s.addr[i], Queries: s.n[i]})
	}
	slices.SortFunc(out, func(a, b Candidate) int {
		if a.Queries != b.Queries {
			if a.Queries > b.Queries {
				return -1
			}
			return 1
		}
		return a.Addr.Compare(b.Addr)
	})
	return out[:min(n, len(out))]
}

// New returns an empty tracker.
func New() *Tracker {
	t := &Tracker{}
	t.cur.reset()
	t.prev.reset()
	return t
}

// Query counts a DNS query (QR=0) sent from src to port 53 at packet time ts (ns).
func (t *Tracker) Query(ts int64, src netip.Addr) {
	if t == nil {
		return
	}
	src = src.Unmap().WithZone("")
	t.Counted.Add(1)
	t.mu.Lock()
	t.rotate(ts)
	t.cur.add(src)
	t.mu.Unlock()
}

// rotate starts a new window when ts has left the current one; a window without traffic after
// it leaves nothing behind.
func (t *Tracker) rotate(ts int64) {
	w := int64(Window)
	switch {
	case t.start == 0:
		t.start = ts
	case ts >= t.start+2*w:
		t.cur.reset()
		t.prev.reset()
		t.prevEnd, t.start = 0, ts
	case ts >= t.start+w:
		t.prev, t.cur = t.cur, t.prev
		t.cur.reset()
		t.prevEnd = t.start + w
		t.start = t.prevEnd
	}
}

// Top returns the n busiest sources of the last complete window, or of the current one until a
// window is complete, at time now (ns, the clock packet times use). Nothing older than two
// windows is returned.
func (t *Tracker) Top(n int, now int64) []Candidate {
	if t == nil {
		return []Candidate{}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.start != 0 && now >= t.start+int64(Window) {
		t.rotate(now)
	}
	if t.prevEnd != 0 {
		return t.prev.top(n)
	}
	return t.cur.top(n)
}

// Package health is the one health contract every daemon of the appliance speaks (sensord,
// uplinkd, and the status, network, update and collector daemons after them): a dependency tree of
// checks served as /health.json, and the daemon's counters as Prometheus text (/metrics) and JSON
// (/metrics.json), on a unix socket under /run/<daemon>/. The status page's "why is there no
// data?" view, the update agent's health gate and the collector's fleet view read only this. The
// contract is written down in README.md beside this file; the JSON schemas are health.schema.json
// and metrics.schema.json.
//
// A tree reads like a chain of causes: a node's children depend on it (link up → frames seen →
// DNS seen), so the first failing node in depth-first order is the one to fix first, and the
// report marks it.
package health

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

// Schema names the version of the /health.json document; a reader refuses another major version.
const Schema = "dnssensor.health/v1"

// Result is what a probe found.
type Result struct {
	OK bool
	// Detail says what was seen, in a sentence an operator can act on ("no frames on eth1 for
	// 5m0s"); Fix what to do about it when OK is false.
	Detail, Fix string
	// Changed, when set, is when the probe knows the state began (a counter that stopped moving
	// went stale one window after its last move); otherwise the state began when it was first
	// seen.
	Changed time.Time
}

// Probe evaluates one check at now. Probes run on request, one at a time under the tree's lock,
// so a probe may keep state (the previous counter value) without locking of its own; it must be
// quick and must not block on the network.
type Probe func(now time.Time) Result

// Node is one check and the checks that depend on it. Build the tree once at start-up; it is
// long-lived, since each node remembers when its state last changed.
type Node struct {
	name     string
	probe    Probe
	children []*Node

	seen  bool
	ok    bool
	since time.Time
}

// NewNode returns a check named name (unique among its siblings, without "/") evaluated by probe,
// with the checks that depend on it.
func NewNode(name string, probe Probe, children ...*Node) *Node {
	if name == "" || strings.Contains(name, "/") {
		panic(fmt.Sprintf("health: check name %q: want a non-empty name without '/'", name))
	}
	if probe == nil {
		panic(fmt.Sprintf("health: check %q has no probe", name))
	}
	n := &Node{name: name, probe: probe}
	for _, c := range children {
		n.add(c)
	}
	return n
}

// Add appends checks that depend on n. Call it only while building the tree.
func (n *Node) Add(children ...*Node) *Node {
	for _, c := range children {
		n.add(c)
	}
	return n
}

func (n *Node) add(c *Node) {
	checkUnique(n.children, c.name)
	n.children = append(n.children, c)
}

func checkUnique(sibs []*Node, name string) {
	for _, s := range sibs {
		if s.name == name {
			panic(fmt.Sprintf("health: two sibling checks named %q", name))
		}
	}
}

// Tree is a daemon's checks. Evaluate is safe for concurrent use.
type Tree struct {
	daemon  string
	now     func() time.Time
	started time.Time

	mu    sync.Mutex
	roots []*Node
}

// NewTree returns the tree of daemon's checks. now is the clock (time.Now; a fake in tests); the
// tree's start is the state's origin: a check failing since it was first evaluated has been
// failing since the daemon started.
func NewTree(daemon string, now func() time.Time, roots ...*Node) *Tree {
	if now == nil {
		now = time.Now
	}
	t := &Tree{daemon: daemon, now: now, started: now()}
	t.Add(roots...)
	return t
}

// Add appends top-level checks.
func (t *Tree) Add(roots ...*Node) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range roots {
		checkUnique(t.roots, r.name)
		t.roots = append(t.roots, r)
	}
}

// Report is the /health.json document.
type Report struct {
	Schema  string    `json:"schema"`
	Daemon  string    `json:"daemon"`
	Time    time.Time `json:"time"`
	Started time.Time `json:"started"`
	// OK is true when every check in the tree is.
	OK bool `json:"ok"`
	// FirstFailurePath names the checks from a top-level one down to the first failing check
	// (depth first, in order); absent when OK.
	FirstFailurePath []string `json:"first_failure_path,omitempty"`
	Checks           []*Check `json:"checks"`
}

// Check is one node of the report.
type Check struct {
	Name string `json:"name"`
	OK   bool   `json:"ok"`
	// Since is when OK last changed (or the daemon's start, if it never did).
	Since  time.Time `json:"since"`
	Detail string    `json:"detail"`
	Fix    string    `json:"fix"`
	// FirstFailure marks the one check to fix first: the first failing one, depth first.
	FirstFailure bool     `json:"first_failure,omitempty"`
	Children     []*Check `json:"children,omitempty"`
}

// Evaluate runs every probe and returns the report.
func (t *Tree) Evaluate() *Report {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	r := &Report{Schema: Schema, Daemon: t.daemon, Time: now, Started: t.started, OK: true, Checks: []*Check{}}
	for _, n := range t.roots {
		r.Checks = append(r.Checks, t.eval(n, now))
	}
	if path := markFirst(r.Checks); path != nil {
		r.OK = false
		r.FirstFailurePath = path
	}
	return r
}

func (t *Tree) eval(n *Node, now time.Time) *Check {
	res := n.probe(now)
	if !n.seen || res.OK != n.ok {
		since := now
		if !n.seen {
			since = t.started
		}
		if !res.Changed.IsZero() {
			since = res.Changed
		}
		// A probe's own estimate cannot predate the previous state or the start, nor lie ahead.
		if n.seen && since.Before(n.since) {
			since = n.since
		}
		if since.Before(t.started) {
			since = t.started
		}
		if since.After(now) {
			since = now
		}
		n.seen, n.ok, n.since = true, res.OK, since
	}
	c := &Check{Name: n.name, OK: res.OK, Since: n.since, Detail: res.Detail, Fix: res.Fix}
	for _, ch := range n.children {
		c.Children = append(c.Children, t.eval(ch, now))
	}
	return c
}

// markFirst marks the first failing check, depth first, and returns the names leading to it.
func markFirst(cs []*Check) []string {
	for _, c := range cs {
		if !c.OK {
			c.FirstFailure = true
			return []string{c.Name}
		}
		if p := markFirst(c.Children); p != nil {
			return append([]string{c.Name}, p...)
		}
	}
	return nil
}

// Fixed is a probe with a constant result, for facts settled at start-up (an input opened, a
// listener bound).
func Fixed(ok bool, detail, fix string) Probe {
	return func(time.Time) Result { return Result{OK: ok, Detail: detail, Fix: fix} }
}

// Increasing is a probe for a counter that must keep moving (frames, records): it fails when the
// counter has not grown within window, or never has. what names the counted thing in plural
// ("frames on eth0"); fix is the advice when it stalls.
func Increasing(value func() uint64, window time.Duration, what, fix string) Probe {
	var last uint64
	var moved time.Time // when a change was last seen; zero: never
	return func(now time.Time) Result {
		v := value()
		if v != last {
			last, moved = v, now
		}
		switch {
		case v == 0:
			return Result{OK: false, Detail: "no " + what + " yet", Fix: fix}
		case now.Sub(moved) > window:
			return Result{OK: false, Detail: fmt.Sprintf("%d %s, none in the last %v", v, what, window), Fix: fix,
				Changed: moved.Add(window)}
		}
		return Result{OK: true, Detail: fmt.Sprintf("%d %s", v, what)}
	}
}

// Still is a probe for an error counter: it fails while the counter has grown within window and
// recovers one window after its last growth. what names the counted thing in plural ("output
// errors"); fix is the advice while it grows.
func Still(value func() uint64, window time.Duration, what, fix string) Probe {
	var last uint64
	var first = true
	var moved time.Time
	return func(now time.Time) Result {
		v := value()
		if first {
			// Counted before the first look, e.g. while nobody asked: still recent.
			first, last = false, v
			if v > 0 {
				moved = now
			}
		} else if v != last {
			last, moved = v, now
		}
		if !moved.IsZero() && now.Sub(moved) <= window {
			return Result{OK: false, Detail: fmt.Sprintf("%d %s, the latest within the last %v", v, what, window), Fix: fix, Changed: moved}
		}
		if v == 0 {
			return Result{OK: true, Detail: "no " + what}
		}
		return Result{OK: true, Detail: fmt.Sprintf("%d %s in all, none in the last %v", v, what, window), Changed: moved.Add(window)}
	}
}

// ExitNotConfigured is the exit status of a daemon that has no configuration at all: gokrazy
// leaves a program that exits 125 stopped instead of restarting it every second, and the status
// page shows it as "not configured".
const ExitNotConfigured = 125

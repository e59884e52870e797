// Package status is the box's status page (statusd): it reads the health contract
// (internal/health) of every daemon and answers the participant's first question, "why is there
// no data?", as one chain of causes from the tap's cable to the uplink, with the first broken link
// marked and its fix in plain words. The same page is JSON for a script (Accept:
// application/json). It listens on the management port only, behind the device password.
package status

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
)

// State is a node's colour. Unknown is not green: a check that nobody made (a daemon not
// configured, a self-test not written yet) must not read as passed.
type State string

const (
	OK      State = "ok"
	Fail    State = "fail"
	Unknown State = "unknown"
)

// Node is one link of the chain, or one daemon check under it.
type Node struct {
	Name   string    `json:"name"`
	State  State     `json:"state"`
	Since  time.Time `json:"since,omitzero"`
	Detail string    `json:"detail"`
	Fix    string    `json:"fix,omitempty"`
	// Daemon is whose check this is ("" for a node statusd composed itself).
	Daemon string `json:"daemon,omitempty"`
	// FirstFailure marks the one node to fix first: the first failing one, top-down.
	FirstFailure bool    `json:"first_failure,omitempty"`
	Children     []*Node `json:"children,omitempty"`
}

// DaemonStatus is what one daemon's socket answered.
type DaemonStatus struct {
	Name   string `json:"name"`
	Socket string `json:"socket,omitempty"`
	// State: "running", "not running" (configured, but its socket does not answer) or "not
	// configured" (not in statusd's list).
	State  string         `json:"state"`
	Error  string         `json:"error,omitempty"`
	Report *health.Report `json:"report,omitempty"`
	// Metrics is the daemon's /metrics.json, relayed so that a script reads counters from the
	// management port without a socket on the box (ci/qemu-check-status does).
	Metrics *health.MetricsDoc `json:"metrics,omitempty"`
}

// Page is the whole status document.
type Page struct {
	Schema string    `json:"schema"`
	Time   time.Time `json:"time"`
	// OK is true when every link of the chain is green (unknown is not).
	OK bool `json:"ok"`
	// FirstFailurePath names the nodes from the chain's top down to the first failure.
	FirstFailurePath []string        `json:"first_failure_path,omitempty"`
	Chain            []*Node         `json:"chain"`
	Daemons          []*DaemonStatus `json:"daemons"`
	// Counters, Identity, Logs and Process are filled by the server (view.go).
	Counters *Counters   `json:"counters,omitempty"`
	Identity *Identity   `json:"identity,omitempty"`
	Logs     []DaemonLog `json:"logs,omitempty"`
	// Process is statusd's own CPU time and resident set (self.go).
	Process *Process `json:"process,omitempty"`
	// Updates is updated's state (updates.go).
	Updates *Updates `json:"updates,omitempty"`
}

// PageSchema names the version of the JSON page.
const PageSchema = "dnssensor.status/v1"

// Daemon is one daemon statusd asks.
type Daemon struct {
	Name   string
	Socket string
	// Optional daemons (netconfd until it serves the contract) are left out when their socket is
	// absent instead of being reported as not running.
	Optional bool
}

// Collect asks every daemon for its health and metrics, concurrently, within ctx. A daemon that
// does not answer is "not running", never an error of the page. known are the daemons the page
// knows of; the ones not in ds are "not configured".
func Collect(ctx context.Context, ds []Daemon, known []string) []*DaemonStatus {
	out := make([]*DaemonStatus, len(ds))
	var wg sync.WaitGroup
	for i, d := range ds {
		wg.Go(func() {
			st := &DaemonStatus{Name: d.Name, Socket: d.Socket, State: "running"}
			rep, err := health.Get(ctx, d.Socket)
			if err != nil {
				st.State, st.Error = "not running", err.Error()
				if d.Optional {
					st = nil
				}
			} else {
				st.Report = rep
				// Metrics add detail (both directions); without them the node is unknown.
				st.Metrics, _ = health.GetMetrics(ctx, d.Socket)
			}
			out[i] = st
		})
	}
	wg.Wait()
	res := out[:0]
	for _, st := range out {
		if st != nil {
			res = append(res, st)
		}
	}
	have := map[string]bool{}
	for _, d := range ds {
		have[d.Name] = true
	}
	for _, k := range known {
		if !have[k] {
			res = append(res, &DaemonStatus{Name: k, State: "not configured"})
		}
	}
	return res
}

// The chain's links, top-down: each depends on the ones above it.
const (
	stageInput     = "tap ports"
	stageFrames    = "frames"
	stageDNS       = "DNS seen"
	stageResolver  = "DNS from the configured resolver"
	stageBoth      = "both directions"
	stagePairs     = "transactions paired"
	stagePrivacy   = "privacy self-test"
	stageSpool     = "spool"
	stageUplink    = "uplink destinations"
	stageClock     = "clock synchronised"
	stageElsewhere = ""
)

var stages = []string{stageInput, stageFrames, stageDNS, stageResolver, stageBoth, stagePairs,
	stagePrivacy, stageSpool, stageUplink, stageClock}

// stageOf places a daemon's check in the chain by its name (the names are part of the health
// contract: "keep names stable"). A name not known here inherits its parent's stage.
func stageOf(daemon, name, parent string) string {
	switch daemon {
	case "sensord":
		switch {
		case name == "capture", strings.HasPrefix(name, "port "), name == "dnstap", name == "input":
			return stageInput
		case strings.HasPrefix(name, "frames on "), strings.HasPrefix(name, "kernel drops on "), name == "dnstap writers":
			return stageFrames
		case strings.HasPrefix(name, "DNS on "):
			return stageDNS
		case name == "resolver transactions", name == "resolver configured":
			return stageResolver
		case name == "pairs", name == "records":
			return stagePairs
		case name == "privacy self-test":
			return stagePrivacy
		case name == "output", name == "spool":
			return stageSpool
		}
	case "uplinkd":
		switch {
		case name == "spool", name == "loss ledger":
			return stageSpool
		case strings.HasPrefix(name, "destination "), strings.HasPrefix(name, "delivering to "):
			return stageUplink
		}
	}
	return parent
}

// Compose builds the page from what the daemons answered.
func Compose(now time.Time, ds []*DaemonStatus) *Page { return compose(now, ds, nil) }

// compose builds the page; clock reads the kernel's clock state (nil: the clock link is unknown).
func compose(now time.Time, ds []*DaemonStatus, clock func() (ClockState, error)) *Page {
	p := &Page{Schema: PageSchema, Time: now, Daemons: ds, Chain: []*Node{}}
	by := map[string]*DaemonStatus{}
	for _, d := range ds {
		by[d.Name] = d
	}
	chain := map[string]*Node{}
	for _, s := range stages {
		chain[s] = &Node{Name: s}
	}
	// Each daemon's checks go under their stage, flattened: the chain is the tree's order.
	for _, name := range []string{"sensord", "uplinkd"} {
		d := by[name]
		if d == nil || d.Report == nil {
			continue
		}
		var walk func(cs []*health.Check, parent string)
		walk = func(cs []*health.Check, parent string) {
			for _, c := range cs {
				st := stageOf(name, c.Name, parent)
				if n := chain[st]; n != nil {
					n.Children = append(n.Children, fromCheck(name, c))
				}
				walk(c.Children, st)
			}
		}
		walk(d.Report.Checks, stageElsewhere)
	}
	sensord, uplinkd := by["sensord"], by["uplinkd"]
	for _, s := range stages {
		n := chain[s]
		switch s {
		case stageBoth:
			bothDirections(n, sensord)
		case stageClock:
			clockNode(n, clock)
		case stageUplink:
			fromDaemon(n, uplinkd, "uplinkd")
		case stageSpool:
			// Both daemons hold a part: sensord writes, uplinkd reads. The worse one colours it.
			a, b := &Node{Children: n.Children}, &Node{Children: n.Children}
			fromDaemon(a, sensord, "sensord")
			fromDaemon(b, uplinkd, "uplinkd")
			if rank(b.State) > rank(a.State) {
				a = b
			}
			n.State, n.Detail, n.Fix = a.State, a.Detail, a.Fix
		default:
			fromDaemon(n, sensord, "sensord")
		}
		p.Chain = append(p.Chain, n)
	}
	p.OK = true
	for _, n := range p.Chain {
		if n.State != OK {
			p.OK = false
		}
	}
	for _, n := range p.Chain {
		if path := markFirst(n); path != nil {
			p.FirstFailurePath = path
			break
		}
	}
	return p
}

func rank(s State) int {
	switch s {
	case Fail:
		return 2
	case Unknown:
		return 1
	}
	return 0
}

func fromCheck(daemon string, c *health.Check) *Node {
	n := &Node{Name: c.Name, State: OK, Since: c.Since, Detail: c.Detail, Fix: c.Fix, Daemon: daemon}
	if !c.OK {
		n.State = Fail
	}
	return n
}

// fromDaemon colours a stage from its daemon checks: red when one is, green when all are, and
// from the daemon's state when it has none (not running, not configured, or no such check).
func fromDaemon(n *Node, d *DaemonStatus, name string) {
	switch {
	case d == nil || d.State == "not configured":
		n.State, n.Detail = Unknown, name+" is not configured on this box"
		n.Fix = "configure " + name + " (its configuration file under /perm) and restart it"
		return
	case d.Report == nil:
		n.State, n.Detail = Fail, name+" is not running: "+d.Error
		n.Fix = "start " + name + " and see its log on the gokrazy page; exit status 125 means it has no configuration"
		return
	}
	var mine []*Node
	for _, c := range n.Children {
		if c.Daemon == name {
			mine = append(mine, c)
		}
	}
	if len(mine) == 0 {
		n.State, n.Detail = Unknown, name+" reports no check for this"
		return
	}
	n.State, n.Detail = OK, ""
	var fails, oks []string
	for _, c := range mine {
		if c.State == Fail {
			fails = append(fails, c.Name)
			if n.State != Fail {
				n.Fix = c.Fix
			}
			n.State = Fail
		} else {
			oks = append(oks, c.Name)
		}
	}
	if n.State == Fail {
		n.Detail = name + ": failing: " + strings.Join(fails, ", ")
	} else {
		n.Detail = name + ": passing: " + strings.Join(oks, ", ")
	}
}

// bothDirections: a tap that delivers only one direction shows queries and no responses (or the
// reverse); pairing then fails with no hint why.
func bothDirections(n *Node, d *DaemonStatus) {
	switch {
	case d == nil || d.Report == nil:
		fromDaemon(n, d, "sensord")
		return
	case d.Metrics == nil:
		n.State, n.Detail = Unknown, "sensord's /metrics.json could not be read"
		return
	}
	f := d.Metrics.Metrics["dnssensor_sensord_port_dns_messages_total"]
	if f == nil {
		n.State, n.Detail = Unknown, "sensord counts no DNS messages per port (not capturing from tap ports)"
		return
	}
	ports := map[string][2]float64{}
	for _, s := range f.Samples {
		if s.Value == nil {
			continue
		}
		v := ports[s.Labels["port"]]
		switch s.Labels["qr"] {
		case "query":
			v[0] += *s.Value
		case "response":
			v[1] += *s.Value
		}
		ports[s.Labels["port"]] = v
	}
	var q, r float64
	names := make([]string, 0, len(ports))
	for p, v := range ports {
		q, r = q+v[0], r+v[1]
		names = append(names, p)
	}
	sort.Strings(names)
	var parts []string
	for _, p := range names {
		parts = append(parts, fmt.Sprintf("%s: %.0f queries, %.0f responses", p, ports[p][0], ports[p][1]))
	}
	n.Detail = strings.Join(parts, "; ")
	switch {
	case q == 0 && r == 0:
		n.State, n.Detail = Fail, "no DNS messages seen yet"
		n.Fix = "see the nodes above: no DNS reaches sensord"
	case r == 0:
		n.State, n.Fix = Fail, "only queries: the tap delivers one direction; connect both of its outputs (A and B) to the box's tap ports"
	case q == 0:
		n.State, n.Fix = Fail, "only responses: the tap delivers one direction; connect both of its outputs (A and B) to the box's tap ports"
	default:
		n.State = OK
	}
}

// markFirst marks the first failing node, top-down and depth first, preferring the most upstream
// daemon check under a red stage, and returns the names leading to it.
func markFirst(n *Node) []string {
	if n.State != Fail {
		return nil
	}
	for _, c := range n.Children {
		if p := markFirst(c); p != nil {
			return append([]string{n.Name}, p...)
		}
	}
	n.FirstFailure = true
	return []string{n.Name}
}

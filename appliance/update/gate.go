package update

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
)

// The health gate reads the daemons' /health.json (the health contract) and keeps a new root
// only when the appliance does its job on it:
//
//   - every daemon that answered before the update answers again;
//   - "capture" (sensord: the capture ports are open), every "spool" check and a "privacy
//     self-test" check, wherever they sit in a tree, pass when present;
//   - checks that passed before the update and depend on traffic — "frames on PORT" (the tap
//     delivered frames) and "delivering to DEST" (the uplink delivered) — pass again.
//
// A daemon that did not answer before (not configured) is not asked to answer after.
var (
	gateRequired = []string{"capture", "spool", "privacy self-test"}
	gateCarried  = []string{"frames on ", "delivering to "} // name prefixes
)

// Daemon names a daemon the gate reads and its health socket.
type Daemon struct {
	Name, Socket string
}

func walk(cs []*health.Check, prefix string, f func(path string, c *health.Check)) {
	for _, c := range cs {
		p := c.Name
		if prefix != "" {
			p = prefix + "/" + c.Name
		}
		f(p, c)
		walk(c.Children, p, f)
	}
}

func carried(name string) bool {
	for _, p := range gateCarried {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func read(ctx context.Context, daemons []Daemon, timeout time.Duration) map[string]*health.Report {
	out := map[string]*health.Report{}
	for _, d := range daemons {
		c, cancel := context.WithTimeout(ctx, timeout)
		rep, err := health.Get(c, d.Socket)
		cancel()
		if err == nil {
			out[d.Name] = rep
		}
	}
	return out
}

// takeBaseline reads the running system before the update.
func takeBaseline(ctx context.Context, daemons []Daemon, timeout time.Duration) Baseline {
	b := Baseline{Passed: map[string][]string{}}
	for name, rep := range read(ctx, daemons, timeout) {
		b.Daemons = append(b.Daemons, name)
		walk(rep.Checks, "", func(path string, c *health.Check) {
			if c.OK && carried(c.Name) {
				b.Passed[name] = append(b.Passed[name], path)
			}
		})
	}
	sort.Strings(b.Daemons)
	return b
}

// gateOnce evaluates the gate now: "" when it passes, else the first reason it does not.
func gateOnce(ctx context.Context, daemons []Daemon, timeout time.Duration, base Baseline) string {
	reps := read(ctx, daemons, timeout)
	for _, name := range base.Daemons {
		if reps[name] == nil {
			return fmt.Sprintf("%s does not answer on its health socket (it did before the update)", name)
		}
	}
	names := make([]string, 0, len(reps))
	for n := range reps {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		ok := map[string]bool{}
		var bad string
		walk(reps[name].Checks, "", func(path string, c *health.Check) {
			ok[path] = c.OK
			if bad != "" || c.OK {
				return
			}
			for _, r := range gateRequired {
				if c.Name == r {
					bad = fmt.Sprintf("%s: %s fails: %s", name, path, c.Detail)
				}
			}
		})
		if bad != "" {
			return bad
		}
		for _, path := range base.Passed[name] {
			if !ok[path] {
				return fmt.Sprintf("%s: %s passed before the update and does not now", name, path)
			}
		}
	}
	return ""
}

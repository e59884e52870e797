package update

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"syscall"
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

// takeBaseline reads the running system before the update. Which daemons answer here decides
// which must answer in the test boot, so a daemon that is running but slow to answer (the box has
// just written a root and a boot partition, and under emulation a read can take longer than
// HealthTimeout) is asked again every GatePoll until BaselineWait: left out on one slow read, a
// sensord that then failed to start in the new root passed the gate unnoticed. Only a daemon that
// is not running (no socket, or no one listening on it: not configured) is left out at once. The
// second result names the running daemons that did not answer within the wait, which the gate
// then cannot require.
func (a *Agent) takeBaseline(ctx context.Context) (Baseline, []string) {
	b := Baseline{Passed: map[string][]string{}}
	pending := a.cfg.Daemons
	last := map[string]error{}
	deadline := a.cfg.Now().Add(a.cfg.BaselineWait)
	for {
		var again []Daemon
		for _, d := range pending {
			c, cancel := context.WithTimeout(ctx, a.cfg.HealthTimeout)
			rep, err := health.Get(c, d.Socket)
			cancel()
			switch {
			case err == nil:
				b.Daemons = append(b.Daemons, d.Name)
				walk(rep.Checks, "", func(path string, c *health.Check) {
					if c.OK && carried(c.Name) {
						b.Passed[d.Name] = append(b.Passed[d.Name], path)
					}
				})
			case notRunning(err):
			default:
				last[d.Name] = err
				again = append(again, d)
			}
		}
		pending = again
		if len(pending) == 0 || !a.cfg.Now().Before(deadline) || ctx.Err() != nil {
			break
		}
		if err := a.cfg.Sleep(ctx, a.cfg.GatePoll); err != nil {
			break
		}
	}
	sort.Strings(b.Daemons)
	var silent []string
	for _, d := range pending {
		silent = append(silent, fmt.Sprintf("%s (%v)", d.Name, last[d.Name]))
	}
	return b, silent
}

// notRunning tells whether a health read failed because no daemon serves the socket, as opposed
// to one that is there but did not answer in time.
func notRunning(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED)
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

// baselineEvent says in the history what the gate will hold the new root to.
func baselineEvent(b Baseline, silent []string) string {
	var parts []string
	for _, d := range b.Daemons {
		if p := b.Passed[d]; len(p) > 0 {
			parts = append(parts, fmt.Sprintf("%s (%s)", d, strings.Join(p, ", ")))
		} else {
			parts = append(parts, d)
		}
	}
	msg := "health gate baseline: none of the daemons answered"
	if len(parts) > 0 {
		msg = "health gate baseline: " + strings.Join(parts, "; ")
	}
	if len(silent) > 0 {
		msg += "; running but not answering before the update, so not required after it: " + strings.Join(silent, ", ")
	}
	return msg
}

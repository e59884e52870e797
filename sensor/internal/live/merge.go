package live

import (
	"time"

	"github.com/sie-europe/dnssensor/sensor/internal/decode"
)

// valveStep is the most the valve clock advances between two calls of release. The merge loop
// runs every few milliseconds; a longer gap means this process was not running (SIGSTOP, a CPU
// quota, a virtual machine's steal time, a busy machine), and then the readers did not run
// either: their silence is no sign of a stuck port and must not open the valve.
const valveStep = 2 * mergeTick

// merge orders the ports' frames by ring timestamp. It is pure: the readers' batches, their
// "polled the ring empty at T" reports and the clock come from the caller (Run, or a test on a
// virtual clock), and released frames go to the Sink.
//
// A frame is released once no port can still deliver an older one: each port has either a frame
// queued that is at least as new (a ring is read in timestamp order), or a watermark at least
// as new. A port's watermark is its last "polled empty at T" minus slack (a frame can surface
// from the ring up to slack after its timestamp, see source.RetireDelay), or the timestamp of
// the last frame it delivered. This is exact whatever the scheduling: a reader that was not run
// for a while holds the other ports back until it has read its ring.
//
// Slack is a bound the kernel keeps only as long as its softirqs run in time: on a saturated
// machine the retire timer and the receive softirq are deferred (ksoftirqd competes with
// everything else). A frame older than its port's last empty-poll watermark proves the slack too
// small: it is raised to cover that lateness (at most to half the window)
// and counted, so one such delay costs at most the frames it already overtook.
//
// The valve: a frame that has waited window (valve time) is released anyway, counted in
// Stats.Forced; a port whose reader makes no progress must not stall the others for ever. Valve
// time is the wall clock with every gap between two release calls cut to valveStep, so a pause
// of the whole process does not count as waiting.
type merge struct {
	p      Sink
	stats  *Stats
	window time.Duration // 0: no ordering, frames go out as they come
	slack  int64
	free   func(*batch) // hands a drained batch back to its reader
	queues [][]*batch
	marks  []int64 // per port: no frame older than this can still come from it
	polls  []int64 // per port: when it last found its ring empty
	held   int
	last   int64 // newest timestamp released
	wall   time.Time
	valve  time.Duration // valve clock
}

func newMerge(ports int, window, slack time.Duration, p Sink, stats *Stats, free func(*batch)) *merge {
	stats.Slack.Store(int64(slack))
	return &merge{p: p, stats: stats, window: window, slack: int64(slack), free: free,
		queues: make([][]*batch, ports), marks: make([]int64, ports), polls: make([]int64, ports)}
}

// add queues a port's batch (frames in ring order).
func (m *merge) add(b *batch) {
	if len(b.frames) == 0 {
		m.free(b)
		return
	}
	b.in = m.valve
	if t := m.polls[b.port]; t != 0 && m.window > 0 {
		oldest := b.frames[0].ts
		for _, f := range b.frames[1:] {
			oldest = min(oldest, f.ts)
		}
		if late := t - oldest; late > m.slack {
			m.raise(late)
		}
	}
	m.queues[b.port] = append(m.queues[b.port], b)
	m.held += len(b.frames)
	m.stats.Held.Store(int64(m.held))
}

// polled records that port found its ring empty at kernel time t (ns), after every frame
// queued from it so far.
func (m *merge) polled(port int, t int64) {
	m.polls[port] = t
	if w := t - m.slack; w > m.marks[port] {
		m.marks[port] = w
	}
}

// raise widens the slack to cover a frame that surfaced late ns after its stamp, and half as much
// again for a delay that grows.
func (m *merge) raise(late int64) {
	m.slack = max(m.slack, min(late+late/2, int64(m.window/2)))
	m.stats.SlackRaised.Add(1)
	m.stats.Slack.Store(m.slack)
}

// tick advances the valve clock to the wall time now.
func (m *merge) tick(now time.Time) {
	if !m.wall.IsZero() {
		d := now.Sub(m.wall)
		if d > valveStep {
			d = valveStep
		}
		if d > 0 {
			m.valve += d
		}
	}
	if now.After(m.wall) {
		m.wall = now
	}
}

// release hands over every frame that can no longer be overtaken, and those the valve forces
// out; all releases everything (the readers have stopped).
func (m *merge) release(now time.Time, all bool) {
	m.tick(now)
	for m.held > 0 {
		best, bestTS := -1, int64(0)
		for i, q := range m.queues {
			if len(q) == 0 {
				continue
			}
			if ts := q[0].frames[q[0].next].ts; best < 0 || ts < bestTS {
				best, bestTS = i, ts
			}
		}
		b := m.queues[best][0]
		if !all && m.window > 0 && !m.safe(best, bestTS) {
			if m.valve-b.in < m.window {
				break
			}
			m.stats.Forced.Add(1)
		}
		f := b.frames[b.next]
		if f.ts < m.last {
			m.stats.OutOfOrder.Add(1)
		} else {
			m.last = f.ts
		}
		if f.ts > m.marks[best] {
			m.marks[best] = f.ts
		}
		m.p.Frame(decode.LinkEthernet, f.ts, b.data[f.off:f.off+f.n], int(f.wireLen))
		m.held--
		b.next++
		if b.next == len(b.frames) {
			m.queues[best] = m.queues[best][1:]
			m.free(b)
		}
	}
	m.stats.Held.Store(int64(m.held))
	if s, ok := m.p.(interface{ Sync() }); ok {
		s.Sync()
	}
}

// safe reports whether no port other than port can still deliver a frame older than ts.
func (m *merge) safe(port int, ts int64) bool {
	for j, q := range m.queues {
		if j != port && len(q) == 0 && m.marks[j] < ts {
			return false
		}
	}
	return true
}

// horizon is the time before which every port has delivered everything (0 while a port has
// reported nothing): the pipeline's clock may follow it when nothing is held.
func (m *merge) horizon() int64 {
	h := int64(0)
	for i, w := range m.marks {
		if i == 0 || w < h {
			h = w
		}
	}
	return h
}

// take handles one reader message: its frames first, then its polled report.
func (m *merge) take(x msg) {
	if x.b != nil {
		m.add(x.b)
	}
	if x.polled != 0 {
		m.polled(x.port, x.polled)
	}
}

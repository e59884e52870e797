package live

import (
	"math/rand"
	"net/netip"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/pktbuild"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
	"github.com/sie-europe/dnssensor/sensor/internal/pipeline"
)

// simFrame is a frame in a simulated ring: stamped at ts, readable from vis on (its block
// retired), both virtual ns.
type simFrame struct {
	b       []byte
	ts, vis int64
}

// simulation of two tap ports on a virtual clock: rings that hand frames over up to slack after
// their timestamp (in ring order), readers that run only when scheduled, the whole process
// paused for pause in every period, and the merge loop ticking every mergeTick while running.
type simulation struct {
	window, slack  time.Duration
	pause, period  time.Duration
	gap            func(port int, r *rand.Rand) time.Duration // time between two runs of a reader
	deferred       map[int]time.Duration                      // query i surfaces this much later still
	seed           int64
	frames         [2][]simFrame
	pairs, unsolic int
	stats          *Stats
}

var simEpoch = time.Unix(1700000000, 0)

// simPackets are n transactions: a query for port A (0) and its response for port B (1).
func simPackets(t *testing.T, n int) (pk [2][][]byte) {
	res := netip.MustParseAddrPort("198.51.100.2:40000")
	auth := netip.MustParseAddrPort("192.0.2.10:53")
	for i := 0; i < n; i++ {
		pk[0] = append(pk[0], eth(pktbuild.AppendUDP(nil, res, auth, dnsMsg(t, uint16(i), false))))
		pk[1] = append(pk[1], eth(pktbuild.AppendUDP(nil, auth, res, dnsMsg(t, uint16(i), true))))
	}
	return pk
}

// traffic fills the rings: the queries 300 µs apart, each response 45 µs after its query; each
// frame surfaces a random time up to slack after its stamp.
func (s *simulation) traffic(pk [2][][]byte, r *rand.Rand) {
	var lastVis [2]int64
	put := func(port int, b []byte, ts int64, extra time.Duration) {
		vis := max(ts+r.Int63n(int64(s.slack)), lastVis[port]) + int64(extra)
		lastVis[port] = vis
		s.frames[port] = append(s.frames[port], simFrame{b, ts, vis})
	}
	for i := range pk[0] {
		ts := simEpoch.UnixNano() + int64(i)*300e3
		put(0, pk[0][i], ts, s.deferred[i])
		put(1, pk[1][i], ts+45e3, 0)
	}
}

func (s *simulation) run(t *testing.T, pk [2][][]byte) {
	t.Helper()
	n := len(pk[0])
	r := rand.New(rand.NewSource(s.seed))
	s.traffic(pk, r)
	// Unsolicited records decided at once (no late-query hold): the simulation counts them to see
	// what the merge alone did.
	p, err := pipeline.New(pipeline.Config{Resolvers: []netip.Prefix{netip.MustParsePrefix("198.51.100.2/32")}, Unsolicited: true}, func(rec *dnsqr.Record) error {
		switch rec.Type {
		case dnsqr.UDPQueryResponse:
			s.pairs++
		case dnsqr.UDPUnsolicitedResponse:
			s.unsolic++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.stats = &Stats{}
	m := newMerge(2, s.window, s.slack, p, s.stats, func(*batch) {})
	var next [2]time.Duration // each reader's next run
	var pos [2]int
	const step = time.Millisecond
	end := time.Duration(n)*300*time.Microsecond + time.Second
	for now := time.Duration(0); now < end; now += step {
		if s.pause > 0 && now%s.period < s.pause {
			continue // SIGSTOP: nothing runs, the rings fill
		}
		wall := simEpoch.Add(now)
		for port := range 2 {
			if now < next[port] {
				continue
			}
			// One reader run: read the ring until it is empty, in batches of at most 16, then
			// report the empty poll, as read does.
			fr := s.frames[port]
			for pos[port] < len(fr) && fr[pos[port]].vis <= wall.UnixNano() {
				b := &batch{port: port}
				for len(b.frames) < 16 && pos[port] < len(fr) && fr[pos[port]].vis <= wall.UnixNano() {
					f := fr[pos[port]]
					b.frames = append(b.frames, frameRef{off: int32(len(b.data)), n: int32(len(f.b)), wireLen: int32(len(f.b)), ts: f.ts})
					b.data = append(b.data, f.b...)
					pos[port]++
				}
				m.take(msg{port: port, b: b})
				m.release(wall, false)
			}
			m.take(msg{port: port, polled: wall.UnixNano()})
			next[port] = now + s.gap(port, r)
		}
		if now%mergeTick == 0 {
			m.release(wall, false)
		}
	}
	m.release(simEpoch.Add(end), true)
	p.Flush()
}

// The two ports of a tap read on a virtual clock under the schedules that broke the pairing:
// port A's reader 30 ms late, both readers starved at random by other work, the process paused
// 150 ms in every 500 ms and 300 ms in every second. Every transaction pairs, nothing is forced
// or out of order; with the ordering off (window 0) responses overtake their queries.
func TestMergePairsAcrossPorts(t *testing.T) {
	const n = 1000
	pk := simPackets(t, n)
	const slack = 120 * time.Millisecond // source.RetireDelay(10 ms)
	late := func(port int, r *rand.Rand) time.Duration {
		if port == 0 {
			return 30 * time.Millisecond
		}
		return time.Millisecond
	}
	busy := func(port int, r *rand.Rand) time.Duration {
		// Mostly prompt, sometimes not scheduled for up to 250 ms.
		if r.Intn(20) == 0 {
			return time.Duration(r.Int63n(int64(250 * time.Millisecond)))
		}
		return time.Duration(1+r.Intn(10)) * time.Millisecond
	}
	for _, tc := range []struct {
		name          string
		window        time.Duration
		pause, period time.Duration
		gap           func(int, *rand.Rand) time.Duration
	}{
		{"A read late", DefaultWindow, 0, 0, late},
		{"busy", DefaultWindow, 0, 0, busy},
		{"paused 150/500", DefaultWindow, 150 * time.Millisecond, 500 * time.Millisecond, busy},
		{"paused 300/1000", DefaultWindow, 300 * time.Millisecond, time.Second, busy},
	} {
		for seed := int64(1); seed <= 3; seed++ {
			s := &simulation{window: tc.window, slack: slack, pause: tc.pause, period: tc.period, gap: tc.gap, seed: seed}
			s.run(t, pk)
			if s.pairs != n || s.stats.Forced.Load() != 0 || s.stats.OutOfOrder.Load() != 0 || s.stats.Held.Load() != 0 {
				t.Errorf("%s, seed %d: %d pairs of %d, %d unsolicited; %s", tc.name, seed, s.pairs, n, s.unsolic, s.stats.String())
			}
		}
	}
	s := &simulation{window: 0, slack: slack, gap: late, seed: 1}
	s.run(t, pk)
	if s.unsolic == 0 {
		t.Errorf("window 0 paired everything (%d pairs): the simulation does not exercise the merge", s.pairs)
	}
}

// A saturated machine defers the kernel's softirqs, and a frame surfaces later than the slack
// after its stamp: the first such delay costs the frames it overtook, and widens the slack so that
// the same delay again costs nothing.
func TestMergeWidensSlack(t *testing.T) {
	pk := simPackets(t, 1000)
	prompt := func(int, *rand.Rand) time.Duration { return time.Millisecond }
	run := func(deferred ...int) *simulation {
		s := &simulation{window: DefaultWindow, slack: 45 * time.Millisecond, gap: prompt, seed: 1, deferred: map[int]time.Duration{}}
		for _, i := range deferred {
			s.deferred[i] = 90 * time.Millisecond // beyond the slack
		}
		s.run(t, pk)
		return s
	}
	once, often := run(100), run(100, 500, 900)
	t.Logf("once: %d pairs, %d unsolicited; %s", once.pairs, once.unsolic, once.stats.String())
	t.Logf("three times: %d pairs, %d unsolicited; %s", often.pairs, often.unsolic, often.stats.String())
	if once.unsolic == 0 || once.stats.SlackRaised.Load() != 1 {
		t.Fatalf("a 90 ms deferral cost nothing or raised nothing: the test does not exercise the slack")
	}
	if often.unsolic != once.unsolic || often.stats.OutOfOrder.Load() != once.stats.OutOfOrder.Load() || often.stats.SlackRaised.Load() != 1 {
		t.Errorf("the same deferral again cost more: %d unsolicited, %d out of order, %d raises; want %d, %d, 1",
			often.unsolic, often.stats.OutOfOrder.Load(), often.stats.SlackRaised.Load(), once.unsolic, once.stats.OutOfOrder.Load())
	}
	if got := time.Duration(often.stats.Slack.Load()); got < 90*time.Millisecond || got > DefaultWindow/2 {
		t.Errorf("slack %v after a 90 ms deferral", got)
	}
}

// The valve: a port that never reports (its reader stuck) holds the other port's frames for
// window of valve time, then they go out counted as forced; a pause of the process does not
// count towards the window; a frame the stuck port delivers afterwards is counted out of order.
func TestMergeValve(t *testing.T) {
	st := &Stats{}
	var got []int64
	sink := sinkFunc(func(ts int64) { got = append(got, ts) })
	freed := 0
	m := newMerge(2, 100*time.Millisecond, 45*time.Millisecond, sink, st, func(*batch) { freed++ })
	frame := eth(make([]byte, 28))
	mk := func(port int, ts ...int64) *batch {
		b := &batch{port: port}
		for _, x := range ts {
			b.frames = append(b.frames, frameRef{off: int32(len(b.data)), n: int32(len(frame)), wireLen: int32(len(frame)), ts: x})
			b.data = append(b.data, frame...)
		}
		return b
	}
	t0 := simEpoch
	ns := func(d time.Duration) int64 { return t0.Add(d).UnixNano() }
	m.release(t0, false)
	m.take(msg{port: 0, b: mk(0, ns(0), ns(time.Millisecond)), polled: ns(2 * time.Millisecond)})
	m.release(t0, false)
	// A 10 s pause: valve time moves by valveStep only.
	m.release(t0.Add(10*time.Second), false)
	if len(got) != 0 || st.Forced.Load() != 0 {
		t.Fatalf("released %d frames after a pause (forced %d): a pause opened the valve", len(got), st.Forced.Load())
	}
	// Port 1 reports an empty ring late enough to cover the first frame only.
	m.take(msg{port: 1, polled: ns(45*time.Millisecond + 500*time.Microsecond)})
	m.release(t0.Add(10*time.Second), false)
	if len(got) != 1 || st.Forced.Load() != 0 {
		t.Fatalf("watermark: released %d frames, forced %d; want 1, 0", len(got), st.Forced.Load())
	}
	wall := t0.Add(10 * time.Second)
	for i := 0; i < 100 && len(got) < 2; i++ {
		wall = wall.Add(mergeTick)
		m.release(wall, false)
		if len(got) == 2 && i+1 < int(100*time.Millisecond/mergeTick)-2 {
			t.Fatalf("valve opened after %d ticks, before the window", i+1)
		}
	}
	if len(got) != 2 || st.Forced.Load() != 1 || freed != 1 || st.Held.Load() != 0 {
		t.Fatalf("valve: released %d, forced %d, batches freed %d, held %d; want 2, 1, 1, 0", len(got), st.Forced.Load(), freed, st.Held.Load())
	}
	m.take(msg{port: 1, b: mk(1, ns(time.Millisecond-1))})
	m.release(wall, false)
	if st.OutOfOrder.Load() != 1 {
		t.Errorf("a frame older than one released: out of order %d, want 1", st.OutOfOrder.Load())
	}
	if h := m.horizon(); h != ns(time.Millisecond)-1 {
		t.Errorf("horizon %v, want the older port's watermark %v", time.Unix(0, h).Sub(t0), time.Millisecond-1)
	}
}

type sinkFunc func(ts int64)

func (f sinkFunc) Frame(_ decode.LinkType, ts int64, _ []byte, _ int) { f(ts) }
func (f sinkFunc) Idle(int64)                                         {}

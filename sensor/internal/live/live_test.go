package live

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sie-europe/dnssensor/internal/pktbuild"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/candidates"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
	"github.com/sie-europe/dnssensor/sensor/internal/pipeline"
)

var errTimeout = errors.New("timeout")

type fakeFrame struct {
	b  []byte
	ts int64
}

// fakeSource plays frames; a frame becomes readable at its delivery time, like a ring whose
// blocks are retired late.
type fakeSource struct {
	mu     sync.Mutex
	frames []fakeFrame
	at     []time.Time
}

func (f *fakeSource) Read() ([]byte, int64, int, bool, error) {
	f.mu.Lock()
	if len(f.frames) == 0 || time.Now().Before(f.at[0]) {
		f.mu.Unlock()
		time.Sleep(time.Millisecond)
		return nil, 0, 0, false, errTimeout
	}
	fr := f.frames[0]
	f.frames, f.at = f.frames[1:], f.at[1:]
	f.mu.Unlock()
	return fr.b, fr.ts, len(fr.b), false, nil
}

func (f *fakeSource) KernelStats() (uint64, uint64, uint64, error) { return 0, 0, 0, nil }

func eth(ip []byte) []byte {
	return append([]byte{0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 8, 0}, ip...)
}

func dnsMsg(t *testing.T, id uint16, resp bool) []byte {
	m := new(dns.Msg)
	m.SetQuestion("www.example.", dns.TypeA)
	m.Id, m.Response, m.RecursionDesired = id, resp, false
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// countingSink counts the frames Run has released, for a test waiting on the merge.
type countingSink struct {
	*pipeline.Pipeline
	n atomic.Int64
}

func (c *countingSink) Frame(link decode.LinkType, ts int64, frame []byte, wireLen int) {
	c.n.Add(1)
	c.Pipeline.Frame(link, ts, frame, wireLen)
}

func (f *fakeSource) left() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.frames)
}

// Run end to end, on the real clock: port A (queries) surfaces 30 ms late, port B (responses) at
// once. Whatever the scheduling, the watermarks (Slack covers the 30 ms) release every frame in
// order during the run, with no help from the valve (10 s) or from the final release.
func TestRunMergesPorts(t *testing.T) {
	res := netip.MustParseAddrPort("198.51.100.2:40000")
	auth := netip.MustParseAddrPort("192.0.2.10:53")
	a, b := &fakeSource{}, &fakeSource{}
	now := time.Now()
	const n = 200
	for i := 0; i < n; i++ {
		ts := now.Add(time.Duration(i) * 100 * time.Microsecond)
		q := eth(pktbuild.AppendUDP(nil, res, auth, dnsMsg(t, uint16(i), false)))
		r := eth(pktbuild.AppendUDP(nil, auth, res, dnsMsg(t, uint16(i), true)))
		a.frames, a.at = append(a.frames, fakeFrame{q, ts.UnixNano()}), append(a.at, ts.Add(30*time.Millisecond))
		b.frames, b.at = append(b.frames, fakeFrame{r, ts.UnixNano() + 45e3}), append(b.at, ts)
	}
	counts := map[dnsqr.Type]int{}
	p, err := pipeline.New(pipeline.Config{Resolvers: []netip.Prefix{netip.MustParsePrefix("198.51.100.2/32")}}, func(r *dnsqr.Record) error {
		counts[r.Type]++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sink := &countingSink{Pipeline: p}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := &Stats{}
	done := make(chan error, 1)
	cands := candidates.New()
	go func() {
		done <- Run(ctx, Config{Window: 10 * time.Second, Slack: 40 * time.Millisecond, TimeoutErr: errTimeout, Logf: t.Logf, Candidates: cands},
			[]Port{{"A", a}, {"B", b}}, sink, st, nil)
	}()
	for deadline := time.Now().Add(60 * time.Second); sink.n.Load() < 2*n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("merge released %d of %d frames (left in sources: %d, %d); %s", sink.n.Load(), 2*n, a.left(), b.left(), st.String())
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	p.Flush()
	t.Logf("%v; %s", counts, st.String())
	if counts[dnsqr.UDPQueryResponse] != n || st.Forced.Load() != 0 || st.OutOfOrder.Load() != 0 {
		t.Errorf("%d pairs of %d, forced %d, out of order %d", counts[dnsqr.UDPQueryResponse], n, st.Forced.Load(), st.OutOfOrder.Load())
	}
	if st.Ports[0].Queries.Load() != n || st.Ports[1].Responses.Load() != n || st.Ports[0].Responses.Load() != 0 {
		t.Errorf("per-port DNS counters: %s", st.String())
	}
	// Port A's frames carry stamps now .. now+(n-1)*100µs, port B's 45 µs later each.
	for i, first := range []int64{now.UnixNano(), now.UnixNano() + 45e3} {
		last := first + (n-1)*100e3
		if got := st.Ports[i].FirstFrame.Load(); got != first {
			t.Errorf("port %s first frame stamp %d, want %d", st.Ports[i].Name, got, first)
		}
		if got := st.Ports[i].LastFrame.Load(); got != last {
			t.Errorf("port %s last frame stamp %d, want %d", st.Ports[i].Name, got, last)
		}
	}
	// The queries' source is the one resolver candidate; responses (from port 53) are not queries to it.
	if c := cands.Top(5, now.UnixNano()); len(c) != 1 || c[0].Addr != res.Addr() || c[0].Queries != n {
		t.Errorf("resolver candidates %v, want %v with %d queries", c, res.Addr(), n)
	}
}

func TestWatchWarnings(t *testing.T) {
	clock := time.Unix(1700000000, 0)
	cfg := Config{Silence: time.Minute, now: func() time.Time { return clock }}
	st := &Stats{Ports: []*PortStats{{Name: "A"}, {Name: "B"}}}
	var logs []string
	w := newWatch(cfg, st, func(f string, a ...any) { logs = append(logs, f) })
	for i := 0; i < 70; i++ {
		clock = clock.Add(time.Second)
		st.Ports[0].lastFrameWall.Store(clock.UnixNano())
		st.Ports[0].Queries.Add(5)
		w.check(clock)
	}
	if len(logs) != 2 {
		t.Fatalf("want a silence and a one-direction warning, got %q", logs)
	}
	for i := 0; i < 70; i++ {
		clock = clock.Add(time.Second)
		w.check(clock)
	}
	if len(logs) != 2 {
		t.Errorf("warnings repeated: %q", logs)
	}
}

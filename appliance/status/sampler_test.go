package status

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
)

// fakeCounters is what the fake daemons' /metrics.json say: counter name → label set → value.
type fakeCounters struct {
	mu      sync.Mutex
	down    map[string]bool
	started map[string]float64
	vals    map[string]map[string]map[string]float64 // daemon → name → "k=v,k=v" → value
}

func newFakeCounters() *fakeCounters {
	return &fakeCounters{down: map[string]bool{}, started: map[string]float64{}, vals: map[string]map[string]map[string]float64{}}
}

func (f *fakeCounters) set(daemon, name, labels string, v float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.vals[daemon] == nil {
		f.vals[daemon] = map[string]map[string]float64{}
	}
	if f.vals[daemon][name] == nil {
		f.vals[daemon][name] = map[string]float64{}
	}
	f.vals[daemon][name][labels] = v
}

func (f *fakeCounters) add(daemon, name, labels string, d float64) {
	f.mu.Lock()
	v := f.vals[daemon][name][labels]
	f.mu.Unlock()
	f.set(daemon, name, labels, v+d)
}

func (f *fakeCounters) fetch(_ context.Context, d Daemon) (*health.MetricsDoc, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down[d.Name] {
		return nil, errors.New(d.Name + " does not answer")
	}
	doc := &health.MetricsDoc{Schema: health.MetricsSchema, Daemon: d.Name, Metrics: map[string]*health.Family{}}
	for name, m := range f.vals[d.Name] {
		fam := &health.Family{Type: "counter"}
		for ls, v := range m {
			labels := map[string]string{}
			for _, kv := range strings.Split(ls, ",") {
				if k, val, ok := strings.Cut(kv, "="); ok {
					labels[k] = val
				}
			}
			fam.Samples = append(fam.Samples, health.Sample{Labels: labels, Value: &v})
		}
		doc.Metrics[name] = fam
	}
	if st, ok := f.started[d.Name]; ok {
		doc.Metrics["process_start_time_seconds"] = &health.Family{Type: "gauge", Samples: []health.Sample{{Labels: map[string]string{}, Value: &st}}}
	}
	return doc, nil
}

func newTestSampler(clock *fakeClock, f *fakeCounters) *Sampler {
	return &Sampler{Daemons: []Daemon{{Name: "sensord"}, {Name: "uplinkd"}}, Every: 10 * time.Second, Now: clock.Now, Fetch: f.fetch}
}

const (
	recordsTotal = "dnssensor_sensord_records_total"
	portFrames   = "dnssensor_sensord_port_frames_total"
	sentTotal    = "dnssensor_uplinkd_records_sent_total"
)

func near(p *float64, want float64) bool {
	return p != nil && math.Abs(*p-want) <= 1e-9*math.Max(1, want)
}

func show(p *float64) string {
	if p == nil {
		return "absent"
	}
	return perSecond(p)
}

// TestSamplerRates: a counter moving 100/s shows 100/s over 1 and 15 minutes, but only once the
// samples span enough of each window; before that the rate is absent, not a guess.
func TestSamplerRates(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	f := newFakeCounters()
	s := newTestSampler(clock, f)
	f.set("sensord", portFrames, "port=eth1", 5000)
	ctx := context.Background()
	step := func(n int, perSec float64) {
		for range n {
			s.SampleOnce(ctx)
			clock.Advance(10 * time.Second)
			f.add("sensord", portFrames, "port=eth1", perSec*10)
		}
	}
	step(1, 100)
	s.SampleOnce(ctx)
	r, ok := s.rate("sensord", portFrames, map[string]string{"port": "eth1"})
	if !ok || r.Per1m != nil || r.Per15m != nil {
		t.Fatalf("after 10 s: %+v %v, want no rates yet", r, ok)
	}
	clock.Advance(10 * time.Second)
	f.add("sensord", portFrames, "port=eth1", 1000)
	step(5, 100) // 1 minute spanned
	s.SampleOnce(ctx)
	r, _ = s.rate("sensord", portFrames, map[string]string{"port": "eth1"})
	if !near(r.Per1m, 100) || r.Per15m != nil {
		t.Fatalf("after 1 min: 1m %s 15m %s, want 100 and absent", show(r.Per1m), show(r.Per15m))
	}
	// 15 minutes, the last at 300/s: the short window sees the change, the long one averages.
	clock.Advance(10 * time.Second)
	f.add("sensord", portFrames, "port=eth1", 1000)
	step(83, 100)
	step(6, 300)
	s.SampleOnce(ctx)
	r, _ = s.rate("sensord", portFrames, map[string]string{"port": "eth1"})
	if !near(r.Per1m, 300) {
		t.Errorf("1m %s, want 300", show(r.Per1m))
	}
	if r.Per15m == nil || *r.Per15m < 110 || *r.Per15m > 125 {
		t.Errorf("15m %s, want ≈ (14×100+300)/15 ≈ 113", show(r.Per15m))
	}
	// The page's row: a counter the daemon does not export is absent ("–"), not zero.
	c := s.Counters(clock.Now())
	if len(c.Ports) != 1 || c.Ports[0].Frames.Absent || !c.Ports[0].Bytes.Absent || !near(c.Ports[0].Frames.Per1m, 300) {
		t.Errorf("ports %+v", c.Ports)
	}
}

// TestSamplerCounterReset: a daemon restart sets its counters back; the rates stay small and
// positive (what the new process counted), never negative or the size of the old counter. A
// restart seen by process_start_time_seconds counts too when the new counter already passed the
// old one.
func TestSamplerCounterReset(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	f := newFakeCounters()
	s := newTestSampler(clock, f)
	ctx := context.Background()
	f.started["sensord"] = 1000
	f.set("sensord", recordsTotal, "type=UDP_QUERY_RESPONSE", 1e9)
	for range 7 {
		s.SampleOnce(ctx)
		clock.Advance(10 * time.Second)
		f.add("sensord", recordsTotal, "type=UDP_QUERY_RESPONSE", 500)
	}
	// Restart: the counter starts again from 0 and has counted 200 by the next sample.
	f.started["sensord"] = 2000
	f.set("sensord", recordsTotal, "type=UDP_QUERY_RESPONSE", 200)
	s.SampleOnce(ctx)
	r, _ := s.rate("sensord", recordsTotal, nil)
	if r.Per1m == nil || *r.Per1m < 0 || *r.Per1m > 50 {
		t.Fatalf("after a restart: 1m rate %s, want between 0 and 50 (6×500+200 over 60 s)", show(r.Per1m))
	}
	// A second restart whose counter is past the old value at once: only process_start_time
	// tells; the increase is the new value, not the difference.
	clock.Advance(10 * time.Second)
	f.started["sensord"] = 3000
	f.set("sensord", recordsTotal, "type=UDP_QUERY_RESPONSE", 300)
	s.SampleOnce(ctx)
	ds := s.daemons["sensord"]
	sr := ds.series[seriesKey(recordsTotal, map[string]string{"type": "UDP_QUERY_RESPONSE"})]
	prev := (ds.head - 1 + len(ds.times)) % len(ds.times)
	if inc := sr.cum[ds.head] - sr.cum[prev]; inc != 300 {
		t.Errorf("increase across a restart to 300 from 200: %v, want 300", inc)
	}
	// The history never goes negative.
	for _, v := range s.captured.points(clock.Now()) {
		if v < 0 {
			t.Fatalf("negative rate %v in the history", v)
		}
	}
}

// TestSamplerHistory: 25 hours at a known rate fill the 24-hour series with one point a minute;
// the hour when uplinkd did not answer is a gap, not a zero; the ring forgets what is older than
// 24 hours.
func TestSamplerHistory(t *testing.T) {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	clock := &fakeClock{t: start}
	f := newFakeCounters()
	s := newTestSampler(clock, f)
	s.Every = time.Minute // 25 hours of 10-second samples would make a slow test
	ctx := context.Background()
	f.set("sensord", recordsTotal, "type=UDP_QUERY_RESPONSE", 0)
	f.set("uplinkd", sentTotal, "destination=sie", 0)
	f.set("uplinkd", sentTotal, "destination=<b>soc</b>", 0)
	for m := 0; m < 25*60; m++ {
		rate := 10.0
		if m < 60 {
			rate = 1000 // the first hour, to be forgotten
		}
		f.down["uplinkd"] = m >= 20*60 && m < 21*60
		s.SampleOnce(ctx)
		clock.Advance(time.Minute)
		f.add("sensord", recordsTotal, "type=UDP_QUERY_RESPONSE", rate*60)
		f.add("uplinkd", sentTotal, "destination=sie", 8*60)
	}
	now := clock.Now().Add(-time.Second)
	pts := s.captured.points(now)
	if len(pts) != 1440 {
		t.Fatalf("%d points, want 1440", len(pts))
	}
	for i, v := range pts[1:] {
		if math.IsNaN(v) || math.Abs(v-10) > 1e-3 {
			t.Fatalf("captured point %d: %v, want 10/s (the first hour's 1000/s is older than 24 h)", i+1, v)
		}
	}
	sie := s.delivered["sie"].points(now)
	gaps := 0
	for _, v := range sie {
		if math.IsNaN(v) {
			gaps++
		} else if v < 7.99 {
			// The minute after the gap books the gap's whole increase over its whole duration.
			t.Errorf("delivered %v, want ≥ 8/s", v)
		}
	}
	if gaps < 59 || gaps > 62 {
		t.Errorf("%d minutes without data for sie, want the hour uplinkd was down (60)", gaps)
	}
	c := s.Counters(now)
	if len(c.History) != 3 || c.History[0].Name != "captured" || c.History[0].Points < 1439 {
		t.Errorf("history %+v", c.History)
	}
	svg := string(c.Chart)
	if !strings.HasPrefix(svg, "<svg") || strings.Contains(svg, "<b>") || !strings.Contains(svg, "&lt;b&gt;soc&lt;/b&gt;") {
		t.Errorf("chart does not escape a destination's name:\n%s", svg)
	}
	for _, bad := range []string{"style=", "<script", "href", "http:", "https:", "NaN", "Inf"} {
		if strings.Contains(svg, bad) {
			t.Errorf("chart contains %q", bad)
		}
	}
	// Sensord's path and uplinkd's two lines: each a path of its own.
	if n := strings.Count(svg, "<path "); n != 3 {
		t.Errorf("%d lines drawn, want 3", n)
	}
	if strings.Count(strings.Split(strings.Split(svg, `stroke="#2a8a2a"`)[0], "<path ")[2], "M") < 2 {
		t.Errorf("the gap of sie does not lift the pen")
	}
}

// TestSamplerBounded: a daemon exporting more counters than MaxSeries costs MaxSeries series,
// and the page says how many it did not keep; destinations beyond the bound get no history.
func TestSamplerBounded(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	f := newFakeCounters()
	s := newTestSampler(clock, f)
	s.MaxSeries = 50
	for i := range 80 {
		f.set("sensord", "dnssensor_sensord_dropped_total", "stage=decode,reason=r"+string(rune('A'+i/26))+string(rune('a'+i%26)), float64(i))
	}
	for i := range 12 {
		f.set("uplinkd", sentTotal, "destination=d"+string(rune('a'+i)), 0)
	}
	for range 3 {
		s.SampleOnce(context.Background())
		clock.Advance(10 * time.Second)
		for i := range 12 {
			f.add("uplinkd", sentTotal, "destination=d"+string(rune('a'+i)), 10)
		}
	}
	if n := len(s.daemons["sensord"].series); n != 50 {
		t.Errorf("%d series kept, want 50", n)
	}
	if len(s.delivered) != maxDestinations {
		t.Errorf("%d destinations with history, want %d", len(s.delivered), maxDestinations)
	}
	c := s.Counters(clock.Now())
	if c.Daemons[0].Overflow == 0 {
		t.Errorf("overflow not reported: %+v", c.Daemons[0])
	}
	if c.MemoryBoundBytes <= 0 || c.MemoryBoundBytes > 2<<20 {
		t.Errorf("memory bound %d", c.MemoryBoundBytes)
	}
}

// TestPageWithoutData: every section enabled and nothing to show (no daemon, no file, no sample,
// no clock) still renders, saying so.
func TestPageWithoutData(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	srv := &Server{Daemons: []Daemon{{Name: "sensord", Socket: dir + "/none.sock"}}, Known: knownDaemons,
		Password: []byte(testPassword), Timeout: time.Second, Limiter: NewLimiter(clock.Now), Now: clock.Now,
		Sampler: &Sampler{Daemons: []Daemon{{Name: "sensord", Socket: dir + "/none.sock"},
			{Name: "netconfd", Socket: dir + "/nc.sock", Optional: true}}, Now: clock.Now},
		Ident: &IdentitySource{MachineIDFiles: []string{dir + "/machine-id"}, SBOMFile: dir + "/sbom.json",
			Cmdline: dir + "/cmdline", UpdateFile: dir + "/state.json", Uplinkd: dir + "/uplinkd.sock"},
		LogLines: 50,
		Clock:    func() (ClockState, error) { return ClockState{}, errors.New("no adjtimex here") },
		Logf:     t.Logf}
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	code, body := get(t, ts.URL+"/", testPassword, "text/html")
	if code != 200 {
		t.Fatalf("GET /: %d\n%s", code, body)
	}
	for _, want := range []string{"no samples yet", "No tap port counted yet", "Device fingerprint", "unknown", "no update yet", "Nothing dropped"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if code, body := get(t, ts.URL+"/", testPassword, "application/json"); code != 200 || !strings.Contains(body, `"no update yet"`) {
		t.Errorf("JSON: %d\n%s", code, body)
	}
	// Sampled once, still nothing: the page is the same, and says why sensord has no numbers;
	// an optional daemon that is not there is not mentioned.
	srv.Sampler.SampleOnce(context.Background())
	code, body = get(t, ts.URL+"/", testPassword, "text/html")
	if code != 200 || !strings.Contains(body, "none.sock") || strings.Contains(body, "netconfd") {
		t.Errorf("after a failed sample: %d\n%s", code, body)
	}
}

// BenchmarkPageFullHistory renders the whole HTML page with a full day of history for sensord's
// records and two destinations, and a hundred counters with rates.
func BenchmarkPageFullHistory(b *testing.B) {
	clock := &fakeClock{t: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}
	f := newFakeCounters()
	s := newTestSampler(clock, f)
	s.Every = time.Minute
	for i := range 100 {
		f.set("sensord", "dnssensor_sensord_dropped_total", "stage=decode,reason=r"+string(rune('A'+i/26))+string(rune('a'+i%26)), 1)
	}
	for _, p := range []string{"eth1", "eth2"} {
		f.set("sensord", portFrames, "port="+p, 0)
	}
	for m := 0; m < 24*60+1; m++ {
		s.SampleOnce(context.Background())
		clock.Advance(time.Minute)
		f.add("sensord", recordsTotal, "type=UDP_QUERY_RESPONSE", float64(600+m%97))
		f.add("uplinkd", sentTotal, "destination=sie", float64(590+m%89))
		f.add("uplinkd", sentTotal, "destination=soc", float64(300+m%13))
		f.add("sensord", portFrames, "port=eth1", 1000)
	}
	srv := &Server{Known: knownDaemons, Password: []byte(testPassword), Now: clock.Now, Sampler: s, Logf: b.Logf}
	h := srv.Handler()
	req := httptest.NewRequest("GET", "/", nil)
	req.SetBasicAuth("x", testPassword)
	b.ReportAllocs()
	var size int
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatalf("GET /: %d", rec.Code)
		}
		size = rec.Body.Len()
	}
	b.ReportMetric(float64(size), "page-bytes")
}

// TestSamplerMemory: filled to its bounds (MaxSeries counters in each of two daemons, a full
// ring of samples, nine destinations' day of history), the sampler holds no more than
// MemoryBound says.
func TestSamplerMemory(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}
	f := newFakeCounters()
	s := newTestSampler(clock, f)
	for i := range defaultSeries + 50 {
		f.set("sensord", "dnssensor_sensord_dropped_total", fmt.Sprintf("stage=decode,reason=r%d", i), 1)
		f.set("uplinkd", "dnssensor_uplinkd_lost_records_total", fmt.Sprintf("reason=r%d", i), 1)
	}
	for i := range maxDestinations + 2 {
		f.set("uplinkd", sentTotal, fmt.Sprintf("destination=d%d", i), 0)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	// 24 hours and 15 minutes of samples every 10 s would take long; the ring is full after 15
	// minutes and the history slots are allocated up front, so that is enough to reach the bound.
	for range s.ringLen() + 5 {
		s.SampleOnce(context.Background())
		clock.Advance(10 * time.Second)
		f.add("sensord", recordsTotal, "type=UDP_QUERY_RESPONSE", 10)
		for i := range maxDestinations + 2 {
			f.add("uplinkd", sentTotal, fmt.Sprintf("destination=d%d", i), 10)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	held := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("held %d octets, bound %d", held, s.MemoryBound())
	if held > int64(s.MemoryBound()) {
		t.Errorf("the sampler holds %d octets, more than its stated bound %d", held, s.MemoryBound())
	}
	runtime.KeepAlive(s)
}

package status

import (
	"context"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
)

// The sampler reads every daemon's /metrics.json every Every and keeps what the page needs to show
// rates and a day of history, in memory bounded by its fixed sizes:
//
//   - per daemon, at most MaxSeries counters (the dnssensor_* counter samples, one per label set),
//     each with one float64 per sample of the last 15 minutes: with Every = 10 s, 92 samples, 736 B,
//     and about 120 B for its key and labels, so at most 512 × 0.85 KB ≈ 440 KB per daemon
//     (MemoryBound states 640 KB, with slack; TestSamplerMemory measures it); a counter beyond
//     MaxSeries is counted on the page, not kept;
//   - the 24-hour history: one slot per minute (1440) for records captured (sensord) and records
//     delivered per uplink destination (at most maxDestinations), 12 B a slot: 17 KB a series,
//     at most 9 series, 156 KB.
//
// The counters count since their daemon started. A counter that went down, or any counter of a
// daemon whose process_start_time_seconds changed, was reset by a restart: its increase since the
// previous sample is its new value (what it counted since the restart), never a negative or a
// wrapped difference.

// Window lengths of the rates.
const (
	rateShort = time.Minute
	rateLong  = 15 * time.Minute
	// historySlots is one slot a minute for 24 hours.
	historySlots    = 24 * 60
	maxDestinations = 8
	defaultEvery    = 10 * time.Second
	defaultSeries   = 512
)

// Sampler samples the daemons' counters in the background (Run) and answers the page (Counters).
type Sampler struct {
	Daemons []Daemon
	// Every is the sampling interval (default 10 s, at least 1 s).
	Every time.Duration
	// Timeout bounds one daemon's answer (default 2 s).
	Timeout time.Duration
	// MaxSeries bounds the counters kept per daemon (default 512).
	MaxSeries int
	Now       func() time.Time
	// Fetch reads a daemon's metrics; nil: health.GetMetrics on its socket.
	Fetch func(ctx context.Context, d Daemon) (*health.MetricsDoc, error)

	once      sync.Once
	mu        sync.Mutex
	daemons   map[string]*daemonSeries
	captured  *history
	delivered map[string]*history
}

type daemonSeries struct {
	// times is a ring of the sample times; head is the latest, n how many are held.
	times   []time.Time
	head, n int
	series  map[string]*series
	// started is the daemon's process_start_time_seconds at the last sample (0: unknown).
	started   float64
	lastError string
	lastTry   time.Time
	// overflow counts counters not kept because MaxSeries was reached.
	overflow int
}

type series struct {
	name   string
	labels []string // name, value, name, value...: a map per series would cost more than its ring
	raw    float64  // the counter's value at its last sample
	total  float64  // the sum of its increases since statusd first saw it
	// cum holds total at each sample of the daemon's ring (same indices as times).
	cum []float64
}

// history is one series of the 24-hour chart: per minute slot, the increase seen during that
// minute and the seconds of sampling it covers (a gap has none).
type history struct {
	stamp   [historySlots]int32 // the slot's minute (Unix minutes); another means the slot is stale
	inc     [historySlots]float32
	covered [historySlots]float32
}

func (s *Sampler) init() {
	s.once.Do(func() {
		if s.Every <= 0 {
			s.Every = defaultEvery
		}
		if s.Every < time.Second {
			s.Every = time.Second
		}
		if s.Timeout <= 0 {
			s.Timeout = 2 * time.Second
		}
		if s.MaxSeries <= 0 {
			s.MaxSeries = defaultSeries
		}
		if s.Now == nil {
			s.Now = time.Now
		}
		if s.Fetch == nil {
			s.Fetch = func(ctx context.Context, d Daemon) (*health.MetricsDoc, error) {
				return health.GetMetrics(ctx, d.Socket)
			}
		}
		s.daemons = map[string]*daemonSeries{}
		s.captured = &history{}
		s.delivered = map[string]*history{}
	})
}

// ringLen is how many samples cover the long window and one more (the rate needs both ends).
func (s *Sampler) ringLen() int {
	return int(rateLong/s.Every) + 2
}

// MemoryBound is the most the sampler's series can hold, in octets (the bound stated above, for
// the configured Every and MaxSeries).
func (s *Sampler) MemoryBound() int {
	s.init()
	perSeries := s.ringLen()*8 + 512 // the ring, the struct, its map entry, key and labels (measured: TestSamplerMemory)
	hist := historySlots * 12
	return len(s.Daemons)*s.MaxSeries*perSeries + (1+maxDestinations)*hist
}

// Run samples every Every until ctx ends.
func (s *Sampler) Run(ctx context.Context) {
	s.init()
	t := time.NewTicker(s.Every)
	defer t.Stop()
	for {
		s.SampleOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// SampleOnce asks every daemon once, concurrently, and records what they answered.
func (s *Sampler) SampleOnce(ctx context.Context) {
	s.init()
	docs := make([]*health.MetricsDoc, len(s.Daemons))
	errs := make([]error, len(s.Daemons))
	var wg sync.WaitGroup
	for i, d := range s.Daemons {
		wg.Go(func() {
			c, cancel := context.WithTimeout(ctx, s.Timeout)
			defer cancel()
			docs[i], errs[i] = s.Fetch(c, d)
		})
	}
	wg.Wait()
	now := s.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, d := range s.Daemons {
		ds := s.daemons[d.Name]
		if ds == nil {
			ds = &daemonSeries{times: make([]time.Time, s.ringLen()), series: map[string]*series{}}
			s.daemons[d.Name] = ds
		}
		ds.lastTry = now
		if errs[i] != nil {
			// A gap: nothing is recorded, the rates span it when the daemon answers again.
			ds.lastError = errs[i].Error()
			continue
		}
		ds.lastError = ""
		s.record(d.Name, ds, docs[i], now)
	}
}

// record adds one sample of a daemon.
func (s *Sampler) record(daemon string, ds *daemonSeries, doc *health.MetricsDoc, now time.Time) {
	first := ds.n == 0
	var prev time.Time
	if !first {
		prev = ds.times[ds.head]
		if !now.After(prev) {
			return // the clock stood still or went back: no interval to rate over
		}
	}
	restarted := false
	if st, ok := doc.Value("process_start_time_seconds", nil); ok {
		restarted = ds.started != 0 && st != ds.started
		ds.started = st
	}
	L := len(ds.times)
	ds.head = (ds.head + 1) % L
	ds.times[ds.head] = now
	if ds.n < L {
		ds.n++
	}
	for _, sr := range ds.series {
		sr.cum[ds.head] = sr.total // carried: a counter absent from this sample did not move
	}
	incs := map[string]float64{} // per history series, this sample's increase
	for name, f := range doc.Metrics {
		if f.Type != "counter" || !strings.HasPrefix(name, "dnssensor_") {
			continue
		}
		for _, smp := range f.Samples {
			if smp.Value == nil {
				continue
			}
			v := *smp.Value
			key := seriesKey(name, smp.Labels)
			sr := ds.series[key]
			if sr == nil {
				if len(ds.series) >= s.MaxSeries {
					ds.overflow++
					continue
				}
				sr = &series{name: name, labels: labelPairs(smp.Labels), cum: make([]float64, L)}
				ds.series[key] = sr
				if first {
					// statusd's first look: the baseline, no increase known yet.
					sr.raw = v
					continue
				}
				// A counter appearing in a daemon already sampled started from zero since then.
			}
			inc := v - sr.raw
			if restarted || v < sr.raw {
				inc = v
			}
			sr.raw = v
			sr.total += inc
			sr.cum[ds.head] = sr.total
			switch {
			case daemon == "sensord" && name == "dnssensor_sensord_records_total":
				incs[""] += inc
			case daemon == "uplinkd" && name == "dnssensor_uplinkd_records_sent_total":
				incs[smp.Labels["destination"]] += inc
			}
		}
	}
	if first {
		return
	}
	dt := now.Sub(prev).Seconds()
	for dest, inc := range incs {
		var h *history
		if dest == "" && daemon == "sensord" {
			h = s.captured
		} else {
			h = s.delivered[dest]
			if h == nil {
				if len(s.delivered) >= maxDestinations {
					continue
				}
				h = &history{}
				s.delivered[dest] = h
			}
		}
		h.add(now, inc, dt)
	}
	// A daemon that answered with no increase still covered the time: a flat zero, not a gap.
	if daemon == "sensord" {
		if _, ok := incs[""]; !ok && doc.Metrics["dnssensor_sensord_records_total"] != nil {
			s.captured.add(now, 0, dt)
		}
	}
	if daemon == "uplinkd" {
		for dest, h := range s.delivered {
			if _, ok := incs[dest]; !ok {
				h.add(now, 0, dt)
			}
		}
	}
}

func labelPairs(labels map[string]string) []string {
	out := make([]string, 0, 2*len(labels))
	for k, v := range labels {
		out = append(out, k, v)
	}
	return out
}

func label(pairs []string, key string) string {
	for i := 0; i+1 < len(pairs); i += 2 {
		if pairs[i] == key {
			return pairs[i+1]
		}
	}
	return ""
}

func seriesKey(name string, labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(name)
	for _, k := range keys {
		b.WriteByte(0)
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(labels[k])
	}
	return b.String()
}

// add books an increase observed at t over the dt seconds before it into t's minute. A long gap
// books its whole increase and its whole duration there, so the minute shows the gap's average
// rate, not a spike.
func (h *history) add(t time.Time, inc, dt float64) {
	m := int32(t.Unix() / 60)
	i := int(uint32(m) % historySlots)
	if h.stamp[i] != m {
		h.stamp[i], h.inc[i], h.covered[i] = m, 0, 0
	}
	h.inc[i] += float32(inc)
	h.covered[i] += float32(dt)
}

// points returns the per-minute rates of the 24 hours up to now, oldest first; NaN where no
// sample covered the minute.
func (h *history) points(now time.Time) []float64 {
	out := make([]float64, historySlots)
	end := int32(now.Unix() / 60)
	for k := range out {
		m := end - int32(historySlots-1-k)
		i := int(uint32(m) % historySlots)
		if h == nil || h.stamp[i] != m || h.covered[i] <= 0 {
			out[k] = math.NaN()
			continue
		}
		out[k] = float64(h.inc[i]) / float64(h.covered[i])
	}
	return out
}

// Rate is a counter (or a sum of counters) with its rates per second over the last minute and
// the last 15 minutes; a rate is absent until two samples span enough of its window.
type Rate struct {
	// Absent: the daemon does not export this counter (or was not sampled yet).
	Absent bool     `json:"absent,omitempty"`
	Total  float64  `json:"total"`
	Per1m  *float64 `json:"per_second_1m,omitempty"`
	Per15m *float64 `json:"per_second_15m,omitempty"`
}

// rate sums the series of daemon's counter name whose labels include match.
func (s *Sampler) rate(daemon, name string, match map[string]string) (Rate, bool) {
	ds := s.daemons[daemon]
	if ds == nil || ds.n == 0 {
		return Rate{}, false
	}
	var r Rate
	found := false
	var sel []*series
	for _, sr := range ds.series {
		if sr.name != name || !labelsMatch(sr.labels, match) {
			continue
		}
		found = true
		r.Total += sr.raw
		sel = append(sel, sr)
	}
	if !found {
		return r, false
	}
	for _, w := range []struct {
		d   time.Duration
		out **float64
	}{{rateShort, &r.Per1m}, {rateLong, &r.Per15m}} {
		old, ok := ds.windowStart(w.d, s.Every)
		if !ok {
			continue
		}
		dt := ds.times[ds.head].Sub(ds.times[old]).Seconds()
		var inc float64
		for _, sr := range sel {
			inc += sr.cum[ds.head] - sr.cum[old]
		}
		v := inc / dt
		*w.out = &v
	}
	return r, true
}

// windowStart is the index of the oldest held sample no further back than w (and a half interval
// of slack) from the latest; false when the samples span less than half of w, too little to call
// it that window's rate.
func (ds *daemonSeries) windowStart(w, every time.Duration) (int, bool) {
	L := len(ds.times)
	latest := ds.times[ds.head]
	best := -1
	for k := 1; k < ds.n; k++ {
		i := (ds.head - k + L) % L
		if latest.Sub(ds.times[i]) > w+every/2 {
			break
		}
		best = i
	}
	if best < 0 || latest.Sub(ds.times[best]) < w/2 {
		return 0, false
	}
	return best, true
}

func labelsMatch(l []string, match map[string]string) bool {
	for k, v := range match {
		if label(l, k) != v {
			return false
		}
	}
	return true
}

// labelValues lists the values of label key among daemon's series of name, sorted.
func (s *Sampler) labelValues(daemon, name string, keys ...string) [][]string {
	ds := s.daemons[daemon]
	if ds == nil {
		return nil
	}
	seen := map[string][]string{}
	for _, sr := range ds.series {
		if sr.name != name {
			continue
		}
		vals := make([]string, len(keys))
		for i, k := range keys {
			vals[i] = label(sr.labels, k)
		}
		seen[strings.Join(vals, "\x00")] = vals
	}
	out := make([][]string, 0, len(seen))
	for _, v := range seen {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool {
		return strings.Join(out[i], "\x00") < strings.Join(out[j], "\x00")
	})
	return out
}

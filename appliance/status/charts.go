package status

import (
	"fmt"
	"html"
	"html/template"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Counters is the page's view of the sampled counters: rates per port and per stage, drop
// reasons, kernel drops, the loss ledger, delivery, and the 24-hour chart.
type Counters struct {
	Every            string           `json:"sample_every"`
	MemoryBoundBytes int              `json:"memory_bound_bytes"`
	Daemons          []SampledDaemon  `json:"daemons"`
	Ports            []PortRates      `json:"ports"`
	Stages           []NamedRate      `json:"stages"`
	Drops            []NamedRate      `json:"drops"`
	Loss             []LossRates      `json:"loss_ledger"`
	Delivery         []NamedRate      `json:"delivery"`
	History          []HistorySummary `json:"history"`
	// Chart is the 24-hour chart as inline SVG (HTML only).
	Chart template.HTML `json:"-"`
}

// SampledDaemon says how fresh a daemon's numbers are.
type SampledDaemon struct {
	Name       string    `json:"name"`
	LastSample time.Time `json:"last_sample,omitzero"`
	Error      string    `json:"error,omitempty"`
	// Overflow counts counters not kept (the MaxSeries bound).
	Overflow int `json:"counters_not_kept,omitempty"`
}

// PortRates is one tap port's counters.
type PortRates struct {
	Port        string `json:"port"`
	Frames      Rate   `json:"frames"`
	Bytes       Rate   `json:"bytes"`
	DNS         Rate   `json:"dns_messages"`
	KernelDrops Rate   `json:"kernel_drops"`
}

// NamedRate is one row: a stage's event, a drop reason, a destination.
type NamedRate struct {
	Name string `json:"name"`
	Rate
}

// LossRates is one reason of the loss ledger (uplinkd's durable count of what the spool lost).
type LossRates struct {
	Reason   string `json:"reason"`
	Records  Rate   `json:"records"`
	Segments Rate   `json:"segments"`
	Bytes    Rate   `json:"bytes"`
}

// HistorySummary names a series of the chart and its peak.
type HistorySummary struct {
	Name   string  `json:"name"`
	Points int     `json:"minutes_with_data"`
	Peak   float64 `json:"peak_per_second"`
}

// Counters composes the view at now.
func (s *Sampler) Counters(now time.Time) *Counters {
	s.init()
	s.mu.Lock()
	defer s.mu.Unlock()
	c := &Counters{Every: s.Every.String(), MemoryBoundBytes: s.MemoryBound(),
		Ports: []PortRates{}, Stages: []NamedRate{}, Drops: []NamedRate{}, Loss: []LossRates{}, Delivery: []NamedRate{}}
	for _, d := range s.Daemons {
		sd := SampledDaemon{Name: d.Name}
		if ds := s.daemons[d.Name]; ds != nil {
			sd.Error, sd.Overflow = ds.lastError, ds.overflow
			if ds.n > 0 {
				sd.LastSample = ds.times[ds.head]
			}
		} else {
			sd.Error = "not sampled yet"
		}
		if d.Optional && sd.LastSample.IsZero() {
			continue // an optional daemon that never answered is not there, not failing
		}
		c.Daemons = append(c.Daemons, sd)
	}
	const sp = "dnssensor_sensord_"
	rate := func(daemon, name string, match map[string]string) Rate {
		r, ok := s.rate(daemon, name, match)
		r.Absent = !ok
		return r
	}
	ports := map[string]bool{}
	for _, fam := range []string{"port_frames_total", "port_kernel_drops_total"} {
		for _, v := range s.labelValues("sensord", sp+fam, "port") {
			ports[v[0]] = true
		}
	}
	for _, p := range sortedKeys(ports) {
		m := map[string]string{"port": p}
		c.Ports = append(c.Ports, PortRates{Port: p, Frames: rate("sensord", sp+"port_frames_total", m),
			Bytes: rate("sensord", sp+"port_bytes_total", m), DNS: rate("sensord", sp+"port_dns_messages_total", m),
			KernelDrops: rate("sensord", sp+"port_kernel_drops_total", m)})
	}
	for _, st := range []struct{ name, fam string }{{"frames in", "frames_total"}, {"IP datagrams", "ip_datagrams_total"}, {"records out", "records_total"}} {
		if r, ok := s.rate("sensord", sp+st.fam, nil); ok {
			c.Stages = append(c.Stages, NamedRate{st.name, r})
		}
	}
	for _, v := range s.labelValues("sensord", sp+"stage_events_total", "stage", "event") {
		c.Stages = append(c.Stages, NamedRate{v[0] + ": " + v[1], rate("sensord", sp+"stage_events_total", map[string]string{"stage": v[0], "event": v[1]})})
	}
	for _, v := range s.labelValues("sensord", sp+"dropped_total", "stage") {
		c.Stages = append(c.Stages, NamedRate{v[0] + ": dropped", rate("sensord", sp+"dropped_total", map[string]string{"stage": v[0]})})
	}
	// Drop reasons that ever happened; the rest would be a wall of zeros.
	drop := func(label, name string, match map[string]string) {
		r := rate("sensord", name, match)
		if r.Total > 0 || r.Per15m != nil && *r.Per15m > 0 {
			c.Drops = append(c.Drops, NamedRate{label, r})
		}
	}
	for _, v := range s.labelValues("sensord", sp+"dropped_total", "stage", "reason") {
		drop(v[0]+": "+v[1], sp+"dropped_total", map[string]string{"stage": v[0], "reason": v[1]})
	}
	for _, v := range s.labelValues("sensord", sp+"dnstap_dropped_total", "reason") {
		drop("dnstap: "+v[0], sp+"dnstap_dropped_total", map[string]string{"reason": v[0]})
	}
	for _, v := range s.labelValues("sensord", sp+"spool_lost_records_total", "reason") {
		drop("spool: "+v[0], sp+"spool_lost_records_total", map[string]string{"reason": v[0]})
	}
	const up = "dnssensor_uplinkd_"
	for _, v := range s.labelValues("uplinkd", up+"lost_records_total", "reason") {
		m := map[string]string{"reason": v[0]}
		c.Loss = append(c.Loss, LossRates{Reason: v[0], Records: rate("uplinkd", up+"lost_records_total", m),
			Segments: rate("uplinkd", up+"lost_segments_total", m), Bytes: rate("uplinkd", up+"lost_bytes_total", m)})
	}
	for _, v := range s.labelValues("uplinkd", up+"records_sent_total", "destination") {
		c.Delivery = append(c.Delivery, NamedRate{v[0], rate("uplinkd", up+"records_sent_total", map[string]string{"destination": v[0]})})
	}
	lines := []chartLine{{name: "captured", points: s.captured.points(now)}}
	for _, d := range sortedKeys(s.delivered) {
		lines = append(lines, chartLine{name: "delivered to " + d, points: s.delivered[d].points(now)})
	}
	for _, l := range lines {
		h := HistorySummary{Name: l.name}
		for _, v := range l.points {
			if !math.IsNaN(v) {
				h.Points++
				h.Peak = math.Max(h.Peak, v)
			}
		}
		c.History = append(c.History, h)
	}
	c.Chart = renderChart(lines, now)
	return c
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

type chartLine struct {
	name   string
	points []float64 // per minute, oldest first; NaN: no data
}

// The chart's geometry, in SVG user units: the viewBox scales to the page's width, so on a
// phone 360 units are about 360 CSS pixels and the 12-unit text stays readable.
const (
	chartW, chartH = 360.0, 170.0
	plotL, plotR   = 40.0, 352.0
	plotT, plotB   = 10.0, 140.0
	chartBucket    = 5 // minutes per plotted point: 288 points, finer than the phone's pixels
)

var chartColours = []string{"#1f5fbf", "#2a8a2a", "#c2581f", "#8a2a8a", "#1f8a8a", "#8a8a1f", "#c21f5f", "#555555", "#000000"}

// renderChart draws the 24-hour lines as inline SVG: no script, no external asset, colours as
// presentation attributes (the page's CSP forbids inline style). Every text is escaped; the only
// other content is numbers.
func renderChart(lines []chartLine, now time.Time) template.HTML {
	var b strings.Builder
	b.Grow(16 << 10)
	maxV := 0.0
	binned := make([][]float64, len(lines))
	for i, l := range lines {
		binned[i] = bin(l.points, chartBucket)
		for _, v := range binned[i] {
			if !math.IsNaN(v) {
				maxV = math.Max(maxV, v)
			}
		}
	}
	top := niceCeil(maxV)
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %g %g" width="100%%" role="img" aria-label="records per second, last 24 hours" font-family="sans-serif" font-size="12">`, chartW, chartH+16*float64((len(lines)+1)/2))
	// Axes and grid: 0, half and top; every 6 hours.
	for _, f := range []float64{0, 0.5, 1} {
		y := plotB - f*(plotB-plotT)
		fmt.Fprintf(&b, `<line x1="%g" y1="%.1f" x2="%g" y2="%.1f" stroke="#ccc" stroke-width="1"/>`, plotL, y, plotR, y)
		fmt.Fprintf(&b, `<text x="%g" y="%.1f" text-anchor="end" fill="#444">%s</text>`, plotL-3, y+4, shortNum(f*top))
	}
	for h := 0; h <= 24; h += 6 {
		x := plotL + float64(h)/24*(plotR-plotL)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%g" x2="%.1f" y2="%g" stroke="#ddd" stroke-width="1"/>`, x, plotT, x, plotB)
		label := "now"
		if h < 24 {
			label = "-" + strconv.Itoa(24-h) + "h"
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%g" text-anchor="middle" fill="#444">%s</text>`, x, plotB+14, label)
	}
	if maxV == 0 {
		noData := "no records in the last 24 hours"
		if allNaN(binned) {
			noData = "no samples yet"
		}
		fmt.Fprintf(&b, `<text x="%g" y="%g" text-anchor="middle" fill="#666">%s</text>`, (plotL+plotR)/2, (plotT+plotB)/2, noData)
	}
	for i, pts := range binned {
		colour := chartColours[i%len(chartColours)]
		var d strings.Builder
		pen := false
		for k, v := range pts {
			if math.IsNaN(v) {
				pen = false // a gap: the daemon did not answer, or statusd was not running
				continue
			}
			x := plotL + (float64(k)+0.5)/float64(len(pts))*(plotR-plotL)
			y := plotB
			if top > 0 {
				y = plotB - v/top*(plotB-plotT)
			}
			if pen {
				fmt.Fprintf(&d, "L%.1f %.1f", x, y)
			} else {
				fmt.Fprintf(&d, "M%.1f %.1f", x, y)
				pen = true
			}
		}
		if d.Len() > 0 {
			fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="%s" stroke-width="1.5"/>`, d.String(), colour)
		}
		// The legend, two per row under the plot.
		lx, ly := plotL+float64(i%2)*160, chartH+float64(i/2)*16
		fmt.Fprintf(&b, `<rect x="%g" y="%g" width="10" height="10" fill="%s"/><text x="%g" y="%g" fill="#222">%s</text>`,
			lx, ly-9, colour, lx+14, ly, html.EscapeString(truncate(lines[i].name, 24)))
	}
	fmt.Fprintf(&b, `<text x="%g" y="%g" fill="#444">records/s</text>`, plotL+4, plotT+12)
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// bin averages the per-minute rates in buckets of n minutes; a bucket without data is NaN.
func bin(pts []float64, n int) []float64 {
	out := make([]float64, 0, len(pts)/n+1)
	for i := 0; i < len(pts); i += n {
		sum, k := 0.0, 0
		for _, v := range pts[i:min(i+n, len(pts))] {
			if !math.IsNaN(v) {
				sum += v
				k++
			}
		}
		if k == 0 {
			out = append(out, math.NaN())
		} else {
			out = append(out, sum/float64(k))
		}
	}
	return out
}

func allNaN(ls [][]float64) bool {
	for _, l := range ls {
		for _, v := range l {
			if !math.IsNaN(v) {
				return false
			}
		}
	}
	return true
}

// niceCeil rounds up to 1, 2 or 5 times a power of ten, so the axis reads easily.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func shortNum(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'g', 3, 64) + "M"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'g', 3, 64) + "k"
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// perSecond formats a rate for the page: "–" until it is known.
func perSecond(r *float64) string {
	if r == nil {
		return "–"
	}
	v := *r
	switch {
	case v < 0:
		return strconv.FormatFloat(v, 'f', 2, 64) // never expected: shown as it is, not hidden
	case v == 0:
		return "0"
	case v < 0.01:
		return "<0.01"
	case v < 10:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return shortNum(math.Round(v))
}

// viewFuncs are the template functions of the counters, identity and log blocks.
var viewFuncs = template.FuncMap{
	"perSecond": perSecond,
	"count":     func(v float64) string { return shortNum(v) },
}

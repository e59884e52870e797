package uplinkd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/sie-europe/dnssensor/uplink/spool"
)

// Metrics is the whole state, for /metrics.json, /metrics and the status page.
type Metrics struct {
	Time         time.Time           `json:"time"`
	Uptime       float64             `json:"uptime_seconds"`
	Destinations []DestStatus        `json:"destinations"`
	Spool        SpoolStatus         `json:"spool"`
	InFlight     uint64              `json:"in_flight_segment,omitempty"`
	Consumer     spool.ConsumerStats `json:"consumer"`
}

// SpoolStatus is the backlog and everything lost.
type SpoolStatus struct {
	Segments    uint64       `json:"segments"`
	Records     uint64       `json:"records"`
	Bytes       uint64       `json:"bytes"`
	RAMBytes    uint64       `json:"ram_bytes"`
	DiskBytes   uint64       `json:"disk_bytes"`
	OldestAge   float64      `json:"oldest_record_age_seconds"` // depth in seconds of data
	Loss        spool.Ledger `json:"loss"`
	DepthError  string       `json:"depth_error,omitempty"`
	LedgerError string       `json:"ledger_error,omitempty"`
}

// Snapshot collects the metrics.
func (s *Supervisor) Snapshot() Metrics {
	now := time.Now()
	m := Metrics{Time: now, Uptime: now.Sub(s.start).Seconds(), InFlight: s.inFlight.Load(), Consumer: s.cons.Stats()}
	for _, d := range s.dests {
		m.Destinations = append(m.Destinations, d.status())
	}
	if d, err := s.cons.Depth(); err != nil {
		m.Spool.DepthError = err.Error()
	} else {
		m.Spool.Segments, m.Spool.Records, m.Spool.Bytes = d.Segments, d.Records, d.Bytes
		m.Spool.RAMBytes, m.Spool.DiskBytes = d.RAMBytes, d.DiskBytes
		if !d.Oldest.IsZero() {
			m.Spool.OldestAge = now.Sub(d.Oldest).Seconds()
		}
	}
	if l, err := s.cons.Loss(); err != nil {
		m.Spool.LedgerError = err.Error()
	} else {
		m.Spool.Loss = l
	}
	return m
}

// Handler serves /metrics (Prometheus text) and /metrics.json.
func (s *Supervisor) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics.json", func(w http.ResponseWriter, r *http.Request) {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetIndent("", "  ")
		enc.Encode(s.Snapshot())
		w.Header().Set("Content-Type", "application/json")
		w.Write(buf.Bytes())
	})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		w.Write([]byte(Prometheus(s.Snapshot())))
	})
	return mux
}

// Prometheus renders m in the text exposition format.
func Prometheus(m Metrics) string {
	var b strings.Builder
	g := func(name, help string) {
		fmt.Fprintf(&b, "# HELP uplinkd_%s %s\n# TYPE uplinkd_%s gauge\n", name, help, name)
	}
	c := func(name, help string) {
		fmt.Fprintf(&b, "# HELP uplinkd_%s %s\n# TYPE uplinkd_%s counter\n", name, help, name)
	}
	g("up", "1 when the destination's connection is up")
	for _, d := range m.Destinations {
		up := 0
		if d.State == "up" {
			up = 1
		}
		fmt.Fprintf(&b, "uplinkd_up{destination=%q,type=%q} %d\n", d.Name, d.Type, up)
	}
	for _, x := range []struct {
		name, help string
		v          func(DestStatus) uint64
	}{
		{"segments_sent_total", "segments delivered", func(d DestStatus) uint64 { return d.Segments }},
		{"records_sent_total", "records delivered", func(d DestStatus) uint64 { return d.Records }},
		{"bytes_sent_total", "segment body octets delivered", func(d DestStatus) uint64 { return d.Bytes }},
		{"delivery_failures_total", "delivery attempts retried", func(d DestStatus) uint64 { return d.Failures }},
		{"reconnects_total", "sielink reconnections", func(d DestStatus) uint64 { return d.Reconnects }},
		{"possibly_lost_payloads_total", "payloads unconfirmed at a connection drop (resent)", func(d DestStatus) uint64 { return d.PossiblyLost }},
	} {
		c(x.name, x.help)
		for _, d := range m.Destinations {
			fmt.Fprintf(&b, "uplinkd_%s{destination=%q} %d\n", x.name, d.Name, x.v(d))
		}
	}
	g("spool_segments", "segments waiting")
	fmt.Fprintf(&b, "uplinkd_spool_segments %d\n", m.Spool.Segments)
	g("spool_records", "records waiting")
	fmt.Fprintf(&b, "uplinkd_spool_records %d\n", m.Spool.Records)
	g("spool_bytes", "octets waiting, by tier")
	fmt.Fprintf(&b, "uplinkd_spool_bytes{tier=\"ram\"} %d\nuplinkd_spool_bytes{tier=\"disk\"} %d\n", m.Spool.RAMBytes, m.Spool.DiskBytes)
	g("spool_oldest_record_age_seconds", "age of the oldest waiting record")
	fmt.Fprintf(&b, "uplinkd_spool_oldest_record_age_seconds %g\n", m.Spool.OldestAge)
	c("lost_records_total", "records lost in the spool, by reason")
	l := m.Spool.Loss
	for _, r := range []struct {
		reason string
		n      spool.Counter
	}{{"dropped", l.Dropped}, {"quarantined", l.Quarantined}, {"temp_files", l.TempFiles}, {"rejected", l.Rejected}, {"stranded", l.Stranded}} {
		fmt.Fprintf(&b, "uplinkd_lost_records_total{reason=%q} %d\n", r.reason, r.n.Records)
		fmt.Fprintf(&b, "uplinkd_lost_segments_total{reason=%q} %d\n", r.reason, r.n.Segments)
		fmt.Fprintf(&b, "uplinkd_lost_bytes_total{reason=%q} %d\n", r.reason, r.n.Bytes)
	}
	return b.String()
}

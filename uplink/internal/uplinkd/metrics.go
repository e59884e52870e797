package uplinkd

import (
	"bytes"
	"encoding/json"
	"net/http"
	"time"

	"github.com/sie-europe/dnssensor/uplink/spool"
)

// Metrics is the whole state, for /status.json (the status page) and the Prometheus collector.
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

// serveStatus answers /status.json: the whole state as one document, for the status page. The
// counters are served by the health contract (health.go).
func (s *Supervisor) serveStatus(w http.ResponseWriter, r *http.Request) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(s.Snapshot()); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(buf.Bytes())
}

package collector

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// healthWindow is how long a write error or a stall stays news in /health.json.
const healthWindow = 5 * time.Minute

// serveHealth serves the health contract (internal/health) on ln until ctx ends: /health.json,
// /metrics, /metrics.json, and /status.json (Snapshot: the server's and every sensor's counters).
func (m *metrics) serveHealth(ctx context.Context, ln net.Listener, listen string, logf sielink.Logf) error {
	reg := health.NewRegistry()
	reg.MustRegister(&promCollector{snap: m.snapshot})
	srv := &health.Server{Daemon: "collector", Tree: m.healthTree(listen, time.Now), Registry: reg,
		Logf:  func(format string, args ...any) { logTo(logf, format, args...) },
		Extra: map[string]http.Handler{"/status.json": http.HandlerFunc(m.serveStatus)}}
	return srv.Serve(ctx, ln)
}

func logTo(logf sielink.Logf, format string, args ...any) {
	if logf != nil {
		logf(format, args...)
	}
}

func (m *metrics) serveStatus(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(m.snapshot())
}

// healthTree is the collector's chain: it listens for sensors → their data can be stored, and
// each sensor of the keys file holds a session.
func (m *metrics) healthTree(listen string, now func() time.Time) *health.Tree {
	listening := health.NewNode("listening", func(time.Time) health.Result {
		return health.Result{OK: true, Detail: fmt.Sprintf("sielink on %s; %d connections not sessions yet, %d refused as too many",
			listen, m.gate.count(), m.gate.refused.Load())}
	})
	writeErrors := health.Still(func() uint64 {
		var n uint64
		for _, f := range m.store.Stats() {
			n += f.WriteErrors
		}
		return n
	}, healthWindow, "file write, fsync and seal errors",
		"the collector cannot write its NMSG files: check the disk under -dir (space, permissions, errors in the kernel log); the sensors keep their data meanwhile")
	listening.Add(health.NewNode("store", func(t time.Time) health.Result {
		var stalled []string
		for sensor, f := range m.store.Stats() {
			if f.Stalled {
				stalled = append(stalled, sensor)
			}
		}
		if len(stalled) > 0 {
			sort.Strings(stalled)
			return health.Result{OK: false, Detail: "data of " + strings.Join(stalled, ", ") + " cannot be stored (it waits in the sensors' spools)",
				Fix: "free space under -dir or fix its disk: storing resumes by itself"}
		}
		return writeErrors(t)
	}))
	for _, sensor := range m.sensors {
		listening.Add(health.NewNode("sensor "+sensor, func(time.Time) health.Result {
			for _, s := range m.srv.Sensors() {
				if s.Sensor != sensor {
					continue
				}
				detail := fmt.Sprintf("%d sessions open, %d payloads received", s.Sessions, s.Payloads)
				if !s.LastSeen.IsZero() {
					detail += ", the last message at " + s.LastSeen.UTC().Format(time.RFC3339)
				}
				if s.Sessions == 0 {
					return health.Result{OK: false, Detail: detail, Changed: s.LastSeen,
						Fix: "the sensor has no session: check its uplinkd (its /health.json) and the network to it"}
				}
				return health.Result{OK: true, Detail: detail}
			}
			return health.Result{OK: false, Detail: "no session since the collector started",
				Fix: "the sensor has not connected: check its uplinkd (its /health.json), its API key and the network to it"}
		}))
	}
	return health.NewTree("collector", now, listening)
}

// promCollector exposes Snapshot as Prometheus metrics (internal/health's naming rules; the names of
// the hand-written writer before it, prefixed dnssensor_).
type promCollector struct{ snap func() Snapshot }

func cdesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("dnssensor_collector_"+name, help, labels, nil)
}

// serverMetrics are the server-wide families, in the order they are written.
var serverMetrics = []struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(*Snapshot) float64
}{
	{cdesc("sessions_active", "Open sensor sessions."), prometheus.GaugeValue, func(s *Snapshot) float64 { return float64(s.Server.Active) }},
	{cdesc("sessions_accepted_total", "Sessions past the handshake."), prometheus.CounterValue, func(s *Snapshot) float64 { return float64(s.Server.Accepted) }},
	{cdesc("rejected_auth_total", "Sessions refused for a missing, unknown or wrong API key."), prometheus.CounterValue, func(s *Snapshot) float64 { return float64(s.Server.RejectedAuth) }},
	{cdesc("rejected_other_total", "Sessions refused for other reasons."), prometheus.CounterValue, func(s *Snapshot) float64 { return float64(s.Server.RejectedOther) }},
	{cdesc("handshake_failed_total", "Sessions without a valid first message."), prometheus.CounterValue, func(s *Snapshot) float64 { return float64(s.Server.HandshakeFailed) }},
	{cdesc("heartbeat_timeouts_total", "Sessions closed because the sensor went silent."), prometheus.CounterValue, func(s *Snapshot) float64 { return float64(s.Server.HeartbeatTimeouts) }},
	{cdesc("malformed_total", "Messages that did not decode."), prometheus.CounterValue, func(s *Snapshot) float64 { return float64(s.Server.Malformed) }},
	{cdesc("oversize_total", "Messages above the size cap."), prometheus.CounterValue, func(s *Snapshot) float64 { return float64(s.Server.Oversize) }},
	{cdesc("invalid_containers_total", "Payloads that are not one valid NMSG container."), prometheus.CounterValue, func(s *Snapshot) float64 { return float64(s.Server.InvalidContainers) }},
	{cdesc("handler_errors_total", "Payloads that could not be stored or forwarded."), prometheus.CounterValue, func(s *Snapshot) float64 { return float64(s.Server.HandlerErrors) }},
	{cdesc("store_stalls_total", "Attempts to store a payload that failed and were retried (disk full); nothing after it is confirmed meanwhile."), prometheus.CounterValue, func(s *Snapshot) float64 { return float64(s.Server.Stalls) }},
	{cdesc("sessions_refused_total", "Sessions refused by the store (sensor over its disk quota)."), prometheus.CounterValue, func(s *Snapshot) float64 { return float64(s.Server.Refused) }},
	{cdesc("sessions_too_many_total", "Sessions refused above the per-sensor session cap."), prometheus.CounterValue, func(s *Snapshot) float64 { return float64(s.Server.TooManySessions) }},
	{cdesc("bad_heartbeat_total", "Sessions refused for announcing no heartbeat or one above the maximum."), prometheus.CounterValue, func(s *Snapshot) float64 { return float64(s.Server.BadHeartbeat) }},
	{cdesc("unauthenticated_connections", "Connections that are not sessions (yet)."), prometheus.GaugeValue, func(s *Snapshot) float64 { return float64(s.Unauthenticated) }},
	{cdesc("unauthenticated_refused_total", "Connections closed at once because too many were unauthenticated."), prometheus.CounterValue, func(s *Snapshot) float64 { return float64(s.RefusedConns) }},
	{cdesc("sensor_quota_bytes", "Disk quota per sensor (0: none)."), prometheus.GaugeValue, func(s *Snapshot) float64 { return float64(s.Quota) }},
}

// sensorMetrics are the families with one sample per sensor (label sensor).
var sensorMetrics = []struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(*SensorSnapshot) float64
}{
	{cdesc("sensor_sessions", "Open sessions of the sensor.", "sensor"), prometheus.GaugeValue, func(s *SensorSnapshot) float64 { return float64(s.Sessions) }},
	{cdesc("sensor_payloads_total", "NMSG containers received.", "sensor"), prometheus.CounterValue, func(s *SensorSnapshot) float64 { return float64(s.Payloads) }},
	{cdesc("sensor_bytes_total", "Octets of NMSG containers received.", "sensor"), prometheus.CounterValue, func(s *SensorSnapshot) float64 { return float64(s.Bytes) }},
	{cdesc("sensor_records_total", "NMSG payloads (records) received.", "sensor"), prometheus.CounterValue, func(s *SensorSnapshot) float64 { return float64(s.Records) }},
	{cdesc("sensor_invalid_total", "Messages of the sensor dropped as malformed or invalid.", "sensor"), prometheus.CounterValue, func(s *SensorSnapshot) float64 { return float64(s.Invalid) }},
	{cdesc("sensor_last_seen_seconds", "Unix time of the last message.", "sensor"), prometheus.GaugeValue, func(s *SensorSnapshot) float64 { return float64(s.LastSeen.Unix()) }},
	{cdesc("sensor_link_loss_bytes_total", "Octets the sensor reported lost (linkLoss).", "sensor"), prometheus.CounterValue, func(s *SensorSnapshot) float64 { return float64(s.LinkLossBytes) }},
	{cdesc("sensor_link_loss_payloads_total", "Containers the sensor reported lost (linkLoss).", "sensor"), prometheus.CounterValue, func(s *SensorSnapshot) float64 { return float64(s.LinkLossPayloads) }},
	{cdesc("sensor_files_sealed_total", "NMSG files completed.", "sensor"), prometheus.CounterValue, func(s *SensorSnapshot) float64 { return float64(s.Files.FilesSealed) }},
	{cdesc("sensor_file_bytes_total", "Octets written to NMSG files.", "sensor"), prometheus.CounterValue, func(s *SensorSnapshot) float64 { return float64(s.Files.Bytes) }},
	{cdesc("sensor_write_errors_total", "File write, fsync and seal errors.", "sensor"), prometheus.CounterValue, func(s *SensorSnapshot) float64 { return float64(s.Files.WriteErrors) }},
	{cdesc("sensor_store_stalled", "1 while the sensor's data cannot be stored (it waits in the sensor's spool).", "sensor"), prometheus.GaugeValue, func(s *SensorSnapshot) float64 { return b2f(s.Files.Stalled) }},
	{cdesc("sensor_pending_seals", "Files whose seal failed and is retried.", "sensor"), prometheus.GaugeValue, func(s *SensorSnapshot) float64 { return float64(s.Files.PendingSeals) }},
	{cdesc("sensor_disk_bytes", "Octets in the sensor's directory, as measured for the quota.", "sensor"), prometheus.GaugeValue, func(s *SensorSnapshot) float64 { return float64(s.Files.DiskBytes) }},
	{cdesc("sensor_quota_refusals_total", "Sessions and payloads refused because the sensor was over its quota.", "sensor"), prometheus.CounterValue, func(s *SensorSnapshot) float64 { return float64(s.Files.QuotaRefusals) }},
}

func (c *promCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range serverMetrics {
		ch <- m.desc
	}
	for _, m := range sensorMetrics {
		ch <- m.desc
	}
}

func (c *promCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.snap()
	for _, m := range serverMetrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.typ, m.value(&s))
	}
	for i := range s.Sensors {
		for _, m := range sensorMetrics {
			ch <- prometheus.MustNewConstMetric(m.desc, m.typ, m.value(&s.Sensors[i]), s.Sensors[i].Sensor)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

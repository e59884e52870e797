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
	extra := map[string]http.Handler{"/status.json": http.HandlerFunc(m.serveStatus)}
	if m.fleet != nil {
		reg.MustRegister(&fleetCollector{f: m.fleet})
		for path, h := range m.fleet.pages() {
			extra[path] = h
		}
	}
	srv := &health.Server{Daemon: "collector", Tree: m.healthTree(listen, time.Now), Registry: reg,
		Logf:  func(format string, args ...any) { logTo(logf, format, args...) },
		Extra: extra}
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
	if m.js != nil {
		listening.Add(m.jsHealth())
	}
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

// jsMetrics are the JetStream families (only with a stream).
var jsMetrics = []struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(*JetStreamSnapshot, *ArchiverStats) float64
}{
	{cdesc("jetstream_connected", "1 while the collector is connected to NATS."), prometheus.GaugeValue, func(j *JetStreamSnapshot, _ *ArchiverStats) float64 { return b2f(j.Connected) }},
	{cdesc("stream_messages", "Containers in the stream."), prometheus.GaugeValue, func(j *JetStreamSnapshot, _ *ArchiverStats) float64 { return float64(j.Messages) }},
	{cdesc("stream_bytes", "Octets in the stream."), prometheus.GaugeValue, func(j *JetStreamSnapshot, _ *ArchiverStats) float64 { return float64(j.Bytes) }},
	{cdesc("stream_last_seq", "The stream's last sequence."), prometheus.GaugeValue, func(j *JetStreamSnapshot, _ *ArchiverStats) float64 { return float64(j.LastSeq) }},
}

// archiverMetrics are the archiver's families (only where it runs).
var archiverMetrics = []struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(*JetStreamSnapshot, *ArchiverStats) float64
}{
	{cdesc("archiver_stream_seq", "Stream sequence the file archive holds through."), prometheus.GaugeValue, func(_ *JetStreamSnapshot, a *ArchiverStats) float64 { return float64(a.StreamSeq) }},
	{cdesc("archiver_pending", "Containers in the stream the archiver has not been delivered yet."), prometheus.GaugeValue, func(_ *JetStreamSnapshot, a *ArchiverStats) float64 { return float64(a.Pending) }},
	{cdesc("archiver_containers_total", "Containers the archiver wrote."), prometheus.CounterValue, func(_ *JetStreamSnapshot, a *ArchiverStats) float64 { return float64(a.Archived) }},
	{cdesc("archiver_skipped_total", "Redelivered containers the archive already held (not written twice)."), prometheus.CounterValue, func(_ *JetStreamSnapshot, a *ArchiverStats) float64 { return float64(a.Skipped) }},
	{cdesc("archiver_stalls_total", "Archive writes that failed and were retried (disk full)."), prometheus.CounterValue, func(_ *JetStreamSnapshot, a *ArchiverStats) float64 { return float64(a.Stalls) }},
	{cdesc("archiver_running", "1 while the archiver consumes the stream."), prometheus.GaugeValue, func(_ *JetStreamSnapshot, a *ArchiverStats) float64 { return b2f(a.Running) }},
}

var archiveLost = cdesc("archive_lost_total", "Containers the archive will never hold, by reason (quota: the sensor's directory was full; limits: the stream's size or age limit discarded them first; bad_subject: not published by a collector).", "reason")

// consumerMetrics are the families of the stream's other consumers (forward, fan-outs).
var consumerMetrics = []struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(*ConsumerStats) float64
}{
	{cdesc("consumer_stream_seq", "Stream sequence of the last container the consumer handed on.", "durable", "kind"), prometheus.GaugeValue, func(c *ConsumerStats) float64 { return float64(c.StreamSeq) }},
	{cdesc("consumer_pending", "Containers in the stream the consumer has not been delivered yet.", "durable", "kind"), prometheus.GaugeValue, func(c *ConsumerStats) float64 { return float64(c.Pending) }},
	{cdesc("consumer_handled_total", "Containers handed on.", "durable", "kind"), prometheus.CounterValue, func(c *ConsumerStats) float64 { return float64(c.Handled) }},
	{cdesc("consumer_redelivered_total", "Containers handed on again after a redelivery (at least once).", "durable", "kind"), prometheus.CounterValue, func(c *ConsumerStats) float64 { return float64(c.Redelivered) }},
	{cdesc("consumer_errors_total", "Hand-overs that failed and were retried.", "durable", "kind"), prometheus.CounterValue, func(c *ConsumerStats) float64 { return float64(c.Errors) }},
	{cdesc("consumer_skipped_total", "Payloads the feed cannot render (not base:dnsqr, undecodable).", "durable", "kind"), prometheus.CounterValue, func(c *ConsumerStats) float64 { return float64(c.Skipped) }},
	{cdesc("consumer_gap_filled_total", "Containers read from the stream because their delivery came out of order.", "durable", "kind"), prometheus.CounterValue, func(c *ConsumerStats) float64 { return float64(c.GapFilled) }},
	{cdesc("consumer_lost_total", "Containers the stream's limits discarded before the consumer handed them on.", "durable", "kind"), prometheus.CounterValue, func(c *ConsumerStats) float64 { return float64(c.Lost) }},
	{cdesc("consumer_running", "1 while the consumer consumes the stream.", "durable", "kind"), prometheus.GaugeValue, func(c *ConsumerStats) float64 { return b2f(c.Running) }},
}

// publishMetrics are per-sensor families of the way into the stream.
var publishMetrics = []struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(*PublishStats) float64
}{
	{cdesc("sensor_published_total", "Containers the stream acknowledged as new.", "sensor"), prometheus.CounterValue, func(p *PublishStats) float64 { return float64(p.Published) }},
	{cdesc("sensor_publish_duplicates_total", "Resent containers the stream recognised by message id and stored once.", "sensor"), prometheus.CounterValue, func(p *PublishStats) float64 { return float64(p.Duplicates) }},
	{cdesc("sensor_publish_errors_total", "Publishes that failed (the session is held; the data stays in the sensor's spool).", "sensor"), prometheus.CounterValue, func(p *PublishStats) float64 { return float64(p.Errors) }},
}

func (c *promCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range serverMetrics {
		ch <- m.desc
	}
	for _, m := range jsMetrics {
		ch <- m.desc
	}
	for _, m := range archiverMetrics {
		ch <- m.desc
	}
	ch <- archiveLost
	for _, m := range consumerMetrics {
		ch <- m.desc
	}
	for _, m := range publishMetrics {
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
		if p := s.Sensors[i].Publish; p != nil {
			for _, m := range publishMetrics {
				ch <- prometheus.MustNewConstMetric(m.desc, m.typ, m.value(p), s.Sensors[i].Sensor)
			}
		}
	}
	if j := s.JetStream; j != nil {
		a := j.Archiver
		for _, m := range jsMetrics {
			ch <- prometheus.MustNewConstMetric(m.desc, m.typ, m.value(j, a))
		}
		if a != nil {
			for _, m := range archiverMetrics {
				ch <- prometheus.MustNewConstMetric(m.desc, m.typ, m.value(j, a))
			}
			ch <- prometheus.MustNewConstMetric(archiveLost, prometheus.CounterValue, float64(a.Lost.Quota), "quota")
			ch <- prometheus.MustNewConstMetric(archiveLost, prometheus.CounterValue, float64(a.Lost.Limits), "limits")
			ch <- prometheus.MustNewConstMetric(archiveLost, prometheus.CounterValue, float64(a.Lost.BadSubject), "bad_subject")
		}
		for i := range j.Consumers {
			c := &j.Consumers[i]
			for _, m := range consumerMetrics {
				ch <- prometheus.MustNewConstMetric(m.desc, m.typ, m.value(c), c.Durable, c.Kind)
			}
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// jsHealth is the stream's chain: connected to NATS → the archiver consumes (not stalled) → it
// lost nothing to limits or quotas lately.
func (m *metrics) jsHealth() *health.Node {
	js := health.NewNode("jetstream", func(time.Time) health.Result {
		st := m.js.snapshot()
		where := "embedded server"
		if st.URL != "" {
			where = st.URL
		}
		if !st.Connected || st.InfoError != "" {
			return health.Result{OK: false, Detail: fmt.Sprintf("stream %s on %s: connected %v, %s", st.Stream, where, st.Connected, st.InfoError),
				Fix: "check the NATS cluster (-nats): sensors' data waits unconfirmed in their spools meanwhile"}
		}
		return health.Result{OK: true, Detail: fmt.Sprintf("stream %s on %s, R%d: %d containers, %d octets, last sequence %d",
			st.Stream, where, st.Replicas, st.Messages, st.Bytes, st.LastSeq)}
	})
	if m.js.arch == nil {
		return js
	}
	lost := health.Still(func() uint64 {
		l := m.js.arch.stats().Lost
		return l.Quota + l.Limits + l.BadSubject
	}, healthWindow, "containers lost to the archive (quota, stream limits)",
		"a sensor's directory is over -quota or the stream's -nats-max-bytes/-nats-max-age discarded data the archiver had not read: raise the limit or move files away")
	arch := health.NewNode("archiver", func(t time.Time) health.Result {
		a := m.js.arch.stats()
		if !a.Running || a.Stalled {
			return health.Result{OK: false, Detail: fmt.Sprintf("archiver %s: running %v, stalled %v: %s", a.Durable, a.Running, a.Stalled, a.LastError),
				Fix: "the files under -dir cannot be written or the stream cannot be read: the data waits in the stream"}
		}
		r := lost(t)
		r.Detail = fmt.Sprintf("through stream sequence %d, %d pending; ", a.StreamSeq, a.Pending) + r.Detail
		return r
	})
	js.Add(arch)
	return js
}

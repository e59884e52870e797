package uplinkd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/uplink/spool"
)

// healthWindow is how long a backlog may wait without a delivery, or how long a loss must lie
// back, before the check concerned fails (or recovers).
const healthWindow = 5 * time.Minute

// listenHealth opens the contract's listeners: the unix socket (HealthSocket, if set) and the
// loopback metrics address of the config, which serves the same documents.
func (s *Supervisor) listenHealth() ([]net.Listener, error) {
	var lns []net.Listener
	if s.HealthSocket != "" {
		ln, err := health.ListenUnix(s.HealthSocket)
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
	}
	if s.cfg.Metrics != "" {
		ln, err := health.ListenLoopback(s.cfg.Metrics)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("metrics: %v", err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// serveHealth serves the contract on lns until ctx ends: /health.json, /metrics, /metrics.json,
// and /status.json (Snapshot: per destination state, last error, the spool's depth and loss).
func (s *Supervisor) serveHealth(ctx context.Context, lns []net.Listener) error {
	reg := health.NewRegistry()
	reg.MustRegister(&promCollector{s: s})
	srv := &health.Server{Daemon: "uplinkd", Tree: s.tree, Registry: reg, Logf: s.logf, Log: s.Log,
		Extra: map[string]http.Handler{"/status.json": http.HandlerFunc(s.serveStatus)}}
	return srv.Serve(ctx, lns...)
}

// healthTree is uplinkd's chain: the spool can be read → each destination is connected → it
// delivers what waits; and the loss ledger beside them.
func (s *Supervisor) healthTree(now func() time.Time) *health.Tree {
	spoolNode := health.NewNode("spool", func(time.Time) health.Result {
		d, err := s.cons.Depth()
		if err != nil {
			return health.Result{OK: false, Detail: err.Error(),
				Fix: "the spool cannot be read: check spool.dir and spool.disk_dir (the same directories as sensord's -spool and -spool-disk) and their permissions"}
		}
		detail := fmt.Sprintf("%d segments, %d records waiting", d.Segments, d.Records)
		if !d.Oldest.IsZero() {
			detail += fmt.Sprintf(", the oldest captured %v ago", now().Sub(d.Oldest).Round(time.Second))
		}
		return health.Result{OK: true, Detail: detail}
	})
	for _, d := range s.dests {
		spoolNode.Add(s.destinationCheck(d))
	}
	tree := health.NewTree("uplinkd", now, spoolNode)
	var base uint64
	if l, err := s.cons.Loss(); err == nil {
		base = l.Total().Records
	}
	// The ledger is durable: only loss after this start is news (older loss is in /status.json).
	lost := health.Still(func() uint64 {
		l, err := s.cons.Loss()
		if err != nil {
			return 0
		}
		return l.Total().Records - min(base, l.Total().Records)
	}, healthWindow, "records lost in the spool since uplinkd started",
		"the spool dropped or quarantined data: destinations were unreachable for longer than the spool holds, or segments were damaged; see /status.json (spool.loss) and the log")
	spoolNode.Add(health.NewNode("loss ledger", func(t time.Time) health.Result {
		if _, err := s.cons.Loss(); err != nil {
			return health.Result{OK: false, Detail: err.Error(), Fix: "the spool's loss ledger cannot be read: check the spool directory's disk"}
		}
		return lost(t)
	}))
	return tree
}

// destinationCheck: connected (sielink: the session is up; nmsg-udp: no failed send within the
// window) → delivering (with a backlog, a segment delivered within the window).
func (s *Supervisor) destinationCheck(d destination) *health.Node {
	st0 := d.status()
	name := st0.Name
	var connected health.Probe
	if st0.Type == "sielink" {
		connected = func(time.Time) health.Result {
			st := d.status()
			detail := fmt.Sprintf("%s since %s", st.State, st.Since.UTC().Format(time.RFC3339))
			if st.LastError != "" {
				detail += "; last error: " + st.LastError
			}
			if st.State != "up" {
				return health.Result{OK: false, Detail: detail, Changed: st.Since,
					Fix: "cannot reach " + name + ": check the management network, DNS, the URL, the API key file and the clock (TLS)"}
			}
			return health.Result{OK: true, Detail: detail, Changed: st.Since}
		}
	} else {
		failed := health.Still(func() uint64 { return d.status().Failures }, healthWindow, "failed sends to "+name,
			"sending to "+name+" fails: check its address and the route to it")
		connected = func(t time.Time) health.Result {
			r := failed(t)
			if st := d.status(); !r.OK && st.LastError != "" {
				r.Detail += "; last error: " + st.LastError
			}
			return r
		}
	}
	var last uint64
	var lastAt time.Time
	delivering := func(now time.Time) health.Result {
		st := d.status()
		if lastAt.IsZero() || st.Segments != last {
			// The first look starts the clock: a fresh start gets one window to deliver.
			last, lastAt = st.Segments, now
		}
		waiting := uint64(0)
		if dp, err := s.cons.Depth(); err == nil {
			waiting = dp.Segments
		}
		switch {
		case waiting == 0:
			return health.Result{OK: true, Detail: fmt.Sprintf("nothing waiting; %d segments delivered", st.Segments)}
		case now.Sub(lastAt) > healthWindow:
			detail := fmt.Sprintf("%d segments waiting, none delivered in the last %v", waiting, healthWindow)
			if st.LastError != "" {
				detail += "; last error: " + st.LastError
			}
			return health.Result{OK: false, Detail: detail, Changed: lastAt.Add(healthWindow),
				Fix: "segments wait but do not reach " + name + ": see the connection check above and uplinkd's log"}
		}
		return health.Result{OK: true, Detail: fmt.Sprintf("%d segments delivered, the last at %s; %d waiting", st.Segments, lastAt.UTC().Format(time.RFC3339), waiting)}
	}
	return health.NewNode("destination "+name, connected, health.NewNode("delivering to "+name, delivering))
}

// promCollector exposes Snapshot as Prometheus metrics (internal/health's naming rules; the names of
// the hand-written writer before it, prefixed dnssensor_).
type promCollector struct{ s *Supervisor }

func udesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("dnssensor_uplinkd_"+name, help, labels, nil)
}

var (
	descUp        = udesc("up", "1 when the destination's connection is up", "destination", "type")
	descSegments  = udesc("segments_sent_total", "segments delivered", "destination")
	descRecords   = udesc("records_sent_total", "records delivered", "destination")
	descBytes     = udesc("bytes_sent_total", "segment body octets delivered", "destination")
	descFailures  = udesc("delivery_failures_total", "delivery attempts that failed and were retried", "destination")
	descReconn    = udesc("reconnects_total", "sielink reconnections", "destination")
	descPossLost  = udesc("possibly_lost_payloads_total", "payloads unconfirmed at a connection drop (resent)", "destination")
	descDatagrams = udesc("datagrams_sent_total", "NMSG/UDP datagrams sent", "destination")
	descRefused   = udesc("datagrams_refused_total", "NMSG/UDP datagrams refused by the receiver (ICMP port unreachable)", "destination")
	descSpoolSeg  = udesc("spool_segments", "segments waiting")
	descSpoolRec  = udesc("spool_records", "records waiting")
	descSpoolB    = udesc("spool_bytes", "octets waiting, by tier", "tier")
	descSpoolAge  = udesc("spool_oldest_record_age_seconds", "age of the oldest waiting record")
	descInFlight  = udesc("in_flight_segment", "sequence number of the segment being delivered; 0 when idle")
	descLostRec   = udesc("lost_records_total", "records lost in the spool, by reason (the durable ledger)", "reason")
	descLostSeg   = udesc("lost_segments_total", "segments lost in the spool, by reason (the durable ledger)", "reason")
	descLostB     = udesc("lost_bytes_total", "octets lost in the spool, by reason (the durable ledger)", "reason")
	descConsumer  = udesc("consumer_segments_total", "segments the spool consumer handled since start, by event", "event")
)

func (c *promCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descSegments, descRecords, descBytes, descFailures, descReconn, descPossLost,
		descDatagrams, descRefused, descSpoolSeg, descSpoolRec, descSpoolB, descSpoolAge, descInFlight, descLostRec, descLostSeg, descLostB, descConsumer} {
		ch <- d
	}
}

func (c *promCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.s.Snapshot()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, d := range m.Destinations {
		up := 0.0
		if d.State == "up" {
			up = 1
		}
		gauge(descUp, up, d.Name, d.Type)
		counter(descSegments, d.Segments, d.Name)
		counter(descRecords, d.Records, d.Name)
		counter(descBytes, d.Bytes, d.Name)
		counter(descFailures, d.Failures, d.Name)
		switch d.Type {
		case "sielink":
			counter(descReconn, d.Reconnects, d.Name)
			counter(descPossLost, d.PossiblyLost, d.Name)
		case "nmsg-udp":
			counter(descDatagrams, d.Datagrams, d.Name)
			counter(descRefused, d.Refused, d.Name)
		}
	}
	// A spool that cannot be read has no depth: absent, not zero (the health tree says why).
	if m.Spool.DepthError == "" {
		gauge(descSpoolSeg, float64(m.Spool.Segments))
		gauge(descSpoolRec, float64(m.Spool.Records))
		gauge(descSpoolB, float64(m.Spool.RAMBytes), "ram")
		gauge(descSpoolB, float64(m.Spool.DiskBytes), "disk")
		gauge(descSpoolAge, m.Spool.OldestAge)
	}
	gauge(descInFlight, float64(m.InFlight))
	if m.Spool.LedgerError == "" {
		l := m.Spool.Loss
		for _, r := range []struct {
			reason string
			n      spool.Counter
		}{{"dropped", l.Dropped}, {"quarantined", l.Quarantined}, {"temp_files", l.TempFiles}, {"rejected", l.Rejected}, {"stranded", l.Stranded}} {
			counter(descLostRec, r.n.Records, r.reason)
			counter(descLostSeg, r.n.Segments, r.reason)
			counter(descLostB, r.n.Bytes, r.reason)
		}
	}
	cs := m.Consumer
	counter(descConsumer, cs.Delivered.Segments, "handed_out")
	counter(descConsumer, cs.Acked.Segments, "acked")
	counter(descConsumer, cs.Released, "released")
	counter(descConsumer, cs.Quarantined.Segments, "quarantined")
}

// AwaitSpool waits, for as long as ctx lasts, until the spool directories that sensord creates
// exist, and answers the health contract on healthSock and the config's metrics address
// meanwhile, with a failing "spool" check that says which directory is missing. A daemon that is
// running answers: without this, uplinkd was silent while sensord did not run (a release whose
// sensord fails at start), so the status page and the update's health gate could only say that
// uplinkd does not answer, not why. It returns nil once the directories exist (the listeners
// are closed again for Run), ctx's error when ctx ends first, and at once for any other fault of
// the directories (a file where a directory should be).
func AwaitSpool(ctx context.Context, cfg *Config, healthSock string, ring *health.LogRing, logf func(string, ...any)) error {
	err := cfg.checkDirs()
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	logf("uplinkd: %v; waiting for it (the health contract answers meanwhile)", err)
	var mu sync.Mutex
	missing := err
	tree := health.NewTree("uplinkd", time.Now, health.NewNode("spool", func(time.Time) health.Result {
		mu.Lock()
		defer mu.Unlock()
		return health.Result{OK: false, Detail: missing.Error(),
			Fix: "sensord creates the spool when it starts: check that sensord runs (its own checks on this page), and that spool.dir and spool.disk_dir name sensord's -spool and -spool-disk"}
	}))
	lns, lerr := (&Supervisor{cfg: cfg, HealthSocket: healthSock}).listenHealth()
	if lerr != nil {
		return lerr
	}
	hctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() {
		served <- (&health.Server{Daemon: "uplinkd", Tree: tree, Registry: health.NewRegistry(), Logf: logf, Log: ring}).Serve(hctx, lns...)
	}()
	defer func() {
		stop()
		<-served // the sockets are gone before Run listens on them again
	}()
	start := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-served:
			served <- err
			return fmt.Errorf("health contract: %v", err)
		case <-tick.C:
		}
		err := cfg.checkDirs()
		if err == nil {
			logf("uplinkd: the spool appeared after %v", time.Since(start).Round(time.Millisecond))
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		mu.Lock()
		missing = err // spool.dir may have appeared and spool.disk_dir not yet
		mu.Unlock()
	}
}

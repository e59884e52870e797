package app

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/candidates"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
	"github.com/sie-europe/dnssensor/sensor/internal/dnstap"
	"github.com/sie-europe/dnssensor/sensor/internal/live"
	"github.com/sie-europe/dnssensor/sensor/internal/pipeline"
	"github.com/sie-europe/dnssensor/uplink/spool"
)

// healthWindow is how long a counter that should move (frames, DNS, records) may stand still
// before its check fails, and how long an error counter must stay still before its check
// recovers. A resolver's tap carries traffic every second; five minutes of silence is a fault.
const healthWindow = 5 * time.Minute

// healthOptions are the -health flags: the daemon health contract (internal/health).
type healthOptions struct {
	Socket string
	Addr   string

	// now is the clock of the health tree; a seam for tests.
	now func() time.Time

	// Published by the pipeline's goroutine, read by the server's.
	pipe   atomic.Pointer[pipeline.Stats]
	live   atomic.Pointer[live.Stats]
	dnstap atomic.Pointer[dnstap.Stats]
	spool  atomic.Pointer[spool.Producer]

	cands   atomic.Pointer[candidates.Tracker] // query sources on the tap (discovery.go)
	waiting atomic.Pointer[string]             // while a capture port does not exist yet: what is waited for

	liveStats *live.Stats // set by runLive; read only by the pipeline's goroutine
	stop      func()
	log       *health.LogRing
}

// keepLog keeps what sensord writes to stderr in a ring for /log.json, when the contract is
// served: the status page shows the recent lines without a shell on the box.
func (h *healthOptions) keepLog(stderr io.Writer) io.Writer {
	if h.Socket == "" && h.Addr == "" {
		return stderr
	}
	h.log = health.NewLogRing(0)
	return io.MultiWriter(stderr, h.log)
}

func (h *healthOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&h.Socket, "health", "", "serve /health.json, /metrics and /metrics.json on this unix `SOCKET` (the appliance: /run/sensord/health.sock); empty: off")
	fs.StringVar(&h.Addr, "health-addr", "", "serve them on this loopback `ADDRESS` too (127.0.0.1:PORT); other addresses are refused")
}

func (h *healthOptions) enabled() bool { return h.Socket != "" || h.Addr != "" }

// start serves the contract for the run until stop, and returns the sink to feed: p, publishing
// its counters for the server once a second (a pipeline's counters belong to its goroutine).
func (h *healthOptions) start(ctx context.Context, o *Options, p frameSink, sp *spool.Producer, stderr io.Writer) (frameSink, error) {
	h.stop = func() {}
	if !h.enabled() {
		return p, nil
	}
	if sp != nil {
		h.spool.Store(sp)
	}
	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	if h.Socket != "" {
		ln, err := health.ListenUnix(h.Socket)
		if err != nil {
			return nil, fmt.Errorf("-health: %v", err)
		}
		lns = append(lns, ln)
	}
	if h.Addr != "" {
		ln, err := health.ListenLoopback(h.Addr)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("-health-addr: %v", err)
		}
		lns = append(lns, ln)
	}
	reg := health.NewRegistry()
	reg.MustRegister(&sensordCollector{h: h, o: o})
	now := h.now
	if now == nil {
		now = time.Now
	}
	srv := &health.Server{Daemon: "sensord", Tree: h.tree(o, now), Registry: reg, Now: now, Log: h.log,
		Extra: map[string]http.Handler{candidatesPath: h.serveCandidates(now)},
		Logf:  func(format string, args ...any) { fmt.Fprintf(stderr, format+"\n", args...) }}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(sctx, lns...); err != nil {
			fmt.Fprintf(stderr, "sensord: health server: %v\n", err)
		}
	}()
	h.stop = func() { cancel(); <-done }
	ps := &publishingSink{frameSink: p, h: h}
	if s, ok := p.(interface{ Sync() }); ok {
		ps.sync = s.Sync
	}
	ps.publish()
	return ps, nil
}

// publish stores a snapshot of p's counters for the server. Call it only from p's goroutine.
func (h *healthOptions) publish(p interface{ Stats() pipeline.Stats }) {
	if h == nil || !h.enabled() {
		return
	}
	s := p.Stats()
	h.pipe.Store(&s)
	if h.liveStats != nil && h.liveStats.Ports != nil && h.live.Load() == nil {
		// live.Run has filled in the ports (in this goroutine); from now on only atomics change.
		h.live.Store(h.liveStats)
	}
}

// publishingSink is the frame sink with a snapshot of its counters published once a second.
type publishingSink struct {
	frameSink
	h    *healthOptions
	sync func()
	n    uint
	last time.Time
}

func (s *publishingSink) Frame(link decode.LinkType, ts int64, frame []byte, wireLen int) {
	s.frameSink.Frame(link, ts, frame, wireLen)
	if s.n++; s.n%1024 == 0 {
		s.maybePublish()
	}
}

func (s *publishingSink) Idle(ts int64) {
	s.frameSink.Idle(ts)
	s.maybePublish()
}

func (s *publishingSink) Flush() {
	s.frameSink.Flush()
	s.publish()
}

// Sync passes live's batch hand-over on to a sharded pipeline.
func (s *publishingSink) Sync() {
	if s.sync != nil {
		s.sync()
	}
}

func (s *publishingSink) maybePublish() {
	if time.Since(s.last) >= time.Second {
		s.publish()
	}
}

func (s *publishingSink) publish() {
	s.last = time.Now()
	s.h.publish(s.frameSink)
}

// tree is sensord's chain of causes for "why is there no data?": the input runs → each capture
// port's link is up → frames arrive on it → some are DNS → some are the resolver's own
// transactions → they pair into records → the records are written (and the spool keeps them).
func (h *healthOptions) tree(o *Options, now func() time.Time) *health.Tree {
	pipe := func() pipeline.Stats {
		if s := h.pipe.Load(); s != nil {
			return *s
		}
		return pipeline.Stats{}
	}
	input := h.inputCheck(o)
	var roots []*health.Node
	if o.reload != nil {
		// First: a refused file is the operator's latest action, and nothing else shows it.
		roots = append(roots, health.NewNode("configuration", o.reload.probe))
	}
	if o.Discovery {
		return health.NewTree("sensord", now, append(roots, discoveryCheck(), input)...)
	}
	resolverFix := "the resolver's transactions with authoritative servers are not seen: check -resolver (its addresses as they appear on the tap, IPv4 and IPv6) and that the tap carries the resolver's upstream link, not its client side"
	if len(o.Pipeline.Authorities) > 0 {
		resolverFix = "no transactions of the -authoritative servers are seen: check -authoritative and that the tap carries their traffic"
	}
	transactions := health.NewNode("resolver transactions", health.Increasing(func() uint64 {
		s := pipe()
		n := s.Pending + s.FilteredQR + s.FilteredRD + s.FilteredQname + s.PrivacyDropped + s.UnsolicitedDropped + s.UnsolicitedClient
		for _, r := range s.Records {
			n += r
		}
		return n
	}, healthWindow, "resolver DNS messages in pairing", resolverFix))
	pairsName, pairsWhat := "pairs", "paired records (query with response)"
	pairs := func() uint64 {
		s := pipe()
		return s.Records[dnsqr.UDPQueryResponse] + s.Records[dnsqr.TCP]
	}
	if o.Pipeline.QR != 0 {
		// -qr 0/1 emits every message unpaired.
		pairsName, pairsWhat = "records", "records"
		pairs = func() uint64 {
			s := pipe()
			var n uint64
			for _, r := range s.Records {
				n += r
			}
			return n
		}
	}
	output := health.NewNode("output", health.Still(func() uint64 {
		n := pipe().OutputErrors
		if sp := h.spool.Load(); sp != nil {
			n += sp.Stats().Rejected.Records
		}
		return n
	}, healthWindow, "records refused by the output", "the output cannot be written: check the disk or tmpfs behind -w/-J/-spool (space, permissions) and sensord's log"))
	if o.Spool.Dir != "" {
		output.Add(health.NewNode("spool", health.Still(func() uint64 {
			if sp := h.spool.Load(); sp != nil {
				s := sp.Stats()
				return s.Dropped.Records + s.Quarantined.Records
			}
			return 0
		}, healthWindow, "records dropped at the spool's quota or quarantined", "the spool is full: uplinkd is down or behind (see its health); the oldest data is being dropped")))
	}
	transactions.Add(health.NewNode(pairsName, health.Increasing(pairs, healthWindow, pairsWhat,
		"queries are seen but no answers pair with them: both directions of the resolver's upstream traffic must reach sensord (both tap ports, -merge-window), and -rd must match the resolver's queries (0)"),
		output))
	input.Add(transactions)
	// First among the roots: when it fails nothing is shipped, whatever the capture does, and
	// it depends on nothing the capture does.
	selfTest := health.NewNode("privacy self-test", o.selfTest.probe)
	return health.NewTree("sensord", now, append(roots, selfTest, input)...)
}

// inputCheck is the tree's root: the input, and under it each capture port or the dnstap feed.
func (h *healthOptions) inputCheck(o *Options) *health.Node {
	l := &o.Live
	switch {
	case len(l.Ifaces) > 0:
		n := health.NewNode("capture", func(time.Time) health.Result {
			if h.live.Load() == nil {
				if w := h.waiting.Load(); w != nil {
					return health.Result{OK: false, Detail: *w, Fix: "plug in the tap port's NIC, or correct -i (the image: the taps of the box configuration); capture starts as soon as the port exists"}
				}
				return health.Result{OK: false, Detail: "capture ports not open yet", Fix: "see sensord's log for the error opening " + strings.Join(l.Ifaces, ",")}
			}
			return health.Result{OK: true, Detail: "capturing on " + strings.Join(l.Ifaces, ",")}
		})
		for i, ifc := range l.Ifaces {
			n.Add(h.portCheck(i, ifc))
		}
		return n
	case l.Dnstap != "":
		dt := func(f func(*dnstap.Stats) uint64) func() uint64 {
			return func() uint64 {
				if s := h.dnstap.Load(); s != nil {
					return f(s)
				}
				return 0
			}
		}
		return health.NewNode("dnstap", health.Fixed(true, "accepting dnstap writers on "+l.Dnstap, ""),
			health.NewNode("dnstap writers", health.Increasing(dt(func(s *dnstap.Stats) uint64 { return s.Frames.Load() }), healthWindow, "dnstap frames",
				"no dnstap frames arrive: configure the resolver to write dnstap to "+l.Dnstap+" (e.g. Unbound dnstap-socket-path, BIND dnstap-output unix)")))
	}
	what := "reading " + strings.Join(o.Read, ",")
	if l.DnstapFile != "" {
		what = "reading " + l.DnstapFile
	}
	return health.NewNode("input", health.Fixed(true, what, ""))
}

// portCheck is one capture port: link up → frames → DNS; kernel drops beside.
func (h *healthOptions) portCheck(i int, ifc string) *health.Node {
	port := func(f func(*live.PortStats) uint64) func() uint64 {
		return func() uint64 {
			if s := h.live.Load(); s != nil && i < len(s.Ports) {
				return f(s.Ports[i])
			}
			return 0
		}
	}
	frames := health.NewNode("frames on "+ifc, health.Increasing(port(func(p *live.PortStats) uint64 { return p.Frames.Load() }), healthWindow, "frames on "+ifc,
		"nothing arrives on "+ifc+": check the tap's cable and power and that this port is the tap's output for its direction"),
		health.NewNode("DNS on "+ifc, health.Increasing(port(func(p *live.PortStats) uint64 { return p.Queries.Load() + p.Responses.Load() }), healthWindow, "DNS messages on "+ifc,
			"frames arrive on "+ifc+" but no DNS: the tap may sit on the wrong link, or the kernel filter built from -resolver drops everything (check -resolver)")))
	drops := health.NewNode("kernel drops on "+ifc, health.Still(port(func(p *live.PortStats) uint64 { return p.KDrops.Load() }), healthWindow, "kernel drops on "+ifc,
		"the capture cannot keep up: raise -ring-mib, use -workers on a multi-core box, or check for CPU contention"))
	return health.NewNode("port "+ifc, linkProbe(ifc), frames, drops)
}

// linkFlags reads an interface's flags by netlink, in sensord's own network namespace (sysfs may
// show another: a process entered into a namespace with nsenter keeps the old /sys); a seam for
// tests.
var linkFlags = func(ifc string) (net.Flags, error) {
	i, err := net.InterfaceByName(ifc)
	if err != nil {
		return 0, err
	}
	return i.Flags, nil
}

// linkProbe checks that the port is up and has a carrier (IFF_RUNNING).
func linkProbe(ifc string) health.Probe {
	return func(time.Time) health.Result {
		f, err := linkFlags(ifc)
		switch {
		case err != nil:
			return health.Result{OK: false, Detail: err.Error(), Fix: "the interface " + ifc + " is missing: check -i and the box's hardware profile"}
		case f&net.FlagUp == 0:
			return health.Result{OK: false, Detail: "link administratively down", Fix: "bring " + ifc + " up (ip link set " + ifc + " up; on the appliance the network daemon does); it needs no address"}
		case f&net.FlagRunning == 0:
			return health.Result{OK: false, Detail: "link up, no carrier", Fix: "no carrier on " + ifc + ": check the cable to the tap and the tap's power"}
		}
		return health.Result{OK: true, Detail: "link up"}
	}
}

// sensordCollector exposes the counters of the stats line (internal/health's naming rules).
type sensordCollector struct {
	h *healthOptions
	o *Options
}

func sdesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("dnssensor_sensord_"+name, help, labels, nil)
}

var (
	descFrames   = sdesc("frames_total", "frames offered to the pipeline (all inputs)")
	descIP       = sdesc("ip_datagrams_total", "IP datagrams decoded")
	descDropped  = sdesc("dropped_total", "what the pipeline dropped, by stage and reason; the unit is the stage's: frames (capture, decode, classify), DNS messages (dns, filter), datagrams (defrag), messages or streams (tcp), records (pair, privacy, output)", "stage", "reason")
	descEvents   = sdesc("stage_events_total", "what the pipeline's stages did besides dropping, by stage and event", "stage", "event")
	descRecords  = sdesc("records_total", "records emitted, by base:dnsqr type", "type")
	descPending  = sdesc("pending_queries", "queries waiting for their response")
	descMemory   = sdesc("memory_bytes", "memory held for pairing, IP reassembly and TCP reassembly", "stage")
	descPort     = sdesc("port_frames_total", "frames captured, by tap port", "port")
	descPortB    = sdesc("port_bytes_total", "octets captured, by tap port", "port")
	descPortDNS  = sdesc("port_dns_messages_total", "DNS messages seen (unfragmented, port 53 or 5353), by tap port and direction", "port", "qr")
	descPortEv   = sdesc("port_events_total", "capture events by tap port: vlan_restored, over_snaplen, reader_waits", "port", "event")
	descPortT    = sdesc("port_frame_timestamp_seconds", "the kernel's arrival time of the first frame this capture read on the tap port and of the latest (which=first|last; absent before the first frame): compared with the box's clock, they place a capture gap, such as an update's reboot", "port", "which")
	descKernel   = sdesc("port_kernel_packets_total", "packets the kernel counted for the ring (PACKET_STATISTICS), by tap port", "port")
	descKDrops   = sdesc("port_kernel_drops_total", "packets the kernel dropped because the ring was full, by tap port", "port")
	descKFreeze  = sdesc("port_kernel_freezes_total", "times the kernel froze the ring queue, by tap port", "port")
	descMergeH   = sdesc("merge_held_frames", "frames waiting in the timestamp merge of the tap ports")
	descMergeOoO = sdesc("merge_out_of_order_total", "frames released later than a newer one (late beyond -merge-window)")
	descDnstap   = sdesc("dnstap_total", "dnstap input by event: frames, events (DNS messages handed on), resolver_queries, resolver_responses, conns, conn_errors, port_repaired", "event")
	descDnstapD  = sdesc("dnstap_dropped_total", "dnstap input dropped, by reason", "reason")
	descSpool    = sdesc("spool_total", "the spool producer's work: records, segments and octets sealed, segments and octets spilled to disk", "what")
	descSpoolE   = sdesc("spool_spill_errors_total", "failed copies of a segment to the disk tier (it stays in RAM)")
	descSpoolL   = sdesc("spool_lost_records_total", "records lost in the spool by this process, by reason", "reason")
	descSelfTest = sdesc("privacy_selftest_runs_total", "privacy self-test runs by result: pass, leak (a canary's client address or ECS octets reached a record), no_records (the resolver's own canaries made none, so nothing was proven)", "result")
	descReloads  = sdesc("config_reloads_total", "changes of the -config file: applied (sensord runs with it) or refused (invalid; the running configuration stays)", "result")
	descGap      = sdesc("reload_capture_gap_seconds", "how long the last reload stopped the capture (old rings closed to new rings open); frames in it are not seen")
	descSelfOK   = sdesc("privacy_selftest_ok", "1 while no privacy self-test has failed; 0 once one has, and every record is withheld (dropped_total{stage=\"output\",reason=\"privacy_selftest_failed\"})")
)

func (c *sensordCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFrames, descIP, descDropped, descEvents, descRecords, descPending, descMemory,
		descPort, descPortB, descPortDNS, descPortEv, descPortT, descKernel, descKDrops, descKFreeze, descMergeH, descMergeOoO,
		descDnstap, descDnstapD, descSpool, descSpoolE, descSpoolL, descSelfTest, descSelfOK, descReloads, descGap} {
		ch <- d
	}
}

func (c *sensordCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	var s pipeline.Stats
	if p := c.h.pipe.Load(); p != nil {
		s = *p
	}
	counter(descFrames, s.Frames)
	counter(descIP, s.IP)
	for r := 1; r < decode.NumResults; r++ {
		counter(descDropped, s.Decode[r], "decode", decode.Result(r).String())
	}
	v := reflect.ValueOf(s)
	for _, f := range pipelineCounters {
		d := descEvents
		if f.drop {
			d = descDropped
		}
		counter(d, v.FieldByIndex(f.index).Uint(), f.stage, f.name)
	}
	for t, n := range s.Records {
		if t == 0 && n == 0 {
			continue // UDP_INVALID is never emitted
		}
		counter(descRecords, n, strings.ToLower(dnsqr.Type(t).String()))
	}
	counter(descDropped, c.o.selfTest.withheld.Load(), "output", "privacy_selftest_failed")
	for i, k := range selfTestKinds {
		counter(descSelfTest, c.o.selfTest.runs[i].Load(), k)
	}
	ok := 1.0
	if c.o.selfTest.failed.Load() {
		ok = 0
	}
	gauge(descSelfOK, ok)
	if r := c.o.reload; r != nil {
		counter(descReloads, r.appliedN.Load(), "applied")
		counter(descReloads, r.refusedN.Load(), "refused")
		r.mu.Lock()
		gap := r.lastGap
		r.mu.Unlock()
		gauge(descGap, gap.Seconds())
	}
	gauge(descPending, float64(s.Pending))
	gauge(descMemory, float64(s.MemTable), "pair")
	gauge(descMemory, float64(s.MemFrag), "defrag")
	gauge(descMemory, float64(s.MemTCP), "tcp")

	if l := c.h.live.Load(); l != nil {
		for _, p := range l.Ports {
			counter(descPort, p.Frames.Load(), p.Name)
			counter(descPortB, p.Bytes.Load(), p.Name)
			counter(descPortDNS, p.Queries.Load(), p.Name, "query")
			counter(descPortDNS, p.Responses.Load(), p.Name, "response")
			counter(descPortEv, p.VLAN.Load(), p.Name, "vlan_restored")
			counter(descPortEv, p.OverSnaplen.Load(), p.Name, "over_snaplen")
			counter(descPortEv, p.Waits.Load(), p.Name, "reader_waits")
			if t := p.FirstFrame.Load(); t != 0 {
				gauge(descPortT, float64(t)/1e9, p.Name, "first")
				gauge(descPortT, float64(p.LastFrame.Load())/1e9, p.Name, "last")
			}
			counter(descKernel, p.KPackets.Load(), p.Name)
			counter(descKDrops, p.KDrops.Load(), p.Name)
			counter(descKFreeze, p.KFreezes.Load(), p.Name)
		}
		gauge(descMergeH, float64(l.Held.Load()))
		counter(descMergeOoO, l.OutOfOrder.Load())
	}
	if d := c.h.dnstap.Load(); d != nil {
		for _, e := range []struct {
			name string
			v    *atomic.Uint64
		}{{"frames", &d.Frames}, {"events", &d.Events}, {"resolver_queries", &d.Queries}, {"resolver_responses", &d.Responses},
			{"conns", &d.Conns}, {"conn_errors", &d.ConnErrors}, {"port_repaired", &d.PortRepaired}} {
			counter(descDnstap, e.v.Load(), e.name)
		}
		for _, e := range []struct {
			name string
			v    *atomic.Uint64
		}{{"oversized", &d.Oversized}, {"malformed", &d.Malformed}, {"client", &d.Client}, {"other_type", &d.Other},
			{"not_resolver", &d.NotResolver}, {"queue_full", &d.QueueDropped}} {
			counter(descDnstapD, e.v.Load(), e.name)
		}
	}
	if sp := c.h.spool.Load(); sp != nil {
		st := sp.Stats()
		counter(descSpool, st.Records, "records")
		counter(descSpool, st.Segments, "segments")
		counter(descSpool, st.Bytes, "bytes")
		counter(descSpool, st.Spilled, "spilled_segments")
		counter(descSpool, st.SpilledBytes, "spilled_bytes")
		counter(descSpoolE, st.SpillErrors)
		counter(descSpoolL, st.Dropped.Records, "dropped_at_quota")
		counter(descSpoolL, st.Quarantined.Records, "quarantined")
		counter(descSpoolL, st.RejectedTooLarge, "too_large")
		counter(descSpoolL, st.RejectedWrite, "write_error")
	}
}

// pipelineCounter maps one counter field of pipeline.Stats to a metric sample.
type pipelineCounter struct {
	field       string // Go field path, e.g. "Defrag.Expired"
	drop        bool   // dropped_total; else stage_events_total
	stage, name string
	index       []int
}

// pipelineCounters are the scalar counters of pipeline.Stats. TestMetricsCoverPipelineStats fails
// when a counter is added to the stats line without a place here, so no drop goes unexported.
var pipelineCounters = func() []pipelineCounter {
	cs := []pipelineCounter{
		{field: "Truncated", drop: true, stage: "capture", name: "truncated"},
		{field: "NotDNS", drop: true, stage: "classify", name: "not_dns"},
		{field: "NotResolver", drop: true, stage: "classify", name: "not_resolver"},
		{field: "MDNSDropped", drop: true, stage: "classify", name: "mdns"},
		{field: "DNSMalformed", drop: true, stage: "dns", name: "dns_malformed"},
		{field: "ICMPMalformed", drop: true, stage: "dns", name: "icmp_malformed"},
		{field: "ICMPUnmatched", drop: true, stage: "dns", name: "icmp_unmatched"},
		{field: "FilteredQR", drop: true, stage: "filter", name: "qr"},
		{field: "FilteredRD", drop: true, stage: "filter", name: "rd"},
		{field: "FilteredQname", drop: true, stage: "filter", name: "qname_excluded"},
		{field: "UnsolicitedDropped", drop: true, stage: "pair", name: "unsolicited"},
		{field: "UnsolicitedClient", drop: true, stage: "pair", name: "unsolicited_from_client"},
		{field: "PrivacyDropped", drop: true, stage: "privacy", name: "unverifiable"},
		{field: "OutputErrors", drop: true, stage: "output", name: "output_error"},
		{field: "ICMPMatched", stage: "pair", name: "icmp_matched"},
		{field: "StateEvicted", stage: "pair", name: "state_evicted"},
		{field: "MemEvicted", stage: "pair", name: "memory_evicted"},
		{field: "MemDropped", drop: true, stage: "pair", name: "memory_dropped"},
		{field: "Held", stage: "pair", name: "held"},
		{field: "HeldPaired", stage: "pair", name: "held_paired"},
		{field: "HoldEvicted", stage: "pair", name: "hold_evicted"},

		{field: "Defrag.Fragments", stage: "defrag", name: "fragments"},
		{field: "Defrag.Datagrams", stage: "defrag", name: "datagrams"},
		{field: "Defrag.Duplicates", stage: "defrag", name: "duplicate_fragments"},
		{field: "Defrag.FragsLost", stage: "defrag", name: "fragments_lost"},
		{field: "Defrag.Expired", drop: true, stage: "defrag", name: "expired"},
		{field: "Defrag.Evicted", drop: true, stage: "defrag", name: "evicted"},
		{field: "Defrag.Overlaps", drop: true, stage: "defrag", name: "overlap"},
		{field: "Defrag.TooMany", drop: true, stage: "defrag", name: "too_many_fragments"},
		{field: "Defrag.TooBig", drop: true, stage: "defrag", name: "too_big"},
		{field: "Defrag.NoBudget", drop: true, stage: "defrag", name: "no_budget"},

		{field: "TCP.Segments", stage: "tcp", name: "segments"},
		{field: "TCP.Messages", stage: "tcp", name: "messages"},
		{field: "TCP.StreamsOpened", stage: "tcp", name: "streams_opened"},
		{field: "TCP.StreamsClosed", stage: "tcp", name: "streams_closed"},
		{field: "TCP.StreamsExpired", stage: "tcp", name: "streams_expired"},
		{field: "TCP.MidstreamStarts", stage: "tcp", name: "midstream_starts"},
		{field: "TCP.Resyncs", stage: "tcp", name: "resyncs"},
		{field: "TCP.OutOfOrder", stage: "tcp", name: "out_of_order_segments"},
		{field: "TCP.Duplicates", stage: "tcp", name: "duplicate_segments"},
		{field: "TCP.Overlaps", stage: "tcp", name: "overlapping_segments"},
		{field: "TCP.DuplicateBytes", stage: "tcp", name: "duplicate_bytes"},
		{field: "TCP.Gaps", stage: "tcp", name: "gaps"},
		{field: "TCP.GapBytes", stage: "tcp", name: "gap_bytes"},
		{field: "TCP.SkippedBytes", stage: "tcp", name: "skipped_bytes"},
		{field: "TCP.BytesDroppedCap", stage: "tcp", name: "bytes_dropped_at_cap"},
		{field: "TCP.StreamsEvicted", drop: true, stage: "tcp", name: "stream_evicted"},
		{field: "TCP.GarbageFrames", drop: true, stage: "tcp", name: "garbage_length"},
		{field: "TCP.OversizeFrames", drop: true, stage: "tcp", name: "oversize_message"},
		{field: "TCP.FramesDroppedCap", drop: true, stage: "tcp", name: "memory_cap"},
		{field: "TCP.Incomplete", drop: true, stage: "tcp", name: "incomplete_message"},
		{field: "TCP.IncompleteAtFlush", drop: true, stage: "tcp", name: "incomplete_at_exit"},

		// Sub-reasons of PrivacyDropped: events, so that the drops are not counted twice.
		{field: "Privacy.ECSUnparsed", stage: "privacy", name: "ecs_unparsed"},
		{field: "Privacy.PacketsUnparsed", stage: "privacy", name: "packet_unparsed"},
		{field: "Privacy.ECSScrubbed", stage: "privacy", name: "ecs_scrubbed"},
		{field: "Privacy.EDNSZeroed", stage: "privacy", name: "edns_zeroed"},
		{field: "Privacy.OptionsZeroed", stage: "privacy", name: "options_zeroed"},
		{field: "Privacy.HeadersZeroed", stage: "privacy", name: "headers_zeroed"},
		{field: "Privacy.ResolverZeroed", stage: "privacy", name: "resolver_zeroed"},
	}
	t := reflect.TypeOf(pipeline.Stats{})
	for i := range cs {
		var idx []int
		typ := t
		for _, part := range strings.Split(cs[i].field, ".") {
			f, ok := typ.FieldByName(part)
			if !ok {
				panic("sensord metrics: pipeline.Stats has no field " + cs[i].field)
			}
			idx = append(idx, f.Index...)
			typ = f.Type
		}
		cs[i].index = idx
	}
	return cs
}()

// pipelineCountersElsewhere are the fields of pipeline.Stats exported outside the table above.
var pipelineCountersElsewhere = map[string]bool{"Frames": true, "IP": true, "Decode": true, "Records": true, "Pending": true,
	"MemTable": true, "MemFrag": true, "MemTCP": true}

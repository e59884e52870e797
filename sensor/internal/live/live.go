// Package live runs the sensor on capture ports: one reader goroutine per port (TPACKET_V3
// ring) copies frames into batches; the pipeline's goroutine merges the ports' batches in ring
// timestamp order and feeds the single pipeline.
//
// Why a merge: on a two-port tap the query arrives on port A and its response on port B, and the
// two rings are read independently. TPACKET_V3 hands a block to user space only when it is full
// or its retire timer fires, so a response can be read before its query (median round trip to a
// nearby authority: 45 µs, far below a block timeout), and a reader that is not scheduled for a
// while (a busy machine, a paused process) falls behind the other. A frame is released to the
// pipeline only when no port can still deliver an older one: by per-port watermarks, which each
// reader advances whenever it finds its ring empty (see merge). Window is only a safety valve for
// a port that makes no progress; its releases are counted. ci/netns-live measures the unsolicited
// responses the merge prevents, ci/merge-contention the same on a busy or paused machine.
package live

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sie-europe/dnssensor/sensor/internal/candidates"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
)

// Source is one capture port. Read returns the next frame (valid until the next Read), its
// capture time in ns (the ring's), its length on the wire and whether the NIC had stripped a
// VLAN tag; it returns TimeoutErr when nothing arrived for a while.
type Source interface {
	Read() (frame []byte, ts int64, wireLen int, vlan bool, err error)
	KernelStats() (packets, drops, freezes uint64, err error)
}

// Port is one named capture port.
type Port struct {
	Name string
	Src  Source
}

// Config for Run.
type Config struct {
	// Window is the merge's safety valve: a frame is released after waiting this long (while
	// the process runs) even if a port has not caught up; 0 hands frames over in arrival order.
	Window time.Duration
	// Slack is how long after its timestamp a frame can still surface from a port's ring
	// (source.RetireDelay): a port that found its ring empty at T has nothing older than T−Slack.
	Slack      time.Duration
	TimeoutErr error // the sources' "nothing arrived" error
	Logf       func(format string, args ...any)
	// StatsEvery prints Stats through Logf; 0 only at the end (by the caller).
	StatsEvery time.Duration
	// Silence is how long a port may be quiet while another carries traffic before a warning.
	Silence time.Duration
	// Candidates, when set, counts the sources of DNS queries to port 53 (memory only: they
	// may be clients' addresses), for the status page's resolver suggestions.
	Candidates *candidates.Tracker
	now        func() time.Time // wall clock, for the window and warnings; a seam for tests
}

// DefaultWindow is the valve's default: long enough that a reader starved by other work (or a
// paused process, which the valve clock does not count) never opens it, short enough to bound
// what a stuck port holds back.
const DefaultWindow = time.Second

const (
	batchFrames = 512
	batchBytes  = 512 << 10
	batchesPer  = 32  // per port: the copy buffers between a ring and the merge
	flushAfter  = 1e6 // ns: a partly filled batch is handed over after this
	mergeTick   = 5 * time.Millisecond
	idleEvery   = time.Second
)

type frameRef struct {
	off, n  int32
	wireLen int32
	ts      int64
}

type batch struct {
	port   int
	frames []frameRef
	data   []byte
	next   int           // merge read position
	in     time.Duration // valve clock when the merge received it
}

// msg is what a reader sends the merge: a batch, and/or "polled my ring empty at polled (ns)",
// which comes after the batch's frames.
type msg struct {
	port   int
	b      *batch
	polled int64
}

// PortStats are one port's counters; reader and merge update them atomically.
type PortStats struct {
	Name          string
	Frames, Bytes atomic.Uint64
	Queries       atomic.Uint64 // DNS messages with QR=0 (UDP/TCP port 53 or 5353, unfragmented)
	Responses     atomic.Uint64 // QR=1
	VLAN          atomic.Uint64 // frames whose outer tag the NIC had stripped (restored)
	OverSnaplen   atomic.Uint64 // frames cut by the snaplen (the pipeline drops them as truncated)
	Waits         atomic.Uint64 // times the reader waited for the merge (the ring buffered meanwhile)
	KPackets      atomic.Uint64 // kernel PACKET_STATISTICS, read every second
	KDrops        atomic.Uint64
	KFreezes      atomic.Uint64
	// FirstFrame and LastFrame are the ring timestamps (ns since the epoch, the kernel's
	// CLOCK_REALTIME at arrival) of the first frame this capture read and of the latest; 0
	// before the first. Read beside the box's clock, they place a capture gap (an update's
	// reboot, a restart) from outside, which counters alone cannot: frames that a port's
	// link partner held while the port was down arrive together and count as captured.
	FirstFrame, LastFrame atomic.Int64
	lastFrameWall         atomic.Int64
}

// Stats of a live run.
type Stats struct {
	Ports      []*PortStats
	OutOfOrder atomic.Uint64 // frames released earlier than one already released (late beyond the valve)
	Forced     atomic.Uint64 // frames the valve released before every port had caught up
	// SlackRaised counts frames that surfaced from a ring later than Slack after their stamp;
	// Slack is the merge's slack now (ns), widened by each.
	SlackRaised atomic.Uint64
	Slack       atomic.Int64
	Held        atomic.Int64 // frames waiting in the merge now
}

// String is the live part of the stats line: one group per port.
func (s *Stats) String() string {
	var b strings.Builder
	for i, p := range s.Ports {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "port=%s frames=%d bytes=%d dns_queries=%d dns_responses=%d vlan_restored=%d over_snaplen=%d reader_waits=%d kernel_packets=%d kernel_drops=%d kernel_freezes=%d",
			p.Name, p.Frames.Load(), p.Bytes.Load(), p.Queries.Load(), p.Responses.Load(), p.VLAN.Load(), p.OverSnaplen.Load(),
			p.Waits.Load(), p.KPackets.Load(), p.KDrops.Load(), p.KFreezes.Load())
	}
	fmt.Fprintf(&b, " merge_held=%d merge_forced=%d merge_out_of_order=%d merge_slack_raised=%d merge_slack_ms=%d",
		s.Held.Load(), s.Forced.Load(), s.OutOfOrder.Load(), s.SlackRaised.Load(), s.Slack.Load()/1e6)
	return b.String()
}

// Sink is what the merged frames feed: a *pipeline.Pipeline, or a *pipeline.Sharded spreading
// them over cores (which also has Sync, called after each release so no frame waits for a batch
// to fill).
type Sink interface {
	Frame(link decode.LinkType, ts int64, frame []byte, wireLen int)
	Idle(ts int64)
}

// Run captures until ctx ends, feeding p from the calling goroutine (p's owner), and returns
// after every reader has stopped. The caller flushes p afterwards. stats may be read
// concurrently. statsLine is called every cfg.StatsEvery from the pipeline goroutine.
func Run(ctx context.Context, cfg Config, ports []Port, p Sink, stats *Stats, statsLine func()) error {
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if cfg.Silence == 0 {
		cfg.Silence = 60 * time.Second
	}
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	stats.Ports = make([]*PortStats, len(ports))
	// Room for every batch. Polled reports are sent without waiting and dropped when the merge
	// lags this far behind; the next report supersedes a lost one.
	in := make(chan msg, len(ports)*batchesPer)
	free := make([]chan *batch, len(ports))
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	errs := make(chan error, len(ports))
	for i, pt := range ports {
		stats.Ports[i] = &PortStats{Name: pt.Name}
		free[i] = make(chan *batch, batchesPer)
		for j := 0; j < batchesPer; j++ {
			free[i] <- &batch{port: i, frames: make([]frameRef, 0, batchFrames), data: make([]byte, 0, batchBytes)}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := read(rctx, cfg, pt.Src, i, stats.Ports[i], free[i], in); err != nil {
				errs <- fmt.Errorf("port %s: %w", pt.Name, err)
				stop()
			}
		}()
	}
	m := newMerge(len(ports), cfg.Window, cfg.Slack, p, stats, func(b *batch) { free[b.port] <- b })
	w := newWatch(cfg, stats, logf)
	tick := time.NewTicker(mergeTick)
	defer tick.Stop()
	lastIdle, lastStats, lastKernel := cfg.now(), cfg.now(), time.Time{}
	readersDone := make(chan struct{})
	go func() { wg.Wait(); close(readersDone) }()
loop:
	for {
		select {
		case x := <-in:
			m.take(x)
		case <-tick.C:
		case <-readersDone:
			break loop
		}
		now := cfg.now()
		m.release(now, false)
		if now.Sub(lastKernel) >= time.Second {
			lastKernel = now
			for i, pt := range ports {
				if pk, d, f, err := pt.Src.KernelStats(); err == nil {
					ps := stats.Ports[i]
					ps.KPackets.Store(pk)
					ps.KDrops.Store(d)
					ps.KFreezes.Store(f)
				}
			}
			w.check(now)
		}
		if now.Sub(lastIdle) >= idleEvery && m.held == 0 {
			// Quiet inputs: let pipeline time follow the ports' watermarks, so pending queries
			// still expire; nothing older than them can come.
			lastIdle = now
			if h := m.horizon(); h > 0 {
				p.Idle(h)
			}
		}
		if cfg.StatsEvery > 0 && statsLine != nil && now.Sub(lastStats) >= cfg.StatsEvery {
			lastStats = now
			statsLine()
		}
	}
	// Readers have stopped: everything they delivered is released in order.
	for {
		select {
		case x := <-in:
			m.take(x)
			continue
		default:
		}
		break
	}
	m.release(cfg.now(), true)
	for i, pt := range ports {
		if pk, d, f, err := pt.Src.KernelStats(); err == nil {
			stats.Ports[i].KPackets.Store(pk)
			stats.Ports[i].KDrops.Store(d)
			stats.Ports[i].KFreezes.Store(f)
		}
	}
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// read is one port's reader goroutine: ring → batches. It blocks when the merge holds every
// batch; the ring then buffers, and what it cannot hold the kernel drops and counts
// (PACKET_STATISTICS), the one place where load is shed.
func read(ctx context.Context, cfg Config, src Source, port int, ps *PortStats, free <-chan *batch, out chan<- msg) error {
	var b *batch
	var first int64
	var pk decode.Packet
	get := func() bool {
		select {
		case b = <-free:
			return true
		default:
		}
		ps.Waits.Add(1)
		select {
		case b = <-free:
			return true
		case <-ctx.Done():
			return false
		}
	}
	send := func(polled int64) bool {
		if b == nil || len(b.frames) == 0 {
			if polled != 0 {
				// Without waiting: a reader must not stall on a lagging merge for a report
				// that the next one supersedes.
				select {
				case out <- msg{port: port, polled: polled}:
				default:
				}
			}
			return true
		}
		select {
		case out <- msg{port: port, b: b, polled: polled}:
			b = nil
			return true
		case <-ctx.Done():
			return false
		}
	}
	defer func() {
		// The merge keeps receiving until every reader has returned, so this cannot block for
		// ever, and the frames read before a SIGTERM are not lost.
		if b != nil && len(b.frames) > 0 {
			out <- msg{port: port, b: b}
		}
	}()
	// before is a time taken before the current Read began. A Read that times out found the
	// ring's next block still the kernel's at some moment after before, so every block
	// retired by then has been read: nothing older than before − Slack can still come. (Ring
	// timestamps are the kernel's CLOCK_REALTIME, the clock time.Now reads.)
	before := time.Now().UnixNano()
	for ctx.Err() == nil {
		frame, ts, wireLen, vlan, err := src.Read()
		nowNs := time.Now().UnixNano()
		if err != nil {
			if err == cfg.TimeoutErr {
				if !send(before) {
					return nil
				}
				before = nowNs
				continue
			}
			return err
		}
		before = nowNs
		ps.Frames.Add(1)
		ps.Bytes.Add(uint64(wireLen))
		ps.lastFrameWall.Store(nowNs)
		if ps.FirstFrame.Load() == 0 {
			ps.FirstFrame.Store(ts)
		}
		ps.LastFrame.Store(ts)
		if vlan {
			ps.VLAN.Add(1)
		}
		if wireLen > len(frame) {
			ps.OverSnaplen.Add(1)
		}
		if decode.Decode(decode.LinkEthernet, frame, &pk) == decode.OK && !pk.Frag {
			if classify(&pk, ps) && pk.DstPort == 53 {
				cfg.Candidates.Query(ts, pk.Src)
			}
		}
		if b != nil && (len(b.frames) == cap(b.frames) || len(b.data)+len(frame) > cap(b.data)) {
			if !send(0) {
				return nil
			}
		}
		if b == nil {
			if !get() {
				return nil
			}
			b.frames, b.data, b.next = b.frames[:0], b.data[:0], 0
			first = nowNs
		}
		if len(frame) > cap(b.data) {
			frame = frame[:cap(b.data)] // cannot happen with snaplen ≤ batchBytes; never overflow
		}
		b.frames = append(b.frames, frameRef{off: int32(len(b.data)), n: int32(len(frame)), wireLen: int32(wireLen), ts: ts})
		b.data = append(b.data, frame...)
		if nowNs-first > flushAfter {
			if !send(0) {
				return nil
			}
		}
	}
	return nil
}

// classify counts DNS queries and responses per port, for the miscabling warnings, and reports
// whether pk is a query.
func classify(pk *decode.Packet, ps *PortStats) bool {
	var msg []byte
	switch pk.Proto {
	case decode.ProtoUDP:
		if !dnsPort(pk.SrcPort) && !dnsPort(pk.DstPort) {
			return false
		}
		msg = pk.Payload
	case decode.ProtoTCP:
		if pk.SrcPort != 53 && pk.DstPort != 53 {
			return false
		}
		// Only segments that start with a message (length prefix, then the header) are counted;
		// that is enough to tell the directions apart.
		if len(pk.Payload) < 2+12 {
			return false
		}
		msg = pk.Payload[2:]
	default:
		return false
	}
	if len(msg) < 12 {
		return false
	}
	if msg[2]&0x80 != 0 {
		ps.Responses.Add(1)
		return false
	}
	ps.Queries.Add(1)
	return true
}

func dnsPort(p uint16) bool { return p == 53 || p == 5353 }

// watch warns about a tap that looks miscabled: a silent port while another carries traffic, or
// DNS seen in only one direction across all ports.
type watch struct {
	cfg      Config
	stats    *Stats
	logf     func(string, ...any)
	start    time.Time
	silent   []bool
	winStart time.Time
	q0, r0   []uint64
	oneWay   string
}

func newWatch(cfg Config, stats *Stats, logf func(string, ...any)) *watch {
	n := len(stats.Ports)
	now := cfg.now()
	return &watch{cfg: cfg, stats: stats, logf: logf, start: now, silent: make([]bool, n), winStart: now, q0: make([]uint64, n), r0: make([]uint64, n)}
}

func (w *watch) check(now time.Time) {
	ps := w.stats.Ports
	last := func(i int) time.Time {
		if t := ps[i].lastFrameWall.Load(); t != 0 {
			return time.Unix(0, t)
		}
		return w.start
	}
	for i := range ps {
		quiet := now.Sub(last(i)) >= w.cfg.Silence
		busy := false
		for j := range ps {
			if j != i && ps[j].lastFrameWall.Load() != 0 && now.Sub(last(j)) < w.cfg.Silence {
				busy = true
			}
		}
		if quiet && busy && !w.silent[i] {
			w.logf("warning: port %s has been silent for %v while other ports carry traffic: check the tap cabling", ps[i].Name, w.cfg.Silence)
		}
		if !quiet && w.silent[i] {
			w.logf("port %s carries traffic again", ps[i].Name)
		}
		w.silent[i] = quiet && busy
	}
	if now.Sub(w.winStart) < w.cfg.Silence {
		return
	}
	var q, r uint64
	var qPorts, rPorts []string
	for i, p := range ps {
		dq, dr := p.Queries.Load()-w.q0[i], p.Responses.Load()-w.r0[i]
		w.q0[i], w.r0[i] = p.Queries.Load(), p.Responses.Load()
		q, r = q+dq, r+dr
		if dq > 0 {
			qPorts = append(qPorts, p.Name)
		}
		if dr > 0 {
			rPorts = append(rPorts, p.Name)
		}
	}
	w.winStart = now
	state := ""
	switch {
	case q >= 10 && r == 0:
		state = fmt.Sprintf("only DNS queries seen in the last %v (on %s), no responses: the port carrying the resolver's inbound direction is missing or miscabled", w.cfg.Silence, strings.Join(qPorts, ","))
	case r >= 10 && q == 0:
		state = fmt.Sprintf("only DNS responses seen in the last %v (on %s), no queries: the port carrying the resolver's outbound direction is missing or miscabled", w.cfg.Silence, strings.Join(rPorts, ","))
	}
	if state != "" && state != w.oneWay {
		w.logf("warning: %s", state)
	}
	w.oneWay = state
}

// Package live runs the sensor on capture ports: one reader goroutine per port (TPACKET_V3
// ring) copies frames into batches; the pipeline's goroutine merges the ports' batches in ring
// timestamp order and feeds the single pipeline.
//
// Why a merge: on a two-port tap the query arrives on port A and its response on port B, and the
// two rings are read independently. TPACKET_V3 hands a block to user space only when it is full
// or BlockTimeout after its first frame, so a response can be read before its query (median round
// trip to a nearby authority: 45 µs, far below a block timeout). A frame is released to the
// pipeline when every port has delivered something later (nothing earlier can still come from
// there), or when it is older than Window by the wall clock (the other port is quiet). Window must
// cover BlockTimeout plus scheduling delay; ci/netns-live measures the unsolicited responses the
// merge prevents.
package live

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sie-europe/dnssensor/sensor/decode"
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
	Window     time.Duration // merge window; 0 hands frames over in arrival order (no merge)
	TimeoutErr error         // the sources' "nothing arrived" error
	Logf       func(format string, args ...any)
	// StatsEvery prints Stats through Logf; 0 only at the end (by the caller).
	StatsEvery time.Duration
	// Silence is how long a port may be quiet while another carries traffic before a warning.
	Silence time.Duration
	now     func() time.Time // wall clock, for the window and warnings; a seam for tests
}

const (
	batchFrames = 512
	batchBytes  = 512 << 10
	batchesPer  = 32  // per port: the copy buffers between a ring and the merge
	flushAfter  = 1e6 // ns: a partly filled batch is handed over after this
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
	next   int // merge read position
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
	lastFrameWall atomic.Int64
}

// Stats of a live run.
type Stats struct {
	Ports      []*PortStats
	OutOfOrder atomic.Uint64 // frames released earlier than one already released (late beyond the window)
	Held       atomic.Int64  // frames waiting in the merge now
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
	fmt.Fprintf(&b, " merge_held=%d merge_out_of_order=%d", s.Held.Load(), s.OutOfOrder.Load())
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
	in := make(chan *batch, len(ports)*batchesPer)
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
	m := &merger{cfg: cfg, p: p, stats: stats, queues: make([][]*batch, len(ports)), free: free}
	w := newWatch(cfg, stats, logf)
	tick := time.NewTicker(time.Millisecond * 5)
	defer tick.Stop()
	lastIdle, lastStats, lastKernel := cfg.now(), cfg.now(), time.Time{}
	readersDone := make(chan struct{})
	go func() { wg.Wait(); close(readersDone) }()
loop:
	for {
		select {
		case b := <-in:
			m.add(b)
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
			// Quiet inputs: let pipeline time follow the clock, minus the window, so pending
			// queries still expire. A frame held less than the window is never overtaken.
			lastIdle = now
			p.Idle(now.Add(-cfg.Window).UnixNano())
		}
		if cfg.StatsEvery > 0 && statsLine != nil && now.Sub(lastStats) >= cfg.StatsEvery {
			lastStats = now
			statsLine()
		}
	}
	// Readers have stopped: everything they delivered is released in order.
	for {
		select {
		case b := <-in:
			m.add(b)
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
func read(ctx context.Context, cfg Config, src Source, port int, ps *PortStats, free <-chan *batch, out chan<- *batch) error {
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
	send := func() bool {
		if b == nil || len(b.frames) == 0 {
			return true
		}
		select {
		case out <- b:
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
			out <- b
		}
	}()
	for ctx.Err() == nil {
		frame, ts, wireLen, vlan, err := src.Read()
		nowNs := time.Now().UnixNano()
		if err != nil {
			if err == cfg.TimeoutErr {
				if !send() {
					return nil
				}
				continue
			}
			return err
		}
		ps.Frames.Add(1)
		ps.Bytes.Add(uint64(wireLen))
		ps.lastFrameWall.Store(nowNs)
		if vlan {
			ps.VLAN.Add(1)
		}
		if wireLen > len(frame) {
			ps.OverSnaplen.Add(1)
		}
		if decode.Decode(decode.LinkEthernet, frame, &pk) == decode.OK && !pk.Frag {
			classify(&pk, ps)
		}
		if b != nil && (len(b.frames) == cap(b.frames) || len(b.data)+len(frame) > cap(b.data)) {
			if !send() {
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
			if !send() {
				return nil
			}
		}
	}
	return nil
}

// classify counts DNS queries and responses per port, for the miscabling warnings.
func classify(pk *decode.Packet, ps *PortStats) {
	var msg []byte
	switch pk.Proto {
	case decode.ProtoUDP:
		if !dnsPort(pk.SrcPort) && !dnsPort(pk.DstPort) {
			return
		}
		msg = pk.Payload
	case decode.ProtoTCP:
		if pk.SrcPort != 53 && pk.DstPort != 53 {
			return
		}
		// Only segments that start with a message (length prefix, then the header) are counted;
		// that is enough to tell the directions apart.
		if len(pk.Payload) < 2+12 {
			return
		}
		msg = pk.Payload[2:]
	default:
		return
	}
	if len(msg) < 12 {
		return
	}
	if msg[2]&0x80 != 0 {
		ps.Responses.Add(1)
	} else {
		ps.Queries.Add(1)
	}
}

func dnsPort(p uint16) bool { return p == 53 || p == 5353 }

// merger orders the ports' frames by ring timestamp; it runs on the pipeline's goroutine.
type merger struct {
	cfg    Config
	p      Sink
	stats  *Stats
	queues [][]*batch
	free   []chan *batch
	held   int
	last   int64
}

func (m *merger) add(b *batch) {
	m.queues[b.port] = append(m.queues[b.port], b)
	m.held += len(b.frames)
	m.stats.Held.Store(int64(m.held))
}

// release hands over every frame that can no longer be overtaken; all releases everything.
func (m *merger) release(now time.Time, all bool) {
	limit := now.Add(-m.cfg.Window).UnixNano()
	for m.held > 0 {
		best, bestTS, allHave := -1, int64(0), true
		for i, q := range m.queues {
			if len(q) == 0 {
				allHave = false
				continue
			}
			ts := q[0].frames[q[0].next].ts
			if best < 0 || ts < bestTS {
				best, bestTS = i, ts
			}
		}
		if !all && !allHave && m.cfg.Window > 0 && bestTS > limit {
			break
		}
		b := m.queues[best][0]
		f := b.frames[b.next]
		if f.ts < m.last {
			m.stats.OutOfOrder.Add(1)
		} else {
			m.last = f.ts
		}
		m.p.Frame(decode.LinkEthernet, f.ts, b.data[f.off:f.off+f.n], int(f.wireLen))
		m.held--
		b.next++
		if b.next == len(b.frames) {
			m.queues[best] = m.queues[best][1:]
			m.free[best] <- b
		}
	}
	m.stats.Held.Store(int64(m.held))
	if s, ok := m.p.(interface{ Sync() }); ok {
		s.Sync()
	}
}

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

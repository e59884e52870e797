package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/sie-europe/dnssensor/internal/procprio"
	"github.com/sie-europe/dnssensor/sensor/internal/dnstap"
	"github.com/sie-europe/dnssensor/sensor/internal/live"
	"github.com/sie-europe/dnssensor/sensor/internal/pipeline"
	"github.com/sie-europe/dnssensor/sensor/internal/source"
)

// liveOptions are the long-running inputs: capture ports and dnstap.
type liveOptions struct {
	Ifaces       []string
	Snaplen      int
	RingMiB      int
	BlockTimeout time.Duration
	MergeWindow  time.Duration
	Dnstap       string
	DnstapFile   string
	DnstapAllow  []netip.Prefix // writers a dnstap TCP listener takes; nil: any (loopback only)

	ifaces      string
	dnstapAllow string
	extra       func() string // the live/dnstap part of the final stats line

	// When the capture rings were all open, and when the first was closed again: a reload's
	// capture gap runs from one run's close to the next run's open (reload.go).
	openedAt, closedAt time.Time
	onOpen             func() // called once the rings are open
}

func (l *liveOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&l.ifaces, "i", "", "capture live on these interfaces (`IF[,IF...]`, e.g. both ports of a tap); AF_PACKET TPACKET_V3, promiscuous")
	fs.IntVar(&l.Snaplen, "snaplen", 65535, "capture at most this many `octets` per frame (covers jumbo frames; longer frames are counted)")
	fs.IntVar(&l.RingMiB, "ring-mib", 32, "ring memory per interface in `MiB`")
	fs.DurationVar(&l.BlockTimeout, "block-timeout", 10*time.Millisecond, "TPACKET_V3 block retire timeout: a frame waits in the kernel up to about twice this before it can be read")
	fs.DurationVar(&l.MergeWindow, "merge-window", live.DefaultWindow, "frames of all interfaces are released in capture-time order once every interface has caught up; a frame waits at most this long (while the process runs) for a lagging interface, then goes out counted as merge_forced (0: arrival order)")
	fs.StringVar(&l.Dnstap, "dnstap", "", "accept dnstap writers on `SOCKET` (unix:/path or tcp:host:port); -resolver optional")
	fs.StringVar(&l.dnstapAllow, "dnstap-allow", "", "dnstap writers allowed to connect to a tcp: listener (`LIST` of addresses or CIDRs); required unless it listens on loopback")
	fs.StringVar(&l.DnstapFile, "dnstap-file", "", "read a recorded dnstap `FILE` (Frame Streams); -resolver optional")
}

func (l *liveOptions) any() bool { return len(l.Ifaces) > 0 || l.Dnstap != "" || l.DnstapFile != "" }

// finish checks the input flags against each other; called before the pipeline config is
// validated, since dnstap mode may run without -resolver.
func (l *liveOptions) finish(o *Options) error {
	l.Ifaces = splitList(l.ifaces)
	n := 0
	for _, set := range []bool{len(o.Read) > 0, len(l.Ifaces) > 0, l.Dnstap != "", l.DnstapFile != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		return errors.New("-r, -i, -dnstap and -dnstap-file: give only one kind of input")
	}
	if l.Snaplen < 256 || l.Snaplen > 262144 {
		return fmt.Errorf("-snaplen: %d is outside 256..262144", l.Snaplen)
	}
	if l.RingMiB < 1 || l.RingMiB > 4096 {
		return fmt.Errorf("-ring-mib: %d is outside 1..4096", l.RingMiB)
	}
	if l.BlockTimeout < time.Millisecond {
		return fmt.Errorf("-block-timeout: %v is shorter than the kernel's 1 ms granularity", l.BlockTimeout)
	}
	if least := source.RetireDelay(l.BlockTimeout) + l.BlockTimeout; len(l.Ifaces) > 0 && l.MergeWindow > 0 && l.MergeWindow < least {
		// Below this the valve would open in normal operation: an idle port reports an empty
		// ring every -block-timeout, covering frames up to the ring's retire delay before.
		return fmt.Errorf("-merge-window: %v must be at least %v (the ring's retire delay plus a poll, from -block-timeout %v), or 0", l.MergeWindow, least, l.BlockTimeout)
	}
	if err := l.checkDnstapAllow(); err != nil {
		return err
	}
	if (l.Dnstap != "" || l.DnstapFile != "") && o.Workers > 1 {
		return errors.New("-workers: dnstap input runs one pipeline (a resolver's dnstap rate needs no more)")
	}
	if l.Dnstap != "" || l.DnstapFile != "" {
		o.Pipeline.DirectionKnown = true
	}
	if (l.Dnstap != "" || l.DnstapFile != "") && len(o.Pipeline.Resolvers) == 0 && len(o.Pipeline.Authorities) == 0 {
		// The dnstap decoder keeps only the resolver's own messages, so every initiator the
		// pipeline sees is a resolver.
		o.Pipeline.Resolvers = dnstap.AllAddresses
		o.Pipeline.AllowWideResolver = true
		o.dnstapAll = true
	}
	return nil
}

// runLive feeds p from the live inputs until ctx ends (SIGTERM) or a dnstap file is read.
func runLive(ctx context.Context, o *Options, p frameSink, single *pipeline.Pipeline, stderr io.Writer) error {
	logf := func(format string, args ...any) { fmt.Fprintf(stderr, "sensord: "+format+"\n", args...) }
	if o.Live.DnstapFile != "" || o.Live.Dnstap != "" {
		return runDnstap(ctx, o, single, stderr, logf)
	}
	l := &o.Live
	filter, err := source.ResolverFilter(o.filterPrefixes(), l.Snaplen)
	if err != nil {
		return fmt.Errorf("-resolver: %v", err)
	}
	block, blocks := ringBlocks(l.Snaplen, l.RingMiB)
	var ports []live.Port
	var rings []*source.Ring
	defer func() {
		l.closedAt = time.Now()
		for _, r := range rings {
			r.Close()
		}
	}()
	for _, ifc := range l.Ifaces {
		if err := waitForPort(ctx, ifc, &o.Health, logf); err != nil {
			return nil // stopped while waiting: nothing was captured, nothing is lost
		}
		if mtu := source.IfaceMTU(ifc); mtu+18 > l.Snaplen {
			logf("warning: %s: MTU %d is longer than -snaplen %d; longer frames are counted as over_snaplen and dropped", ifc, mtu, l.Snaplen)
		}
		if gro, lro, err := source.Offloads(ifc); err != nil {
			logf("%s: cannot read GRO/LRO state: %v", ifc, err)
		} else if gro || lro {
			logf("warning: %s: GRO=%v LRO=%v: merged super-frames are not what crossed the wire; turn them off (ethtool -K %s gro off lro off)", ifc, gro, lro, ifc)
		}
		r, err := source.OpenRing(source.RingConfig{Iface: ifc, Snaplen: l.Snaplen, BlockSize: block,
			NumBlocks: blocks, BlockTimeout: l.BlockTimeout, Filter: filter})
		if err != nil {
			return fmt.Errorf("-i: %v", err)
		}
		rings = append(rings, r)
		ports = append(ports, live.Port{Name: ifc, Src: r})
	}
	l.openedAt = time.Now()
	if l.onOpen != nil {
		l.onOpen()
	}
	logf("capturing on %s (snaplen %d, ring %d MiB each, merge window %v)", strings.Join(l.Ifaces, ","), l.Snaplen, l.RingMiB, l.MergeWindow)
	if err := procprio.EndBoost(); err != nil { // the capture is open: the start's boost ends
		logf("%v", err)
	}
	st := &live.Stats{}
	o.Health.liveStats = st
	l.extra = func() string { return " " + st.String() }
	statsLine := func() {
		s := p.Stats()
		fmt.Fprintf(stderr, "sensord: %s %s\n", s.String(), st.String())
	}
	return live.Run(ctx, live.Config{Window: l.MergeWindow, Slack: source.RetireDelay(l.BlockTimeout), TimeoutErr: source.ErrRingTimeout, Logf: logf, StatsEvery: o.StatsEvery,
		Candidates: o.Health.cands.Load()},
		ports, p, st, statsLine)
}

// ringBlocks divides a ring of ringMiB into blocks. A block must hold the longest frame (snaplen
// plus the ring's headers), and no more: at low rates the retire timer hands over a block every
// -block-timeout however little it holds, so the number of blocks, not the memory, is how long a
// paused or starved sensor can fall behind before the kernel drops (the default 128 KiB blocks:
// 256 in 32 MiB, 2.5 s at 10 ms; 1 MiB blocks held 320 ms).
func ringBlocks(snaplen, ringMiB int) (size, n int) {
	size = 64 << 10
	for size < snaplen+4096 {
		size <<= 1
	}
	return size, max(ringMiB<<20/size, 2)
}

// filterPrefixes are the addresses the kernel filter lets through: the resolvers (or, in
// authority mode, the authorities).
func (o *Options) filterPrefixes() []netip.Prefix {
	if len(o.Pipeline.Authorities) > 0 {
		return o.Pipeline.Authorities
	}
	return o.Pipeline.Resolvers
}

func runDnstap(ctx context.Context, o *Options, p *pipeline.Pipeline, stderr io.Writer, logf func(string, ...any)) error {
	st := &dnstap.Stats{}
	o.Health.dnstap.Store(st)
	o.Live.extra = func() string { return " " + st.String() }
	var resolvers = o.Pipeline.Resolvers
	if o.dnstapAll {
		resolvers = nil
	}
	refused := 0
	feed := func(e dnstap.Event) {
		if !p.Message(e.Time, e.TCP, e.Src, e.Dst, e.Msg) {
			refused++
			st.Malformed.Add(1)
		}
	}
	if o.Live.DnstapFile != "" {
		if err := dnstap.ReadFile(o.Live.DnstapFile, resolvers, st, feed); err != nil {
			return fmt.Errorf("-dnstap-file %s: %v", o.Live.DnstapFile, err)
		}
		return nil
	}
	ln, err := dnstap.Listen(o.Live.Dnstap)
	if err != nil {
		return fmt.Errorf("-dnstap: %v", err)
	}
	out := make(chan []dnstap.Event, 4096)
	srv := &dnstap.Server{Resolvers: resolvers, Allow: o.Live.DnstapAllow, Stats: st, Out: out, Logf: logf}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, ln) }()
	logf("accepting dnstap writers on %s", o.Live.Dnstap)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	statsLine := func() {
		s := p.Stats()
		fmt.Fprintf(stderr, "sensord: %s %s\n", s.String(), st.String())
	}
	publish := func() { o.Health.publish(p) }
	return dnstapLoop(out, done, tick.C, time.Now, p, feed, o.Pipeline.QueryTimeout, o.StatsEvery, statsLine, publish)
}

// dnstapLoop feeds the pipeline from the server's batches until the server ends.
//
// Queries expire by the stream's own time, as in a file: a writer's events can arrive late (a
// delayed or buffered stream) or carry a clock behind the sensor's, and expiring them against
// the sensor's clock turned every transaction into an unanswered query plus an unsolicited
// response. The sensor's clock only moves the stream's time on once the stream has been silent
// for longer than the query timeout, so the last queries of a quiet resolver still come out.
func dnstapLoop(out <-chan []dnstap.Event, done <-chan error, tick <-chan time.Time, now func() time.Time,
	p *pipeline.Pipeline, feed func(dnstap.Event), timeout, statsEvery time.Duration, statsLine, publish func()) error {
	var lastStats time.Time
	var streamTime int64   // the latest event time seen
	var streamAt time.Time // when, by the sensor's clock, the stream last moved on
	for {
		select {
		case b := <-out:
			for _, e := range b {
				feed(e)
				if e.Time > streamTime {
					streamTime, streamAt = e.Time, now()
				}
			}
		case <-tick:
			if silent := now().Sub(streamAt); !streamAt.IsZero() && silent > timeout {
				p.Idle(streamTime + int64(silent))
			}
			if publish != nil {
				publish()
			}
		case err := <-done:
			// The server ends only with ctx or a listener failure; drain what it delivered.
			for {
				select {
				case b := <-out:
					for _, e := range b {
						feed(e)
					}
					continue
				default:
				}
				break
			}
			return err
		}
		if statsEvery > 0 && time.Since(lastStats) >= statsEvery {
			lastStats = time.Now()
			statsLine()
		}
	}
}

// checkDnstapAllow refuses a dnstap TCP listener that anybody on the network could write
// records into: off loopback, the writers must be listed.
func (l *liveOptions) checkDnstapAllow() error {
	var err error
	if l.DnstapAllow, err = parsePrefixes(l.dnstapAllow, true); err != nil {
		return fmt.Errorf("-dnstap-allow: %v", err)
	}
	if l.dnstapAllow != "" && len(l.DnstapAllow) == 0 {
		return fmt.Errorf("-dnstap-allow: the list is empty")
	}
	network, addr, _ := strings.Cut(l.Dnstap, ":")
	if network != "tcp" {
		if l.DnstapAllow != nil {
			return fmt.Errorf("-dnstap-allow: applies only to -dnstap tcp:host:port (a unix socket's directory is its access control)")
		}
		return nil
	}
	if l.DnstapAllow != nil {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-dnstap: %q: %v", l.Dnstap, err)
	}
	if a, err := netip.ParseAddr(host); (err == nil && a.IsLoopback()) || host == "localhost" {
		return nil
	}
	return fmt.Errorf("-dnstap: %s listens beyond loopback, where anybody could write records; give -dnstap-allow with the resolvers' addresses (e.g. -dnstap-allow 192.0.2.53,2001:db8::53) or listen on 127.0.0.1", l.Dnstap)
}

// portPoll is how often a missing capture port is looked for.
const portPoll = 250 * time.Millisecond

// waitForPort returns once the capture port ifc exists, or ctx's error. A port that did not exist
// (a USB NIC still being enumerated, a driver loaded late, a name typed wrong, a QEMU box started
// without its tap NIC) made sensord exit, and gokrazy restarted it every second: its health socket
// was gone most of the time, so the status page and the update's health gate saw "not running"
// instead of the reason. Now sensord waits, answering with a failing capture check that names
// the port.
func waitForPort(ctx context.Context, ifc string, h *healthOptions, logf func(string, ...any)) error {
	_, err := net.InterfaceByName(ifc)
	if err == nil {
		return nil
	}
	logf("-i: %s: %v; waiting for it (capture starts when it appears)", ifc, err)
	msg := fmt.Sprintf("waiting for capture port %s: %v", ifc, err)
	h.waiting.Store(&msg)
	defer h.waiting.Store(nil)
	start := time.Now()
	t := time.NewTicker(portPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if _, err := net.InterfaceByName(ifc); err == nil {
			logf("-i: %s appeared after %v", ifc, time.Since(start).Round(time.Millisecond))
			return nil
		}
	}
}

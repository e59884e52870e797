// Package pipeline is the sensor's core: decoded packets in, paired, filtered and scrubbed
// base:dnsqr records out. It reproduces the C reference (nmsg 1.3.3 dnsqr.c) pairing and record
// shape and fixes its known defects (see README, "Deviations from the C reference").
//
// A Pipeline is owned by one goroutine. Time only advances with packet timestamps, so a replay of
// a capture gives the same records every time.
package pipeline

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/sie-europe/dnssensor/internal/pktbuild"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/budget"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
	"github.com/sie-europe/dnssensor/sensor/internal/defrag"
	"github.com/sie-europe/dnssensor/sensor/internal/dnswire"
	"github.com/sie-europe/dnssensor/sensor/internal/privacy"
	"github.com/sie-europe/dnssensor/sensor/internal/tcpdns"
)

// Config is the pipeline's behaviour; it maps to the C reference's DNSQR_* environment.
type Config struct {
	Resolvers    []netip.Prefix // DNSQR_RES_ADDRS: transactions initiated by these are kept
	Authorities  []netip.Prefix // DNSQR_AUTH_ADDRS: authority mode, transactions answered by these
	ZeroResolver bool           // DNSQR_ZERO_RESOLVER_ADDRESS
	RD           int            // DNSQR_CAPTURE_RD: 0 or 1 keeps only that RD bit, -1 keeps all
	QR           QRMode         // DNSQR_CAPTURE_QR: pair (default), or emit queries or responses unpaired
	QnameExclude []string       // DNSQR_FILTER_QNAMES_EXCLUDE: names (and below) to drop
	QnameInclude []string       // DNSQR_FILTER_QNAMES_INCLUDE: exceptions to the exclude list
	QueryTimeout time.Duration  // DNSQR_QUERY_TIMEOUT (default 60 s, whole seconds as in C)
	StateMax     int            // DNSQR_STATE_TABLE_MAX (default 131072)
	// Unsolicited keeps responses that match no query as UDP_UNSOLICITED_RESPONSE records (TCP
	// records without a query), as the C reference does. Off, they are dropped and counted: a
	// client that answers from port 53 to a resolver's ephemeral port looks exactly like a late
	// authority, so a passive sensor cannot keep one without risking the other.
	Unsolicited bool
	// Hold keeps a response that matches no pending query for this much packet time, so a query
	// that arrives after its response (two tap ports read independently) still pairs. 0: decide
	// at once, in the C reference's record order.
	Hold time.Duration
	// HoldMaxBytes bounds the octets of held responses, and separately those of the records
	// waiting behind them for the C reference's order (default 4 MiB each); beyond it the oldest
	// held response is decided early, counted. A larger response is decided at once.
	HoldMaxBytes int
	// MDNS keeps port 5353 traffic (mDNS), as the C reference does. It is not a resolver's
	// cache-miss traffic and carries hosts' own names, so it is dropped and counted by default.
	MDNS bool
	// AllowWideResolver accepts resolver (or authority) prefixes shorter than /16 (IPv4) or /32
	// (IPv6); such a prefix almost always takes clients for resolvers.
	AllowWideResolver bool
	// DirectionKnown is set for dnstap input: the resolver itself labels its upstream messages
	// (RESOLVER_*; CLIENT_* never reach the pipeline), so the resolver-side port need not prove
	// which side is the client. unbound 1.17 logs port 53 on both sides of some IPv6
	// transactions, and the port rule would refuse those as client traffic.
	DirectionKnown bool
	Defrag         defrag.Config
	TCP            tcpdns.Config
	MaxBytes       int // pair table, fragments and TCP buffers together, in octets (0: unbounded); budget.go
}

// Validate reports the first configuration error, naming the setting.
func (c *Config) Validate() error {
	if len(c.Resolvers) == 0 && len(c.Authorities) == 0 {
		return fmt.Errorf("resolver: no resolver addresses configured; set -resolver (or -authoritative for authority mode)")
	}
	if c.RD < -1 || c.RD > 1 {
		return fmt.Errorf("rd: must be 0, 1 or any, got %d", c.RD)
	}
	if c.QR > QRResponsesOnly {
		return fmt.Errorf("qr: must be 0, 1 or unset, got mode %d", c.QR)
	}
	if c.QueryTimeout < 0 {
		return fmt.Errorf("query-timeout: must be positive, got %v", c.QueryTimeout)
	}
	if c.StateMax < 0 {
		return fmt.Errorf("state-max: must be positive, got %d", c.StateMax)
	}
	if c.Hold < 0 || c.Hold > 10*time.Second {
		return fmt.Errorf("unsolicited-hold: %v outside [0, 10s]", c.Hold)
	}
	if c.HoldMaxBytes < 0 {
		return fmt.Errorf("unsolicited-hold-bytes: must be positive, got %d", c.HoldMaxBytes)
	}
	if !c.AllowWideResolver {
		for _, set := range []struct {
			name string
			ps   []netip.Prefix
		}{{"resolver", c.Resolvers}, {"authoritative", c.Authorities}} {
			for _, pr := range set.ps {
				if err := CheckWidth(pr); err != nil {
					return fmt.Errorf("%s: %v", set.name, err)
				}
			}
		}
	}
	for _, n := range append(append([]string(nil), c.QnameExclude...), c.QnameInclude...) {
		if _, err := wireName(n); err != nil {
			return fmt.Errorf("qname-exclude/qname-include: %q: %v", n, err)
		}
	}
	return nil
}

// Narrowest prefixes accepted without AllowWideResolver: a resolver farm fits in a /16 or a /32,
// and anything wider is far more likely a mistake that turns clients into "resolvers".
const (
	MinBits4 = 16
	MinBits6 = 32
)

// CheckWidth refuses a resolver or authority prefix wider than MinBits4/MinBits6.
func CheckWidth(pr netip.Prefix) error {
	min := MinBits6
	if pr.Addr().Is4() {
		min = MinBits4
	}
	if pr.Bits() < min {
		return fmt.Errorf("%v is wider than /%d and would take clients for resolvers; list the servers' own addresses or their narrow prefixes, or set -allow-wide-resolver (config key \"allow-wide-resolver\") if this is deliberate", pr, min)
	}
	return nil
}

// QRMode selects pairing or the C reference's unpaired modes.
type QRMode uint8

const (
	QRPair          QRMode = iota // pair queries with responses
	QRQueriesOnly                 // DNSQR_CAPTURE_QR=0: every query as UDP_QUERY_ONLY
	QRResponsesOnly               // DNSQR_CAPTURE_QR=1: every response as UDP_RESPONSE_ONLY
)

// Emit receives each finished record. The record and its slices are valid only during the call.
// An error stops nothing (the pipeline must keep reading) but is counted as an output drop.
type Emit func(r *dnsqr.Record) error

// Pipeline turns frames into records.
type Pipeline struct {
	cfg       Config
	emit      Emit
	timeoutS  int64
	resolvers []netip.Prefix
	auth      bool
	exclude   map[string]struct{}
	include   map[string]struct{}

	t     *table
	held  *table // responses that matched no query, waiting for a late one (Hold)
	hold  int64  // Hold in ns
	heldB int    // octets of held responses
	// clients, when unsolicited records are kept in resolver mode, remembers the resolver's
	// clients, whose addresses an unsolicited record must never carry (clients.go).
	clients *clientSet
	order   outQueue // the C reference's record order while responses are held (order.go)
	frag    *defrag.Reassembler
	tcp     *tcpdns.Reassembler
	scrub   privacy.Scrubber
	budget  *budget.Budget
	stats   Stats
	now     int64 // time of the previous packet: the C reference expires with it
	rec     dnsqr.Record
	pkt     decode.Packet
	rbuf    []byte   // copy of the response packets, so scrubbing never writes to the capture buffer
	rpkts   [][]byte // views into rbuf
	tbuf    []byte   // synthesized TCP packets
	lower   []byte
	tcpMsg  func(*tcpdns.Message)
	ibuf    []byte // copy of an ICMP packet for the scrubber
	mbuf    []byte // synthesized UDP packet of Message
	one     [1][]byte
	oneT    [1]int64
	tone    [1][]byte
	toneT   [1]int64
}

// New builds a pipeline; cfg must have passed Validate.
func New(cfg Config, emit Emit) (*Pipeline, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.QueryTimeout == 0 {
		cfg.QueryTimeout = 60 * time.Second
	}
	if cfg.StateMax == 0 {
		cfg.StateMax = 131072
	}
	if cfg.HoldMaxBytes == 0 {
		cfg.HoldMaxBytes = 4 << 20
	}
	b := newBudget(cfg.MaxBytes, &cfg)
	p := &Pipeline{
		budget:   b,
		cfg:      cfg,
		emit:     emit,
		timeoutS: int64(cfg.QueryTimeout / time.Second),
		t:        newTable(cfg.StateMax),
		held:     newTable(1), // without a hold nothing is ever held
		hold:     int64(cfg.Hold),
		frag:     defrag.New(cfg.Defrag),
		tcp:      tcpdns.New(cfg.TCP),
	}
	if cfg.Hold > 0 {
		p.held = newTable(holdMax)
	}
	p.resolvers = cfg.Resolvers
	if len(cfg.Authorities) > 0 {
		p.resolvers, p.auth = cfg.Authorities, true
	}
	// Responses without a query to vouch for them are kept with -unsolicited and -qr 1.
	if (cfg.Unsolicited || cfg.QR == QRResponsesOnly) && !p.auth {
		p.clients = newClientSet()
	}
	p.scrub.ZeroResolver = cfg.ZeroResolver
	p.exclude = nameSet(cfg.QnameExclude)
	p.include = nameSet(cfg.QnameInclude)
	p.tcpMsg = p.onTCPMessage
	p.registerBudget()
	return p, nil
}

// Frame handles one captured frame: caplen is len(frame), wireLen the length on the wire, ts the
// capture time in ns.
func (p *Pipeline) Frame(link decode.LinkType, ts int64, frame []byte, wireLen int) {
	p.stats.Frames++
	p.advance(ts)
	if wireLen > len(frame) {
		// The C reference drops these silently; we drop them too (the DNS message is cut) but count.
		p.stats.Truncated++
		return
	}
	pk := &p.pkt
	if r := decode.Decode(link, frame, pk); r != decode.OK {
		p.stats.Decode[r]++
		return
	}
	p.stats.IP++
	p.packet(pk, ts)
}

// IPPacket handles one bare IP datagram (for sources that have no link layer).
func (p *Pipeline) IPPacket(ts int64, b []byte) {
	p.stats.Frames++
	p.advance(ts)
	if r := decode.DecodeIP(b, &p.pkt); r != decode.OK {
		p.stats.Decode[r]++
		return
	}
	p.stats.IP++
	p.packet(&p.pkt, ts)
}

// advance expires state with the previous packet's time, as the C reference does before it reads
// the next packet, then remembers this packet's time.
func (p *Pipeline) advance(ts int64) {
	if p.now != 0 {
		p.expire(p.now, false)
	}
	if ts > p.now {
		p.now = ts
	}
	if p.held.n > 0 {
		p.expireHeld(p.now, false)
	}
}

func (p *Pipeline) packet(pk *decode.Packet, ts int64) {
	if pk.Frag {
		// Only fragments that could be DNS are worth memory: the first fragment must carry a
		// DNS port; later ones cannot be judged until the datagram is whole.
		if !p.mayBeDNS(pk) {
			p.stats.NotDNS++
			return
		}
		d := p.frag.Add(pk, ts)
		if d == nil {
			return
		}
		pk.Src, pk.Dst, pk.Proto, pk.L4, pk.Frag = d.Src, d.Dst, d.Proto, d.L4, false
		if r := decode.DecodeL4(pk); r != decode.OK {
			p.stats.Decode[r]++
			return
		}
		p.transport(pk, d.Frags, d.Times)
		return
	}
	p.one[0], p.oneT[0] = pk.Net, ts
	p.transport(pk, p.one[:], p.oneT[:])
}

func (p *Pipeline) mayBeDNS(pk *decode.Packet) bool {
	if pk.FragOff != 0 {
		return true
	}
	if pk.Proto != decode.ProtoUDP || len(pk.L4) < 4 {
		return pk.Proto == decode.ProtoUDP // a first fragment too short to show ports: keep
	}
	sp, dp := uint16(pk.L4[0])<<8|uint16(pk.L4[1]), uint16(pk.L4[2])<<8|uint16(pk.L4[3])
	return isDNSPort(sp) || isDNSPort(dp)
}

func isDNSPort(p uint16) bool { return p == 53 || p == 5353 }

func (p *Pipeline) transport(pk *decode.Packet, pkts [][]byte, times []int64) {
	switch pk.Proto {
	case decode.ProtoUDP:
		if !isDNSPort(pk.SrcPort) && !isDNSPort(pk.DstPort) {
			p.stats.NotDNS++
			return
		}
		p.udp(pk, pkts, times)
	case decode.ProtoTCP:
		if pk.SrcPort != 53 && pk.DstPort != 53 {
			p.stats.NotDNS++
			return
		}
		// Only connections a resolver opened toward port 53 (authority mode: toward an
		// authority's port 53) enter the reassembler, in either direction; client traffic is
		// refused before any state exists, so it can neither be kept nor evict the resolver's.
		if p.rule(pk.Src, pk.SrcPort, pk.Dst, pk.DstPort) != keep && p.rule(pk.Dst, pk.DstPort, pk.Src, pk.SrcPort) != keep {
			if p.clients != nil {
				p.noteClient(pk.Src, pk.SrcPort, pk.Dst, pk.DstPort)
			}
			p.stats.NotResolver++
			return
		}
		p.tcp.Add(tcpdns.Segment{
			Src:     netip.AddrPortFrom(pk.Src, pk.SrcPort),
			Dst:     netip.AddrPortFrom(pk.Dst, pk.DstPort),
			Seq:     pk.TCPSeq,
			SYN:     pk.TCPFlags&decode.TCPSyn != 0,
			FIN:     pk.TCPFlags&decode.TCPFin != 0,
			RST:     pk.TCPFlags&decode.TCPRst != 0,
			Payload: pk.Payload,
			Time:    times[0],
			Packet:  pkts[0],
		}, p.tcpMsg)
	case decode.ProtoICMP, decode.ProtoICMPv6:
		p.icmp(pk, pkts[0], times[0])
	default:
		p.stats.NotDNS++
	}
}

// initiator reports whether a message from src to dst belongs to a transaction the sensor may
// keep: in resolver mode, src is a resolver; in authority mode, dst is an authority.
func (p *Pipeline) initiator(src, dst netip.Addr) bool {
	a := src
	if p.auth {
		a = dst
	}
	for _, pr := range p.resolvers {
		if pr.Contains(a) {
			return true
		}
	}
	return false
}

type verdict uint8

const (
	keep        verdict = iota
	notOurs             // client-side traffic: counted as not_resolver
	mdnsTraffic         // port 5353 without -mdns
)

// rule is the privacy rule for a transaction seen from its query's side: qip:qport asked
// rip:rport. In resolver mode a resolver asks from an ephemeral port and the far side answers on
// port 53; anything where the resolver's address uses 53 or 5353 is its client-facing service,
// whatever the QR bit says (a client can set it). In authority mode an authority answers on 53.
// Port 5353 alone is mDNS, a host's own names rather than cache misses: kept only with MDNS, and
// then as the C reference keeps it.
func (p *Pipeline) rule(qip netip.Addr, qport uint16, rip netip.Addr, rport uint16) verdict {
	if brokenClientRule {
		return keep
	}
	if qport != 53 && rport != 53 {
		if !p.cfg.MDNS {
			return mdnsTraffic
		}
		if p.initiator(qip, rip) {
			return keep
		}
		return notOurs
	}
	if rport != 53 || !p.initiator(qip, rip) || (!p.auth && !p.cfg.DirectionKnown && isDNSPort(qport)) {
		return notOurs
	}
	return keep
}

// refuse counts a message the rule did not keep.
func (p *Pipeline) refuse(v verdict) {
	if v == mdnsTraffic {
		p.stats.MDNSDropped++
	} else {
		p.stats.NotResolver++
	}
}

// query is what the capture path knows of one DNS message.
type message struct {
	proto    uint8
	src, dst netip.AddrPort
	h        dnswire.Header
	hasQ     bool
	q        dnswire.Question
	pkts     [][]byte
	times    []int64
	tcp      bool
}

func (p *Pipeline) udp(pk *decode.Packet, pkts [][]byte, times []int64) {
	m := message{proto: decode.ProtoUDP, src: netip.AddrPortFrom(pk.Src, pk.SrcPort),
		dst: netip.AddrPortFrom(pk.Dst, pk.DstPort), pkts: pkts, times: times}
	if !p.parse(pk.Payload, &m) {
		return
	}
	p.dns(&m)
}

func (p *Pipeline) parse(msg []byte, m *message) bool {
	h, ok := dnswire.ParseHeader(msg)
	if !ok {
		p.stats.DNSMalformed++
		return false
	}
	m.h = h
	if h.QDCount == 1 && len(msg) > dnswire.HeaderLen {
		q, ok := dnswire.ParseQuestion(msg)
		if !ok {
			p.stats.DNSMalformed++
			return false
		}
		m.q, m.hasQ = q, true
	}
	return true
}

// dns handles one whole DNS message, UDP or reassembled TCP.
func (p *Pipeline) dns(m *message) {
	resp := m.h.Response()
	qip, rip, qport, rport := m.src.Addr(), m.dst.Addr(), m.src.Port(), m.dst.Port()
	if resp {
		qip, rip, qport, rport = rip, qip, rport, qport
	}
	// The privacy rule, in user space for both families whatever the kernel filter did: only the
	// resolver's own transactions, never a client's.
	if v := p.rule(qip, qport, rip, rport); v != keep {
		if p.clients != nil {
			p.noteClient(m.src.Addr(), m.src.Port(), m.dst.Addr(), m.dst.Port())
		}
		p.refuse(v)
		return
	}
	typ := dnsqr.UDPQueryResponse
	if m.tcp {
		typ = dnsqr.TCP
	}
	if p.cfg.QR != QRPair {
		if m.tcp || resp != (p.cfg.QR == QRResponsesOnly) {
			p.stats.FilteredQR++
			return
		}
		if resp && p.clients != nil && p.clients.has(rip) {
			p.stats.UnsolicitedClient++
			return
		}
		r := p.newRecord(dnsqr.UDPQueryOnly, m.proto, qip, rip, qport, rport, m.h.ID)
		if resp {
			r.Type = dnsqr.UDPResponseOnly
			r.HasRcode, r.Rcode = true, m.h.Rcode()
			p.setQuestion(r, m.hasQ, m.q)
			p.setResponse(r, m)
		} else {
			p.setQuestion(r, m.hasQ, m.q)
			r.QueryPackets, r.QueryTimes = append(r.QueryPackets, m.pkts...), append(r.QueryTimes, m.times...)
		}
		p.finish(r, m.h.Flags)
		return
	}
	k := makeKey(qip, rip, m.proto, qport, rport, m.h.ID)
	if !resp {
		if p.held.n > 0 && p.pairHeld(k, m, typ) {
			return
		}
		p.insert(k, m, qip, rip)
		return
	}
	i := p.t.match(k, m.hasQ, m.q, m.h.Rcode())
	if i == nilIdx {
		p.unmatched(k, m, qip, rip)
		return
	}
	r := p.newRecord(typ, m.proto, qip, rip, qport, rport, m.h.ID)
	r.HasRcode, r.Rcode = true, m.h.Rcode()
	p.setQuestion(r, m.hasQ, m.q)
	p.setResponse(r, m)
	e := &p.t.e[i]
	r.QueryPackets, r.QueryTimes = append(r.QueryPackets, e.pkts...), append(r.QueryTimes, e.times...)
	if !r.HasQuestion && e.hasQ {
		r.HasQuestion, r.Qname, r.Qtype, r.Qclass = true, e.qname, e.qtype, e.qclass
	}
	p.finish(r, e.flags)
	p.t.release(i)
}

func (p *Pipeline) insert(k flowKey, m *message, qip, rip netip.Addr) {
	for p.t.n >= p.t.max {
		p.stats.StateEvicted++
		p.expireOne(p.now)
	}
	need := len(m.q.Name)
	for _, b := range m.pkts {
		need += len(b)
	}
	if !p.reserveEntry(need) {
		return
	}
	i := p.t.alloc(k)
	p.t.sizeEntry(i, need)
	p.t.e[i].store(m, qip, rip)
	p.stats.Pending = uint64(p.t.n)
}

// store copies the message's packets and question into the entry's own storage: the message is
// about to be overwritten.
func (e *entry) store(m *message, qip, rip netip.Addr) {
	e.qip, e.rip, e.flags, e.hasQ, e.rcode = qip, rip, m.h.Flags, m.hasQ, m.h.Rcode()
	for _, b := range m.pkts {
		e.buf = append(e.buf, b...)
	}
	off := 0
	for j, b := range m.pkts {
		e.pkts = append(e.pkts, e.buf[off:off+len(b):off+len(b)])
		e.times = append(e.times, m.times[j])
		off += len(b)
	}
	if m.hasQ {
		e.buf = append(e.buf, m.q.Name...)
		e.qname = e.buf[off : off+len(m.q.Name)]
		e.qtype, e.qclass = m.q.Type, m.q.Class
	} else {
		e.qname = nil
	}
}

// expire emits as unanswered every pending query older than the timeout at packet time now, or
// all of them when all is set (end of input).
func (p *Pipeline) expire(now int64, all bool) {
	for p.t.head != nilIdx {
		e := &p.t.e[p.t.head]
		if !all && now/1e9-e.times[0]/1e9 <= p.timeoutS {
			break
		}
		p.expireOne(now)
	}
	p.frag.Expire(now)
	p.tcp.Expire(now, p.tcpMsg)
}

// unmatched handles a response that found no pending query: held for the hold window when there
// is one, else decided at once.
func (p *Pipeline) unmatched(k flowKey, m *message, qip, rip netip.Addr) {
	size := 0
	for _, b := range m.pkts {
		size += len(b)
	}
	if p.hold == 0 || size > p.cfg.HoldMaxBytes {
		if !p.unsolicited(rip) {
			return
		}
		r := p.newRecord(dnsqr.UDPUnsolicitedResponse, m.proto, qip, rip, k.qport, k.rport, k.id)
		if m.tcp {
			r.Type = dnsqr.TCP
		}
		r.HasRcode, r.Rcode = true, m.h.Rcode()
		p.setQuestion(r, m.hasQ, m.q)
		p.setResponse(r, m)
		p.finish(r, m.h.Flags)
		return
	}
	for p.held.n >= p.held.max || p.heldB+size > p.cfg.HoldMaxBytes {
		p.stats.HoldEvicted++
		p.releaseHeld(p.held.head)
	}
	i := p.held.alloc(k)
	e := &p.held.e[i]
	e.store(m, qip, rip)
	e.oseq = 0
	if p.cfg.Unsolicited {
		// Its record, if it gets one, goes where the C reference would have put it: here.
		e.oseq = p.order.reserve()
	}
	p.heldB += len(e.buf)
	p.stats.Held++
}

// deciding makes the next finished record take the place held entry e reserved in the output;
// decidedHeld then releases that place, with or without a record.
func (p *Pipeline) deciding(e *entry) { p.order.filling = e.oseq }

func (p *Pipeline) decidedHeld(e *entry) {
	p.order.filling = 0
	if e.oseq != 0 {
		p.decided(e.oseq)
	}
}

// pairHeld pairs a query with a held response to it, as the pair table would have, had the
// query come first. It reports whether it did.
func (p *Pipeline) pairHeld(k flowKey, m *message, typ dnsqr.Type) bool {
	i := p.held.find(&k, func(e *entry) bool {
		if e.hasQ && m.hasQ {
			return e.qtype == m.q.Type && e.qclass == m.q.Class && dnswire.EqualFold(e.qname, m.q.Name)
		}
		// As the pair table matches: a response without a question, or to a query without one,
		// pairs on the key alone when it reports an error.
		switch e.rcode {
		case 1, 2, 4, 5:
			return true
		}
		return false
	})
	if i == nilIdx {
		return false
	}
	p.held.unlink(i)
	e := &p.held.e[i]
	p.heldB -= len(e.buf)
	r := p.newRecord(typ, k.proto, e.qip, e.rip, k.qport, k.rport, k.id)
	r.HasRcode, r.Rcode = true, e.rcode
	if e.hasQ {
		r.HasQuestion, r.Qname, r.Qtype, r.Qclass = true, e.qname, e.qtype, e.qclass
	} else {
		p.setQuestion(r, m.hasQ, m.q)
	}
	// The query's packets are the capture's: copy them so the scrubber writes to our own.
	r.QueryPackets, r.QueryTimes = append(r.QueryPackets, p.scratch(m.pkts)...), append(r.QueryTimes, m.times...)
	r.ResponsePackets, r.ResponseTimes = append(r.ResponsePackets, e.pkts...), append(r.ResponseTimes, e.times...)
	p.stats.HeldPaired++
	p.deciding(e)
	p.finish(r, m.h.Flags)
	p.decidedHeld(e)
	p.held.release(i)
	return true
}

// expireHeld decides every held response older than the hold window at packet time now, or all
// of them (end of input).
func (p *Pipeline) expireHeld(now int64, all bool) {
	for p.held.head != nilIdx {
		e := &p.held.e[p.held.head]
		if !all && now-e.times[len(e.times)-1] <= p.hold {
			break
		}
		p.releaseHeld(p.held.head)
	}
}

// unsolicited reports whether an unsolicited response from rip may become a record, counting
// the drop when not.
func (p *Pipeline) unsolicited(rip netip.Addr) bool {
	if !p.cfg.Unsolicited {
		p.stats.UnsolicitedDropped++
		return false
	}
	if p.clients != nil && p.clients.has(rip) {
		p.stats.UnsolicitedClient++
		return false
	}
	return true
}

// releaseHeld ends the wait of held response i: no query came, so it is unsolicited.
func (p *Pipeline) releaseHeld(i int32) {
	p.held.unlink(i)
	e := &p.held.e[i]
	p.heldB -= len(e.buf)
	p.deciding(e)
	if p.unsolicited(e.rip) {
		typ := dnsqr.UDPUnsolicitedResponse
		if e.key.proto == decode.ProtoTCP {
			typ = dnsqr.TCP
		}
		r := p.newRecord(typ, e.key.proto, e.qip, e.rip, e.key.qport, e.key.rport, e.key.id)
		r.HasRcode, r.Rcode = true, e.rcode
		if e.hasQ {
			r.HasQuestion, r.Qname, r.Qtype, r.Qclass = true, e.qname, e.qtype, e.qclass
		}
		r.ResponsePackets, r.ResponseTimes = append(r.ResponsePackets, e.pkts...), append(r.ResponseTimes, e.times...)
		p.finish(r, e.flags)
	}
	p.decidedHeld(e)
	p.held.release(i)
}

func (p *Pipeline) expireOne(now int64) {
	i := p.t.head
	p.t.unlink(i)
	e := &p.t.e[i]
	typ := dnsqr.UDPUnansweredQuery
	if e.key.proto == decode.ProtoTCP {
		typ = dnsqr.TCP
	}
	r := p.newRecord(typ, e.key.proto, e.qip, e.rip, e.key.qport, e.key.rport, e.key.id)
	if e.hasQ {
		r.HasQuestion, r.Qname, r.Qtype, r.Qclass = true, e.qname, e.qtype, e.qclass
	}
	r.QueryPackets, r.QueryTimes = append(r.QueryPackets, e.pkts...), append(r.QueryTimes, e.times...)
	d := now - e.times[0]
	r.HasTimeout, r.Timeout = true, float64(d/1e9)+float64(d%1e9)/1e9
	p.finish(r, e.flags)
	p.t.release(i)
}

func (p *Pipeline) newRecord(typ dnsqr.Type, proto uint8, qip, rip netip.Addr, qport, rport, id uint16) *dnsqr.Record {
	r := &p.rec
	r.Reset()
	r.Type, r.Proto, r.QueryIP, r.ResponseIP, r.QueryPort, r.ResponsePort, r.ID = typ, proto, qip, rip, qport, rport, id
	return r
}

func (p *Pipeline) setQuestion(r *dnsqr.Record, hasQ bool, q dnswire.Question) {
	if hasQ {
		r.HasQuestion, r.Qname, r.Qtype, r.Qclass = true, q.Name, q.Type, q.Class
	}
}

// setResponse copies the response packets into scratch space the scrubber may write.
func (p *Pipeline) setResponse(r *dnsqr.Record, m *message) {
	r.ResponsePackets = append(r.ResponsePackets, p.scratch(m.pkts)...)
	r.ResponseTimes = append(r.ResponseTimes, m.times...)
}

// scratch copies packets into the pipeline's scratch space, valid until the next call.
func (p *Pipeline) scratch(pkts [][]byte) [][]byte {
	p.rbuf = p.rbuf[:0]
	for _, b := range pkts {
		p.rbuf = append(p.rbuf, b...)
	}
	p.rpkts = p.rpkts[:0]
	off := 0
	for _, b := range pkts {
		p.rpkts = append(p.rpkts, p.rbuf[off:off+len(b):off+len(b)])
		off += len(b)
	}
	return p.rpkts
}

// finish applies the RD and qname filters (on the query's flags when there was a query), the
// checksum verdict and the privacy scrub, then emits.
func (p *Pipeline) finish(r *dnsqr.Record, flags uint16) {
	if p.cfg.RD >= 0 && (flags&dnswire.FlagRD != 0) != (p.cfg.RD == 1) {
		p.stats.FilteredRD++
		return
	}
	if r.HasQuestion && p.excluded(r.Qname) {
		p.stats.FilteredQname++
		return
	}
	if len(r.ResponsePackets) > 0 && r.Proto == decode.ProtoUDP {
		r.HasChecksum, r.UDPChecksum = true, privacy.Verdict(r.ResponsePackets)
	}
	if !p.scrub.Record(r) {
		p.stats.PrivacyDropped++
		return
	}
	p.stats.Records[r.Type]++
	p.out(r)
}

// Flush ends the input: pending queries are emitted as unanswered, incomplete TCP messages and
// fragments are counted.
func (p *Pipeline) Flush() {
	p.tcp.Flush(p.tcpMsg)
	p.expireHeld(p.now, true)
	p.expire(p.now, true)
	p.frag.Flush()
	p.stats.Pending = 0
}

func (p *Pipeline) onTCPMessage(tm *tcpdns.Message) {
	m := message{proto: decode.ProtoTCP, src: tm.Src, dst: tm.Dst, tcp: true}
	if !p.parse(tm.Data, &m) {
		return
	}
	// One synthesized packet per message: consumers read one whole message per element, as for
	// UDP. The question then aliases the synthesized packet, which lives as long as the record.
	p.tbuf = pktbuild.AppendTCP(p.tbuf[:0], tm.Src, tm.Dst, 0, tm.Data)
	m.pkts = p.tone[:1]
	m.pkts[0] = p.tbuf
	m.times = p.toneT[:1]
	m.times[0] = tm.Time
	if m.hasQ {
		hl := len(p.tbuf) - len(tm.Data)
		m.q.Name = p.tbuf[hl+dnswire.HeaderLen : hl+dnswire.HeaderLen+len(m.q.Name)]
	}
	p.dns(&m)
}

// Stats returns a snapshot of the counters, with the current memory use filled in.
func (p *Pipeline) Stats() Stats {
	s := p.stats
	s.Defrag = p.frag.Stats()
	s.TCP = p.tcp.Stats()
	s.Privacy = p.scrub.Stats
	s.Pending = uint64(p.t.n)
	s.MemTable = p.t.memory() + p.held.memory()
	s.MemFrag = p.frag.Bytes()
	s.MemTCP = p.tcp.MemoryBytes()
	return s
}

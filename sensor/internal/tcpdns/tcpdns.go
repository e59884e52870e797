// Package tcpdns reassembles DNS messages carried over TCP (RFC 7766: every
// message is preceded by a two-octet length) from passively captured
// segments.
//
// # Design
//
// Each direction of a connection (Src→Dst) is an independent stream. A
// stream is either synchronised (it knows where the next length prefix
// starts) or not. It becomes synchronised from a SYN (the first data octet
// is ISN+1, and it is a length prefix) or, for connections whose start was
// not captured, heuristically: a segment start is accepted as a message
// start when the length is at least 12 and the 12-octet header that follows
// is plausible (QDCOUNT ≤ 1, opcode 0,1,2,4,5,6, the reserved Z bit clear,
// and the section counts fit in the declared length). Everything else is
// skipped and counted until such a segment start shows up.
//
// The common case (a whole query or a whole response in one segment, or
// several whole messages in one segment) is handled without copying: the
// message handed to emit aliases the caller's segment. Only the unfinished
// tail of a segment is copied into the stream's buffer, which therefore
// holds at most one partial message at a time. The IP datagrams that carried
// the partial message are copied into a per-stream arena so that the emitted
// Message can list every datagram that carried it; a segment that finishes
// one message and starts the next is listed in both.
//
// Segments ahead of the next expected sequence number are copied aside
// (at most MaxOutOfOrder of them) and replayed in sequence order when the
// hole is filled. Sequence numbers are compared with serial-number
// arithmetic so streams may wrap around 2^32. Bytes already seen are
// dropped and counted. A hole that is not filled within GapTimeout of
// packet time, or whose out-of-order data would exceed a cap, is declared
// lost: the partial message is dropped, and the stream either stays
// synchronised (when the lost bytes all belong to the message whose length
// is known, the rest of that message is skipped) or resynchronises
// heuristically.
//
// # Caps
//
// All input is treated as hostile. A declared length never causes an
// allocation: buffers grow as bytes actually arrive, doubling, and never
// beyond MaxBufferPerStream. Memory is accounted by buffer capacity (not
// length), per stream against MaxBufferPerStream and globally against
// MaxTotalBytes; the per-stream figure includes the copied datagrams, the
// out-of-order segments and a fixed overhead per datagram record. When the
// global cap would be exceeded the least recently used other streams are
// evicted; when a stream's own cap would be exceeded its partial message is
// dropped (and the rest of it skipped). A message that cannot fit in
// MaxBufferPerStream even on its own is skipped as oversize. At most
// MaxStreams streams exist; creating one more evicts the least recently used.
// Only a small pool of released stream structures (with buffers of at most
// a few KiB) lives outside the accounting, and a transient scratch copy made
// while resynchronising.
//
// A FIN ends its direction once every octet before it has been seen (or
// given up); a RST ends its direction at once. Either way, out-of-order data
// still held is replayed across its holes first, so complete messages in it
// are emitted, and a partial message is counted as Incomplete. The other
// direction lives on until its own FIN or RST, or until it idles out.
//
// Every drop is counted in Stats so the stats line explains lost messages.
//
// A Reassembler is not safe for concurrent use, and emit must not call back
// into the Reassembler that invoked it.
package tcpdns

import (
	"net/netip"
	"time"

	"github.com/sie-europe/dnssensor/sensor/internal/budget"
)

// Segment is one captured TCP segment. Payload and Packet alias the caller's
// buffer and are only valid during Add.
type Segment struct {
	Src, Dst      netip.AddrPort
	Seq           uint32
	SYN, FIN, RST bool
	Payload       []byte
	Time          int64  // capture time, ns since the epoch
	Packet        []byte // the whole IP datagram carrying this segment
}

// Message is one complete DNS message found in one direction of a
// connection. It and every slice it holds are only valid during the emit
// callback: the Reassembler reuses them.
type Message struct {
	Src, Dst netip.AddrPort
	// Time is the capture time of the segment that carried the first
	// octet of the message's length prefix, so Time == Times[0].
	Time int64
	// Data is the DNS message without its two-octet length prefix.
	Data []byte
	// Packets are the IP datagrams of the segments that carried any
	// octet of the framed message (prefix included), in sequence order.
	Packets [][]byte
	// Times holds the capture time of each element of Packets.
	Times []int64
}

// Config bounds the Reassembler. Zero fields take the defaults below.
type Config struct {
	MaxStreams         int           // default 8192
	MaxBufferPerStream int           // bytes, default 256 KiB
	MaxTotalBytes      int           // bytes, default 64 MiB
	IdleTimeout        time.Duration // default 60s
	// GapTimeout is how long (packet time) a hole in a stream waits for the
	// retransmission before it is declared lost. Default 1s: a passive tap
	// also loses segments the endpoints did receive, and those are never
	// retransmitted.
	GapTimeout time.Duration
	// MaxOutOfOrder is the number of out-of-order segments held per
	// stream. Default 32.
	MaxOutOfOrder int
	// Budget, when set, bounds the buffers together with the pair table and IP fragments; the
	// caller registers the Reassembler with it.
	Budget *budget.Budget
}

// Defaults for zero Config fields.
const (
	DefaultMaxStreams         = 8192
	DefaultMaxBufferPerStream = 256 << 10
	DefaultMaxTotalBytes      = 64 << 20
	DefaultIdleTimeout        = 60 * time.Second
	DefaultGapTimeout         = time.Second
	DefaultMaxOutOfOrder      = 32
)

// Stats are cumulative counters.
type Stats struct {
	Segments          uint64 // calls to Add
	Messages          uint64 // messages emitted
	StreamsOpened     uint64
	StreamsClosed     uint64 // by FIN or RST
	StreamsExpired    uint64 // idle longer than IdleTimeout
	StreamsEvicted    uint64 // dropped to honour MaxStreams or MaxTotalBytes
	MidstreamStarts   uint64 // streams first seen without a SYN, or whose sequence jumped
	Resyncs           uint64 // heuristic message starts accepted
	OutOfOrder        uint64 // segments that arrived ahead of a hole
	Duplicates        uint64 // segments entirely seen before (retransmissions)
	Overlaps          uint64 // segments partly seen before
	DuplicateBytes    uint64 // payload octets dropped as already seen
	Gaps              uint64 // holes declared lost
	GapBytes          uint64 // octets never seen because of those holes
	SkippedBytes      uint64 // octets discarded while not synchronised or skipping a dropped message
	GarbageFrames     uint64 // length prefix < 12
	OversizeFrames    uint64 // message larger than MaxBufferPerStream
	FramesDroppedCap  uint64 // partial messages dropped because a memory cap was hit
	BytesDroppedCap   uint64 // buffered payload octets dropped by caps and evictions
	Incomplete        uint64 // partial messages lost to FIN, RST, expiry, eviction or a gap
	IncompleteAtFlush uint64 // partial messages left at Flush
}

// Reassembler turns segments into DNS messages. Create it with New.
type Reassembler struct {
	maxStreams  int
	perStream   int
	total       int
	idle        int64
	gapTimeout  int64
	maxPending  int
	noEvict     bool // set while walking the stream list, so that no other stream is released under us
	budget      *budget.Budget
	cur         *stream // the stream a segment is being added to: the budget never evicts it
	streams     map[key]*stream
	head, tail  *stream // LRU list, head most recently used
	pool        []*stream
	mem         int
	stats       Stats
	msg         Message
	pkts        [][]byte
	times       []int64
	scratchBuf  []byte
	scratchPkt  []byte
	scratchRecs []pktRec
}

// New returns a Reassembler bounded by cfg.
func New(cfg Config) *Reassembler {
	r := &Reassembler{
		maxStreams: cfg.MaxStreams,
		perStream:  cfg.MaxBufferPerStream,
		total:      cfg.MaxTotalBytes,
		idle:       int64(cfg.IdleTimeout),
		gapTimeout: int64(cfg.GapTimeout),
		maxPending: cfg.MaxOutOfOrder,
		budget:     cfg.Budget,
	}
	if r.maxStreams <= 0 {
		r.maxStreams = DefaultMaxStreams
	}
	if r.perStream <= 0 {
		r.perStream = DefaultMaxBufferPerStream
	}
	if r.total <= 0 {
		r.total = DefaultMaxTotalBytes
	}
	if r.idle <= 0 {
		r.idle = int64(DefaultIdleTimeout)
	}
	if r.gapTimeout <= 0 {
		r.gapTimeout = int64(DefaultGapTimeout)
	}
	if r.maxPending <= 0 {
		r.maxPending = DefaultMaxOutOfOrder
	}
	r.streams = make(map[key]*stream, min(r.maxStreams, 1024))
	r.pkts = make([][]byte, 0, 8)
	r.times = make([]int64, 0, 8)
	return r
}

// Stats returns the counters so far.
func (r *Reassembler) Stats() Stats { return r.stats }

// MemoryBytes is the accounted memory currently held for streams (buffer
// capacities, copied datagrams and out-of-order segments).
func (r *Reassembler) MemoryBytes() int { return r.mem }

// Streams is the number of streams currently tracked.
func (r *Reassembler) Streams() int { return len(r.streams) }

// Add feeds one captured segment. Messages it completes are passed to emit
// before Add returns.
func (r *Reassembler) Add(s Segment, emit func(*Message)) {
	r.stats.Segments++
	k := key{s.Src, s.Dst}
	st := r.streams[k]
	if s.RST {
		// The payload of a RST is a diagnostic, not stream data.
		if st != nil {
			r.stats.StreamsClosed++
			r.closeStream(st, emit, false)
		}
		return
	}
	if st == nil {
		if !s.SYN && len(s.Payload) == 0 {
			// A bare ACK or a late FIN: nothing to reassemble, and creating
			// state for it would let empty segments churn the table.
			return
		}
		st = r.newStream(k)
		st.last = s.Time
		if !s.SYN {
			r.stats.MidstreamStarts++
			st.nextSeq = s.Seq
		}
	} else {
		r.touch(st)
		st.last = s.Time
	}
	r.cur = st
	defer func() { r.cur = nil }()
	seq := s.Seq
	if s.SYN {
		seq++
		if !st.hasSYN || st.isn != s.Seq {
			// A new connection on the same addresses (or the first SYN):
			// whatever was buffered belongs to the old one.
			r.dropState(st)
			st.hasSYN = true
			st.isn = s.Seq
			st.nextSeq = seq
			st.synced = true
			st.fin = false
		}
	}
	if s.FIN {
		st.fin = true
		st.finSeq = seq + uint32(len(s.Payload))
	}
	if len(s.Payload) > 0 {
		r.segment(st, seq, s.Payload, s.Packet, s.Time, emit)
	}
	for len(st.pend) > 0 && s.Time-st.gapSince > r.gapTimeout {
		r.resolveGap(st, emit)
	}
	if st.fin && seqDiff(st.nextSeq, st.finSeq) >= 0 {
		r.stats.StreamsClosed++
		r.closeStream(st, emit, false)
	}
}

// Expire closes streams idle for longer than IdleTimeout at packet time now
// (emitting whatever their out-of-order data completes) and declares lost
// the holes older than GapTimeout.
func (r *Reassembler) Expire(now int64, emit func(*Message)) {
	r.noEvict = true
	defer func() { r.noEvict = false }()
	for st := r.tail; st != nil; {
		prev := st.prev
		if now-st.last > r.idle {
			r.stats.StreamsExpired++
			r.closeStream(st, emit, false)
		} else {
			for len(st.pend) > 0 && now-st.gapSince > r.gapTimeout {
				r.resolveGap(st, emit)
			}
		}
		st = prev
	}
}

// Flush ends the input: out-of-order data is replayed across its holes,
// complete messages are emitted, partial ones are counted, and every stream
// is released.
func (r *Reassembler) Flush(emit func(*Message)) {
	r.noEvict = true
	defer func() { r.noEvict = false }()
	for st := r.tail; st != nil; {
		prev := st.prev
		r.closeStream(st, emit, true)
		st = prev
	}
}

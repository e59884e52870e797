package pipeline

import "github.com/sie-europe/dnssensor/nmsg/dnsqr"

// outQueue keeps the C reference's record order while responses are held (Config.Hold) and
// unsolicited records are kept. The C reference emits an unsolicited response when it arrives;
// a held one is decided up to the hold window later. So a held response reserves its place in the
// output when it arrives, every record finished after it waits behind it (copied), and the queue
// drains up to the next undecided place as each held response is decided: paired with a late
// query, emitted as unsolicited, or dropped. Empty (the usual case) it costs one comparison.
type outQueue struct {
	slots      []outSlot // ring, len a power of two
	head, tail uint64    // sequence numbers; slot of seq s is slots[s&(len-1)]
	bytes      int       // octets copied into waiting records
	filling    uint64    // the place a deciding held response's record goes to (0: none)
}

type outSlot struct {
	waiting bool // a held response not yet decided
	has     bool // holds a record to emit
	rec     dnsqr.Record
	buf     []byte
	size    int
}

func (q *outQueue) empty() bool { return q.head == q.tail }

// reserve appends an undecided place and returns its sequence number (never 0).
func (q *outQueue) reserve() uint64 {
	if q.head == 0 {
		q.head, q.tail = 1, 1
	}
	if q.tail-q.head == uint64(len(q.slots)) {
		q.grow()
	}
	s := &q.slots[q.tail&uint64(len(q.slots)-1)]
	s.waiting, s.has = true, false
	q.tail++
	return q.tail - 1
}

func (q *outQueue) grow() {
	n := 2 * len(q.slots)
	if n == 0 {
		n = 64
	}
	ns := make([]outSlot, n)
	for s := q.head; s < q.tail; s++ {
		ns[s&uint64(n-1)] = q.slots[s&uint64(len(q.slots)-1)]
	}
	q.slots = ns
}

func (q *outQueue) slot(seq uint64) *outSlot { return &q.slots[seq&uint64(len(q.slots)-1)] }

// put copies r into the place seq.
func (q *outQueue) put(seq uint64, r *dnsqr.Record) {
	s := q.slot(seq)
	s.has = true
	s.size = copyRecord(&s.rec, &s.buf, r)
	q.bytes += s.size
}

// copyRecord deep-copies r into dst, reusing dst's storage, and returns the octets copied.
func copyRecord(dst *dnsqr.Record, buf *[]byte, r *dnsqr.Record) int {
	n := len(r.Qname) + len(r.TCP) + len(r.ICMP)
	for _, b := range r.QueryPackets {
		n += len(b)
	}
	for _, b := range r.ResponsePackets {
		n += len(b)
	}
	b := (*buf)[:0]
	if cap(b) < n {
		b = make([]byte, 0, n)
	}
	cp := func(src []byte) []byte {
		if src == nil {
			return nil
		}
		off := len(b)
		b = append(b, src...)
		return b[off:len(b):len(b)]
	}
	qp, qt, rp, rt := dst.QueryPackets[:0], dst.QueryTimes[:0], dst.ResponsePackets[:0], dst.ResponseTimes[:0]
	*dst = *r
	dst.Qname, dst.TCP, dst.ICMP = cp(r.Qname), cp(r.TCP), cp(r.ICMP)
	for _, p := range r.QueryPackets {
		qp = append(qp, cp(p))
	}
	for _, p := range r.ResponsePackets {
		rp = append(rp, cp(p))
	}
	dst.QueryPackets, dst.ResponsePackets = qp, rp
	dst.QueryTimes, dst.ResponseTimes = append(qt, r.QueryTimes...), append(rt, r.ResponseTimes...)
	*buf = b
	return n
}

// out emits a finished record, or queues it behind an undecided held response.
func (p *Pipeline) out(r *dnsqr.Record) {
	q := &p.order
	switch {
	case q.filling != 0:
		q.put(q.filling, r)
	case q.empty():
		if err := p.emit(r); err != nil {
			p.stats.OutputErrors++
		}
	default:
		seq := q.reserve()
		q.slot(seq).waiting = false
		q.put(seq, r)
		// Bounded like the held responses themselves: past the bound the oldest held response
		// is decided early (counted), which lets the queue drain.
		for (q.bytes > p.cfg.HoldMaxBytes || q.tail-q.head > maxQueued) && p.held.head != nilIdx {
			p.stats.HoldEvicted++
			p.releaseHeld(p.held.head)
		}
	}
}

// maxQueued bounds the records waiting behind held responses.
const maxQueued = 1 << 16

// decided marks held place seq decided (its record, if any, was put there) and emits every
// record up to the next undecided place.
func (p *Pipeline) decided(seq uint64) {
	q := &p.order
	q.slot(seq).waiting = false
	for !q.empty() {
		s := q.slot(q.head)
		if s.waiting {
			break
		}
		if s.has {
			if err := p.emit(&s.rec); err != nil {
				p.stats.OutputErrors++
			}
			q.bytes -= s.size
			s.has = false
		}
		q.head++
	}
}

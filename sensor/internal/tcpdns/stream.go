package tcpdns

import "net/netip"

type key struct{ src, dst netip.AddrPort }

const (
	hdrLen   = 12         // DNS header
	probeLen = 2 + hdrLen // octets needed to judge a resynchronisation candidate

	// recCost is what one datagram record is accounted as: the record
	// itself plus the slack of slice growth, so that a flood of one-octet
	// segments is bounded by the byte caps like everything else.
	recCost = 96
	// pendOverhead is the accounted cost of an out-of-order segment beyond
	// its copied bytes.
	pendOverhead = 64

	// Buffers bigger than retainBuf are released once empty, so that one
	// huge response does not pin its buffer for the life of a connection;
	// smaller ones are kept (and accounted) because responses large enough
	// to need TCP tend to come in series. Under global memory pressure the
	// kept buffers of idle streams are released before any stream is
	// evicted.
	retainBuf  = 16 << 10
	poolBuf    = 4 << 10 // released streams keep only buffers this small
	retainRecs = 64
	// poolMax bounds the released streams kept for reuse (outside the
	// accounting, each with buffers of at most poolBuf).
	poolMax = 256

	// maxSeqJump: a segment this far from the expected sequence number is
	// no retransmission or reordering but a new connection on the same
	// addresses whose SYN was not captured (or noise).
	maxSeqJump = 1 << 24
)

// pktRec locates, in stream.arena, the copy of a datagram that carried
// bytes of stream.buf.
type pktRec struct {
	off, n int   // the datagram in arena
	bufOff int   // first octet this segment contributed to buf
	t      int64 // capture time
	cand   bool  // bufOff is where a segment's payload began: a resync candidate
}

// pendSeg is an out-of-order segment waiting for the hole before it.
type pendSeg struct {
	seq  uint32
	plen int    // payload is b[:plen], the datagram b[plen:]
	t    int64  // capture time
	b    []byte // one allocation for payload and datagram
}

// stream is one direction of one connection.
type stream struct {
	key        key
	prev, next *stream // LRU list
	last       int64   // packet time of the last segment
	nextSeq    uint32  // sequence number of the next octet wanted
	isn        uint32
	finSeq     uint32
	hasSYN     bool
	synced     bool // buf (or the next octet, if buf is empty) starts a length prefix
	fin        bool
	skip       int // octets still to discard of a message being dropped; implies synced and empty buf
	// buf holds the partial message when synced, or the octets not yet
	// judged by the resynchronisation heuristic when not.
	buf      []byte
	arena    []byte   // copies of the datagrams that carried buf
	recs     []pktRec // one per datagram in arena, in sequence order
	pend     []pendSeg
	gapSince int64 // earliest capture time among pend
	mem      int   // accounted bytes
}

func seqDiff(a, b uint32) int64 { return int64(int32(a - b)) }

func be16(b []byte) int { return int(b[0])<<8 | int(b[1]) }

// plausible reports whether b (at least probeLen octets) looks like a
// length prefix followed by a DNS header. It is only used where framing is
// unknown; once synchronised, only the length is checked so that unusual
// but valid messages are not rejected.
func plausible(b []byte) bool {
	n := be16(b)
	if n < hdrLen {
		return false
	}
	h := b[2:probeLen]
	switch op := h[2] >> 3 & 0x0f; {
	case op == 3 || op > 6: // 3 is unassigned, above 6 unassigned
		return false
	}
	if h[3]&0x40 != 0 { // the remaining reserved Z bit
		return false
	}
	qd := be16(h[4:])
	if qd > 1 {
		return false
	}
	// The smallest question is 5 octets (root name, type, class) and the
	// smallest record 11, so the counts must fit in the declared length.
	rr := be16(h[6:]) + be16(h[8:]) + be16(h[10:])
	return 5*qd+11*rr <= n-hdrLen
}

func (r *Reassembler) newStream(k key) *stream {
	if len(r.streams) >= r.maxStreams && r.tail != nil {
		r.evict(r.tail)
	}
	var st *stream
	if n := len(r.pool); n > 0 {
		st = r.pool[n-1]
		r.pool[n-1] = nil
		r.pool = r.pool[:n-1]
	} else {
		st = new(stream)
	}
	st.key = k
	st.mem = cap(st.buf) + cap(st.arena)
	if r.mem+st.mem > r.total || st.mem > r.perStream {
		st.buf, st.arena, st.mem = nil, nil, 0
	}
	r.mem += st.mem
	r.streams[k] = st
	st.next = r.head
	if r.head != nil {
		r.head.prev = st
	}
	r.head = st
	if r.tail == nil {
		r.tail = st
	}
	r.stats.StreamsOpened++
	return st
}

func (r *Reassembler) unlink(st *stream) {
	if st.prev != nil {
		st.prev.next = st.next
	} else {
		r.head = st.next
	}
	if st.next != nil {
		st.next.prev = st.prev
	} else {
		r.tail = st.prev
	}
	st.prev, st.next = nil, nil
}

func (r *Reassembler) touch(st *stream) {
	if r.head == st {
		return
	}
	r.unlink(st)
	st.next = r.head
	r.head.prev = st
	r.head = st
}

func (r *Reassembler) release(st *stream) {
	delete(r.streams, st.key)
	r.unlink(st)
	r.mem -= st.mem
	for i := range st.pend {
		st.pend[i] = pendSeg{}
	}
	buf, arena, recs, pend := st.buf[:0], st.arena[:0], st.recs[:0], st.pend[:0]
	if cap(buf) > poolBuf {
		buf = nil
	}
	if cap(arena) > poolBuf {
		arena = nil
	}
	if cap(recs) > retainRecs {
		recs = nil
	}
	*st = stream{buf: buf, arena: arena, recs: recs, pend: pend}
	if len(r.pool) < poolMax {
		r.pool = append(r.pool, st)
	}
}

func (r *Reassembler) pendingPayload(st *stream) int {
	n := 0
	for _, p := range st.pend {
		n += p.plen
	}
	return n
}

// evict drops a stream without emitting anything: it is only called under
// pressure, where doing more work for the victim would help an attacker.
func (r *Reassembler) evict(st *stream) {
	r.stats.StreamsEvicted++
	r.stats.BytesDroppedCap += uint64(len(st.buf) + r.pendingPayload(st))
	if st.synced && len(st.buf) > 0 {
		r.stats.Incomplete++
	}
	r.release(st)
}

// reserve accounts n more bytes to st, evicting least recently used other
// streams if the global cap requires it.
func (r *Reassembler) reserve(st *stream, n int) bool {
	if st.mem+n > r.perStream || st.mem+n > r.total {
		return false
	}
	for r.mem+n > r.total {
		if r.noEvict {
			return false
		}
		// Prefer, looking only a few steps from the LRU end so that this
		// stays O(1) amortised: releasing the idle buffers of a stream
		// that holds no data (it keeps its state), then evicting a stream
		// that holds data, then evicting the least recently used.
		var v *stream
		for c, i := r.tail, 0; c != nil && i < 16 && r.mem+n > r.total; c, i = c.prev, i+1 {
			if c == st || c.mem == 0 {
				continue
			}
			if len(c.buf) == 0 && len(c.recs) == 0 && len(c.pend) == 0 {
				r.releaseBuffers(c)
				continue
			}
			v = c
			break
		}
		if r.mem+n <= r.total {
			break
		}
		if v == nil {
			v = r.tail
			if v == st {
				v = st.prev
			}
		}
		if v == nil {
			return false
		}
		r.evict(v)
	}
	if !r.budget.Reserve(n) {
		return false
	}
	st.mem += n
	r.mem += n
	return true
}

// grow makes room for n more bytes in *b. It grows by doubling but falls
// back to the exact size near the caps, and never allocates before the
// bytes are actually there to be stored.
func (r *Reassembler) grow(st *stream, b *[]byte, n int) bool {
	need := len(*b) + n
	c := cap(*b)
	if need <= c {
		return true
	}
	nc := max(2*c, need, 256)
	if !r.reserve(st, nc-c) {
		if nc == need || !r.reserve(st, need-c) {
			return false
		}
		nc = need
	}
	nb := make([]byte, len(*b), nc)
	copy(nb, *b)
	*b = nb
	return true
}

// store appends a segment's bytes to buf and its datagram to the arena.
func (r *Reassembler) store(st *stream, data, pkt []byte, t int64, cand bool) bool {
	if !r.grow(st, &st.buf, len(data)) || !r.grow(st, &st.arena, len(pkt)) || !r.reserve(st, recCost) {
		return false
	}
	off := len(st.arena)
	st.arena = append(st.arena, pkt...)
	st.recs = append(st.recs, pktRec{off: off, n: len(pkt), bufOff: len(st.buf), t: t, cand: cand})
	st.buf = append(st.buf, data...)
	return true
}

// resetPartial forgets buf and its datagrams, keeping small buffers.
func (r *Reassembler) resetPartial(st *stream) {
	d := len(st.recs) * recCost
	st.recs = st.recs[:0]
	if cap(st.recs) > retainRecs {
		st.recs = nil
	}
	st.buf = st.buf[:0]
	if cap(st.buf) > retainBuf {
		d += cap(st.buf)
		st.buf = nil
	}
	st.arena = st.arena[:0]
	if cap(st.arena) > retainBuf {
		d += cap(st.arena)
		st.arena = nil
	}
	st.mem -= d
	r.mem -= d
}

// releaseBuffers gives back the empty buffers a stream keeps for reuse.
func (r *Reassembler) releaseBuffers(st *stream) {
	d := cap(st.buf) + cap(st.arena)
	st.buf, st.arena = nil, nil
	st.mem -= d
	r.mem -= d
}

// dropState forgets everything buffered, for a stream that turned out to
// be a new connection.
func (r *Reassembler) dropState(st *stream) {
	if st.synced && len(st.buf) > 0 {
		r.stats.Incomplete++
	} else {
		r.stats.SkippedBytes += uint64(len(st.buf))
	}
	r.stats.SkippedBytes += uint64(r.pendingPayload(st))
	for i, p := range st.pend {
		d := len(p.b) + pendOverhead
		st.mem -= d
		r.mem -= d
		st.pend[i] = pendSeg{}
	}
	st.pend = st.pend[:0]
	r.resetPartial(st)
	st.skip = 0
	st.synced = false
}

func (r *Reassembler) closeStream(st *stream, emit func(*Message), atFlush bool) {
	for len(st.pend) > 0 {
		r.resolveGap(st, emit)
	}
	switch {
	case st.synced && len(st.buf) > 0:
		if atFlush {
			r.stats.IncompleteAtFlush++
		} else {
			r.stats.Incomplete++
		}
	case len(st.buf) > 0:
		r.stats.SkippedBytes += uint64(len(st.buf))
	}
	r.release(st)
}

// segment places a payload whose first octet has sequence number seq.
func (r *Reassembler) segment(st *stream, seq uint32, payload, pkt []byte, t int64, emit func(*Message)) {
	d := seqDiff(seq, st.nextSeq)
	if d > maxSeqJump || d+int64(len(payload)) < -maxSeqJump {
		r.dropState(st)
		r.stats.MidstreamStarts++
		st.nextSeq = seq
		st.hasSYN = false
		d = 0
	}
	if d+int64(len(payload)) <= 0 {
		r.stats.Duplicates++
		r.stats.DuplicateBytes += uint64(len(payload))
		return
	}
	cand := true
	if d < 0 {
		r.stats.Overlaps++
		r.stats.DuplicateBytes += uint64(-d)
		payload = payload[-d:]
		cand = false
		d = 0
	}
	if d == 0 {
		r.consume(st, payload, pkt, t, cand, emit)
		r.drainPending(st, emit)
		return
	}
	r.stats.OutOfOrder++
	r.addPending(st, seq, payload, pkt, t, emit)
}

func (r *Reassembler) addPending(st *stream, seq uint32, payload, pkt []byte, t int64, emit func(*Message)) {
	end := seq + uint32(len(payload))
	for _, p := range st.pend {
		if seqDiff(p.seq, seq) <= 0 && seqDiff(p.seq+uint32(p.plen), end) >= 0 {
			r.stats.Duplicates++
			r.stats.DuplicateBytes += uint64(len(payload))
			return
		}
	}
	cost := len(payload) + len(pkt) + pendOverhead
	for len(st.pend) >= r.maxPending || !r.reserve(st, cost) {
		if len(st.pend) == 0 || seqDiff(seq, st.pend[0].seq) < 0 {
			// This segment is the first after the hole and cannot wait:
			// give up on the hole now.
			r.gapTo(st, seq)
			r.consume(st, payload, pkt, t, true, emit)
			r.drainPending(st, emit)
			return
		}
		r.resolveGap(st, emit)
		if seqDiff(seq, st.nextSeq) <= 0 {
			r.segment(st, seq, payload, pkt, t, emit)
			return
		}
	}
	b := make([]byte, len(payload)+len(pkt))
	copy(b, payload)
	copy(b[len(payload):], pkt)
	i := len(st.pend)
	for i > 0 && seqDiff(st.pend[i-1].seq, seq) > 0 {
		i--
	}
	st.pend = append(st.pend, pendSeg{})
	copy(st.pend[i+1:], st.pend[i:])
	st.pend[i] = pendSeg{seq: seq, plen: len(payload), t: t, b: b}
	if len(st.pend) == 1 || t < st.gapSince {
		st.gapSince = t
	}
}

// drainPending replays the out-of-order segments that the stream has
// caught up with.
func (r *Reassembler) drainPending(st *stream, emit func(*Message)) {
	for len(st.pend) > 0 {
		p := st.pend[0]
		d := seqDiff(p.seq, st.nextSeq)
		if d > 0 {
			break
		}
		copy(st.pend, st.pend[1:])
		st.pend[len(st.pend)-1] = pendSeg{}
		st.pend = st.pend[:len(st.pend)-1]
		c := len(p.b) + pendOverhead
		st.mem -= c
		r.mem -= c
		payload, pkt := p.b[:p.plen], p.b[p.plen:]
		if d+int64(p.plen) <= 0 {
			r.stats.Duplicates++
			r.stats.DuplicateBytes += uint64(p.plen)
			continue
		}
		cand := true
		if d < 0 {
			r.stats.Overlaps++
			r.stats.DuplicateBytes += uint64(-d)
			payload = payload[-d:]
			cand = false
		}
		r.consume(st, payload, pkt, p.t, cand, emit)
	}
	if len(st.pend) > 0 {
		st.gapSince = st.pend[0].t
		for _, p := range st.pend[1:] {
			st.gapSince = min(st.gapSince, p.t)
		}
	}
}

// resolveGap declares the hole before the first out-of-order segment lost.
func (r *Reassembler) resolveGap(st *stream, emit func(*Message)) {
	if len(st.pend) == 0 {
		return
	}
	if seqDiff(st.pend[0].seq, st.nextSeq) > 0 {
		r.gapTo(st, st.pend[0].seq)
	}
	r.drainPending(st, emit)
}

// gapTo moves the stream to target, abandoning the octets in between.
func (r *Reassembler) gapTo(st *stream, target uint32) {
	lost := int(uint32(target - st.nextSeq))
	r.stats.Gaps++
	r.stats.GapBytes += uint64(lost)
	switch {
	case !st.synced:
		r.stats.SkippedBytes += uint64(len(st.buf))
	case st.skip > 0:
		// The hole is inside a message already being skipped; if it ends
		// inside it too, the framing survives.
		if lost <= st.skip {
			st.skip -= lost
		} else {
			st.skip = 0
			st.synced = false
		}
	case len(st.buf) >= 2:
		r.stats.Incomplete++
		r.stats.SkippedBytes += uint64(len(st.buf))
		if rem := 2 + be16(st.buf) - len(st.buf); lost <= rem {
			st.skip = rem - lost
		} else {
			st.synced = false
		}
	case len(st.buf) == 1:
		r.stats.Incomplete++
		r.stats.SkippedBytes++
		st.synced = false
	default:
		// The hole swallowed a length prefix.
		st.synced = false
	}
	r.resetPartial(st)
	st.nextSeq = target
}

// consume takes in-order octets starting at st.nextSeq. cand says whether
// data starts where a segment's payload started.
func (r *Reassembler) consume(st *stream, data, pkt []byte, t int64, cand bool, emit func(*Message)) {
	st.nextSeq += uint32(len(data))
	if st.synced {
		r.consumeSynced(st, data, pkt, t, emit)
	} else {
		r.consumeUnsynced(st, data, pkt, t, cand, emit)
	}
}

func (r *Reassembler) garbage(st *stream) {
	r.stats.GarbageFrames++
	r.stats.SkippedBytes += uint64(len(st.buf))
	r.resetPartial(st)
	st.synced = false
}

// dropFrame abandons the partial message in buf because a cap was hit.
func (r *Reassembler) dropFrame(st *stream) {
	r.stats.FramesDroppedCap++
	r.stats.BytesDroppedCap += uint64(len(st.buf))
	r.resetPartial(st)
}

func (r *Reassembler) consumeSynced(st *stream, data, pkt []byte, t int64, emit func(*Message)) {
	for len(data) > 0 {
		if st.skip > 0 {
			n := min(st.skip, len(data))
			st.skip -= n
			r.stats.SkippedBytes += uint64(n)
			data = data[n:]
			continue
		}
		if !st.synced {
			// Framing was lost inside this segment; the rest of it is no
			// resynchronisation candidate because it is no segment start.
			r.stats.SkippedBytes += uint64(len(data))
			return
		}
		if len(st.buf) == 0 {
			if len(data) < 2 {
				if !r.store(st, data, pkt, t, false) {
					r.dropFrame(st)
					r.stats.BytesDroppedCap += uint64(len(data))
					st.synced = false
				}
				return
			}
			l := be16(data)
			if l < hdrLen {
				r.garbage(st)
				continue
			}
			fl := 2 + l
			if fl <= len(data) {
				// The common case: the whole message is in this segment.
				r.emitMsg(st, data[2:fl], pkt, t, emit)
				data = data[fl:]
				continue
			}
			if fl > r.perStream {
				r.stats.OversizeFrames++
				st.skip = fl
				continue
			}
			if !r.store(st, data, pkt, t, false) {
				r.dropFrame(st)
				st.skip = fl
				continue
			}
			return
		}
		var l int
		if len(st.buf) >= 2 {
			l = be16(st.buf)
		} else {
			l = int(st.buf[0])<<8 | int(data[0])
		}
		if l < hdrLen {
			r.garbage(st)
			continue
		}
		fl := 2 + l
		need := fl - len(st.buf)
		if fl > r.perStream {
			r.stats.OversizeFrames++
			r.stats.SkippedBytes += uint64(len(st.buf))
			r.resetPartial(st)
			st.skip = need
			continue
		}
		if need <= len(data) {
			if !r.grow(st, &st.buf, need) {
				r.dropFrame(st)
				st.skip = need
				continue
			}
			st.buf = append(st.buf, data[:need]...)
			r.emitMsg(st, st.buf[2:], pkt, t, emit)
			r.resetPartial(st)
			data = data[need:]
			continue
		}
		if !r.store(st, data, pkt, t, false) {
			r.dropFrame(st)
			st.skip = need
			continue
		}
		return
	}
}

func (r *Reassembler) consumeUnsynced(st *stream, data, pkt []byte, t int64, cand bool, emit func(*Message)) {
	if len(st.buf) == 0 {
		if !cand {
			r.stats.SkippedBytes += uint64(len(data))
			return
		}
		if len(data) >= probeLen {
			// Judge the segment in place: no copy unless it is accepted
			// and ends inside a message.
			if plausible(data) {
				st.synced = true
				r.stats.Resyncs++
				r.consumeSynced(st, data, pkt, t, emit)
			} else {
				r.stats.SkippedBytes += uint64(len(data))
			}
			return
		}
	}
	if !r.store(st, data, pkt, t, cand) {
		r.stats.SkippedBytes += uint64(len(st.buf) + len(data))
		r.resetPartial(st)
		return
	}
	r.resync(st, emit)
}

// resync looks for a plausible message start at one of the segment starts
// in buf. Octets before the first candidate that is too short to judge are
// kept; octets before an accepted candidate or with no candidate left are
// discarded. An accepted candidate is replayed segment by segment through
// the synchronised path so that each datagram is attributed correctly.
func (r *Reassembler) resync(st *stream, emit func(*Message)) {
	for !st.synced && len(st.buf) > 0 {
		i, wait := -1, false
		for j, rc := range st.recs {
			if !rc.cand {
				continue
			}
			if len(st.buf)-rc.bufOff < probeLen {
				i, wait = j, true
				break
			}
			if plausible(st.buf[rc.bufOff:]) {
				i = j
				break
			}
		}
		if i < 0 {
			r.stats.SkippedBytes += uint64(len(st.buf))
			r.resetPartial(st)
			return
		}
		off := st.recs[i].bufOff
		r.stats.SkippedBytes += uint64(off)
		if wait {
			r.trimFront(st, i)
			return
		}
		r.scratchBuf = append(r.scratchBuf[:0], st.buf[off:]...)
		r.scratchPkt = append(r.scratchPkt[:0], st.arena...)
		r.scratchRecs = append(r.scratchRecs[:0], st.recs[i:]...)
		r.resetPartial(st)
		st.synced = true
		r.stats.Resyncs++
		for j, rc := range r.scratchRecs {
			lo, hi := rc.bufOff-off, len(r.scratchBuf)
			if j+1 < len(r.scratchRecs) {
				hi = r.scratchRecs[j+1].bufOff - off
			}
			piece, pkt := r.scratchBuf[lo:hi], r.scratchPkt[rc.off:rc.off+rc.n]
			switch {
			case st.synced:
				r.consumeSynced(st, piece, pkt, rc.t, emit)
			case len(st.buf) > 0 || rc.cand:
				// Framing was lost again: collect the rest as a new probe
				// and go round once more.
				if !r.store(st, piece, pkt, rc.t, rc.cand) {
					r.stats.SkippedBytes += uint64(len(st.buf) + len(piece))
					r.resetPartial(st)
				}
			default:
				r.stats.SkippedBytes += uint64(len(piece))
			}
		}
		if cap(r.scratchBuf) > 64<<10 {
			r.scratchBuf = nil
		}
		if cap(r.scratchPkt) > 64<<10 {
			r.scratchPkt = nil
		}
	}
}

// trimFront drops buf octets and datagrams before record i.
func (r *Reassembler) trimFront(st *stream, i int) {
	if i == 0 {
		return
	}
	off, aoff := st.recs[i].bufOff, st.recs[i].off
	st.buf = st.buf[:copy(st.buf, st.buf[off:])]
	st.arena = st.arena[:copy(st.arena, st.arena[aoff:])]
	st.recs = st.recs[:copy(st.recs, st.recs[i:])]
	for j := range st.recs {
		st.recs[j].bufOff -= off
		st.recs[j].off -= aoff
	}
	d := i * recCost
	st.mem -= d
	r.mem -= d
}

// emitMsg hands out a message whose last octet is in the segment (data,
// pkt, t) being consumed; the earlier octets' datagrams are in the arena.
func (r *Reassembler) emitMsg(st *stream, data, pkt []byte, t int64, emit func(*Message)) {
	r.pkts, r.times = r.pkts[:0], r.times[:0]
	t0 := t
	for i, rc := range st.recs {
		if i == 0 {
			t0 = rc.t
		}
		r.pkts = append(r.pkts, st.arena[rc.off:rc.off+rc.n:rc.off+rc.n])
		r.times = append(r.times, rc.t)
	}
	r.pkts = append(r.pkts, pkt)
	r.times = append(r.times, t)
	r.msg = Message{Src: st.key.src, Dst: st.key.dst, Time: t0, Data: data, Packets: r.pkts, Times: r.times}
	r.stats.Messages++
	if emit != nil {
		emit(&r.msg)
	}
}

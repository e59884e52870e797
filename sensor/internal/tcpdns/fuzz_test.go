package tcpdns

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

// fuzzReader hands out fuzz bytes, then zeros once they run out, so that
// every input decodes to something.
type fuzzReader struct {
	b []byte
	i int
}

func (f *fuzzReader) byte() byte {
	if f.i >= len(f.b) {
		f.i++
		return 0
	}
	f.i++
	return f.b[f.i-1]
}

func (f *fuzzReader) u16() int { return int(f.byte())<<8 | int(f.byte()) }
func (f *fuzzReader) u32() uint32 {
	return uint32(f.u16())<<16 | uint32(f.u16())
}
func (f *fuzzReader) done() bool { return f.i >= len(f.b) }

// fuzzPkt encodes the octet range a segment carries, and its capture time,
// so that Packets and Times can be checked against the stream.
func fuzzPkt(off, n int, t int64) []byte {
	p := make([]byte, 16)
	binary.BigEndian.PutUint32(p[0:], uint32(off))
	binary.BigEndian.PutUint32(p[4:], uint32(n))
	binary.BigEndian.PutUint64(p[8:], uint64(t))
	return p
}

func FuzzReassembler(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 1, 3, 0, 40, 0, 100, 1, 7, 2, 9, 200, 1})
	f.Add([]byte{0xff, 0xff, 0xff, 0xf0, 5, 0, 12, 0, 13, 3, 1, 1, 1, 1, 1, 4, 4, 4, 4, 0x82, 0x91, 7})
	f.Add(append([]byte{0x12, 0x34, 0x56, 0x78, 2, 0x0b, 0xb8, 0, 30}, framed(dnsMsg(1, 40), dnsMsg(2, 60))...))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzClean(t, data)
		fuzzHostile(t, data)
	})
}

// fuzzClean builds a valid SYN-started stream of framed messages, cuts it
// at fuzz-chosen points, delivers the segments with bounded reordering,
// duplicates and overlapping retransmissions, and requires every message
// exactly once, intact, with correct Packets and Times.
func fuzzClean(t *testing.T, data []byte) {
	in := &fuzzReader{b: data}
	isn := in.u32()
	nmsg := 1 + int(in.byte()%8)
	var msgs [][]byte
	var stream []byte
	for i := range nmsg {
		n := hdrLen + in.u16()%3000
		m := make([]byte, n)
		binary.BigEndian.PutUint16(m, uint16(i))
		for j := 2; j < n; j++ {
			m[j] = byte(j * (i + 1))
		}
		msgs = append(msgs, m)
		stream = binary.BigEndian.AppendUint16(stream, uint16(n))
		stream = append(stream, m...)
	}
	type piece struct{ off, n int }
	var pieces []piece
	for off := 0; off < len(stream); {
		n := 1 + int(in.byte())*int(in.byte()%8+1)
		n = min(n, len(stream)-off)
		pieces = append(pieces, piece{off, n})
		off += n
	}
	// Arrival order: pieces are shuffled within blocks of four (so at most
	// three wait out of order, well inside the default caps), and each may
	// be sent twice or be retransmitted merged with its successor.
	order := append([]piece(nil), pieces...)
	for i := range order {
		c := in.byte()
		if j := i + int(c&3); j < len(order) && j/4 == i/4 {
			order[i], order[j] = order[j], order[i]
		}
	}
	var sent []piece
	for i, p := range order {
		sent = append(sent, p)
		c := in.byte()
		if c&0x10 != 0 {
			sent = append(sent, p)
		}
		if c&0x20 != 0 && i+1 < len(order) && order[i+1].off == p.off+p.n {
			sent = append(sent, piece{p.off, p.n + order[i+1].n})
		}
	}

	// One-octet segments cost a datagram copy and a record each, so a
	// 3000-octet message cut that finely needs more than the default
	// per-stream cap (which is meant to refuse exactly that from a hostile
	// peer); raise it so that only reassembly is under test here.
	r := New(Config{MaxBufferPerStream: 4 << 20})
	var got [][]byte
	emit := func(m *Message) {
		got = append(got, bytes.Clone(m.Data))
		if len(m.Packets) == 0 || len(m.Packets) != len(m.Times) || m.Times[0] != m.Time {
			t.Fatalf("message %d: %d packets, %d times", len(got), len(m.Packets), len(m.Times))
		}
		// The frame's octet range in the stream.
		k := len(got) - 1
		if k >= len(msgs) {
			t.Fatalf("more messages than sent")
		}
		start := 0
		for _, mm := range msgs[:k] {
			start += 2 + len(mm)
		}
		end := start + 2 + len(msgs[k])
		prevEnd := -1
		for i, p := range m.Packets {
			off := int(binary.BigEndian.Uint32(p[0:]))
			n := int(binary.BigEndian.Uint32(p[4:]))
			ts := int64(binary.BigEndian.Uint64(p[8:]))
			if ts != m.Times[i] {
				t.Fatalf("message %d packet %d: time %d, Times says %d", k, i, ts, m.Times[i])
			}
			if off+n <= start || off >= end {
				t.Fatalf("message %d packet %d [%d,%d) outside frame [%d,%d)", k, i, off, off+n, start, end)
			}
			if i == 0 && off > start || i > 0 && off > prevEnd || i == len(m.Packets)-1 && off+n < end {
				t.Fatalf("message %d packets do not cover [%d,%d) in order", k, start, end)
			}
			prevEnd = off + n
		}
	}
	r.Add(Segment{Src: cli, Dst: srv, Seq: isn, SYN: true}, emit)
	for i, p := range sent {
		ts := int64(i + 1)
		r.Add(Segment{Src: cli, Dst: srv, Seq: isn + 1 + uint32(p.off), Payload: stream[p.off : p.off+p.n], Time: ts, Packet: fuzzPkt(p.off, p.n, ts)}, emit)
		checkCaps(t, r)
	}
	r.Flush(emit)
	if len(got) != len(msgs) {
		t.Fatalf("%d messages out, %d in (stats %+v)", len(got), len(msgs), r.Stats())
	}
	for i := range msgs {
		if !bytes.Equal(got[i], msgs[i]) {
			t.Fatalf("message %d differs", i)
		}
	}
	if s := r.Stats(); s.Gaps != 0 || s.Incomplete+s.IncompleteAtFlush != 0 || r.MemoryBytes() != 0 {
		t.Fatalf("clean stream: stats %+v, memory %d", s, r.MemoryBytes())
	}
}

// fuzzHostile feeds arbitrary segments on a few streams under tiny caps and
// checks that nothing panics and the caps hold.
func fuzzHostile(t *testing.T, data []byte) {
	in := &fuzzReader{b: data}
	r := New(Config{MaxStreams: 3, MaxBufferPerStream: 700, MaxTotalBytes: 1600, MaxOutOfOrder: 4, GapTimeout: 50, IdleTimeout: 400})
	eps := []netip.AddrPort{cli, srv, netip.MustParseAddrPort("[2001:db8::1]:853")}
	var cursor [9]uint32
	var now int64
	emit := func(m *Message) {
		if len(m.Data) < hdrLen || len(m.Packets) == 0 || len(m.Packets) != len(m.Times) || m.Times[0] != m.Time {
			t.Fatalf("bad message: %d octets, %d packets, %d times", len(m.Data), len(m.Packets), len(m.Times))
		}
	}
	valid := framed(dnsMsg(9, 33))
	for !in.done() {
		op := in.byte()
		sd := int(op % 9)
		src, dst := eps[sd/3], eps[sd%3]
		s := Segment{Src: src, Dst: dst, Time: now}
		flags := in.byte()
		s.SYN = flags&0x07 == 1
		s.FIN = flags&0x07 == 2
		s.RST = flags&0x0f == 3
		delta := int16(in.u16())
		if flags&0x80 == 0 {
			delta %= 64 // mostly near the cursor
		}
		s.Seq = cursor[sd] + uint32(int32(delta))
		n := int(in.byte())
		switch flags >> 4 & 3 {
		case 0:
			for range n {
				s.Payload = append(s.Payload, in.byte())
			}
		case 1:
			s.Payload = valid[:min(n, len(valid))]
		case 2:
			s.Payload = append(append([]byte(nil), valid...), valid[:n%len(valid)]...)
		case 3:
			s.Payload = bytes.Repeat([]byte{in.byte()}, n)
		}
		s.Packet = append(make([]byte, 20), s.Payload...)
		r.Add(s, emit)
		cursor[sd] = s.Seq + uint32(len(s.Payload))
		if s.SYN {
			cursor[sd]++
		}
		checkCaps(t, r)
		now += int64(in.byte())
		if op&0x80 != 0 {
			r.Expire(now, emit)
			checkCaps(t, r)
		}
	}
	r.Flush(emit)
	checkCaps(t, r)
	if r.MemoryBytes() != 0 || r.Streams() != 0 {
		t.Fatalf("after Flush: memory %d streams %d", r.MemoryBytes(), r.Streams())
	}
}

package tcpdns

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

var (
	cli = netip.MustParseAddrPort("192.0.2.1:53000")
	srv = netip.MustParseAddrPort("198.51.100.7:53")
)

// dnsMsg builds a plausible DNS query of exactly n octets (n >= 17) whose ID
// is id, so tests can tell messages apart.
func dnsMsg(id uint16, n int) []byte {
	if n < 17 {
		panic("dnsMsg: too short")
	}
	b := make([]byte, n)
	binary.BigEndian.PutUint16(b[0:], id)
	b[2] = 0x01 // RD
	binary.BigEndian.PutUint16(b[4:], 1)
	// Question: a single label filling the space, then type A, class IN.
	name := n - 12 - 4
	i := 12
	for name > 1 {
		l := min(name-2, 63)
		if l <= 0 {
			break
		}
		b[i] = byte(l)
		for k := 1; k <= l; k++ {
			b[i+k] = 'a'
		}
		i += 1 + l
		name -= 1 + l
	}
	// remaining name octets are zero: the root label (and padding).
	binary.BigEndian.PutUint16(b[n-4:], 1)
	binary.BigEndian.PutUint16(b[n-2:], 1)
	return b
}

// framed concatenates messages with their RFC 7766 length prefixes.
func framed(msgs ...[]byte) []byte {
	var out []byte
	for _, m := range msgs {
		out = binary.BigEndian.AppendUint16(out, uint16(len(m)))
		out = append(out, m...)
	}
	return out
}

// conn builds segments of one direction. Octet offset 0 is the first data
// octet (ISN+1).
type conn struct {
	src, dst netip.AddrPort
	isn      uint32
	n        int // segments built, to make each fake datagram unique
}

func (c *conn) syn(t int64) Segment {
	c.n++
	return Segment{Src: c.src, Dst: c.dst, Seq: c.isn, SYN: true, Time: t, Packet: c.pkt(nil)}
}

// seg is the segment carrying payload at octet offset off.
func (c *conn) seg(off int, payload []byte, t int64) Segment {
	c.n++
	return Segment{Src: c.src, Dst: c.dst, Seq: c.isn + 1 + uint32(off), Payload: payload, Time: t, Packet: c.pkt(payload)}
}

// pkt is a fake IP datagram: a 20-octet "header" carrying a serial number
// followed by the payload.
func (c *conn) pkt(payload []byte) []byte {
	h := make([]byte, 20, 20+len(payload))
	h[0] = 0x45
	binary.BigEndian.PutUint32(h[4:], uint32(c.n))
	binary.BigEndian.PutUint32(h[8:], c.isn)
	return append(h, payload...)
}

// split cuts stream at the given offsets into segments with times 1,2,3...
func (c *conn) split(stream []byte, t0 int64, cuts ...int) []Segment {
	var out []Segment
	prev := 0
	for i, cut := range append(cuts, len(stream)) {
		out = append(out, c.seg(prev, stream[prev:cut], t0+int64(i)))
		prev = cut
	}
	return out
}

type got struct {
	src, dst netip.AddrPort
	time     int64
	data     []byte
	packets  [][]byte
	times    []int64
}

func collector(out *[]got) func(*Message) {
	return func(m *Message) {
		g := got{src: m.Src, dst: m.Dst, time: m.Time, data: bytes.Clone(m.Data), times: append([]int64(nil), m.Times...)}
		for _, p := range m.Packets {
			g.packets = append(g.packets, bytes.Clone(p))
		}
		*out = append(*out, g)
	}
}

// checkStats compares the non-zero fields of want.
func checkStats(t *testing.T, have, want Stats) {
	t.Helper()
	hv, wv := reflect.ValueOf(have), reflect.ValueOf(want)
	for i := range wv.NumField() {
		if w := wv.Field(i).Uint(); w != 0 && hv.Field(i).Uint() != w {
			t.Errorf("Stats.%s = %d, want %d", wv.Type().Field(i).Name, hv.Field(i).Uint(), w)
		}
	}
}

func segsOf(parts ...any) []Segment {
	var out []Segment
	for _, p := range parts {
		switch v := p.(type) {
		case Segment:
			out = append(out, v)
		case []Segment:
			out = append(out, v...)
		default:
			panic(fmt.Sprintf("segsOf: %T", p))
		}
	}
	return out
}

func withFlag(s Segment, f func(*Segment)) Segment { f(&s); return s }

func TestReassembler(t *testing.T) {
	m1, m2, m3, m4 := dnsMsg(1, 40), dnsMsg(2, 100), dnsMsg(3, 29), dnsMsg(4, 300)
	big := dnsMsg(5, 3000)
	type tc struct {
		name  string
		cfg   Config
		build func() []Segment
		// expire, when set, is called with this packet time after the
		// segments and before Flush.
		expire int64
		want   [][]byte
		stats  Stats
		// pre runs before Flush, check after it.
		pre, check func(t *testing.T, r *Reassembler, out []got)
	}
	tests := []tc{
		{
			name: "single message per segment",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1000}
				s := &conn{src: srv, dst: cli, isn: 5000}
				return segsOf(c.syn(1), s.syn(2), c.seg(0, framed(m1), 3), s.seg(0, framed(m2), 4), c.seg(len(framed(m1)), framed(m3), 5))
			},
			want:  [][]byte{m1, m2, m3},
			stats: Stats{Messages: 3, StreamsOpened: 2},
			check: func(t *testing.T, r *Reassembler, out []got) {
				if out[1].src != srv || out[1].dst != cli || out[0].src != cli {
					t.Errorf("directions: %v", out)
				}
				for i, g := range out {
					if len(g.packets) != 1 || !bytes.HasSuffix(g.packets[0], framed(g.data)) || len(g.times) != 1 || g.times[0] != g.time {
						t.Errorf("message %d: packets %d times %v time %d", i, len(g.packets), g.times, g.time)
					}
				}
				if out[0].time != 3 || out[1].time != 4 || out[2].time != 5 {
					t.Errorf("times %d %d %d", out[0].time, out[1].time, out[2].time)
				}
			},
		},
		{
			name: "two messages in one segment",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				return segsOf(c.syn(1), c.seg(0, framed(m1, m2), 2))
			},
			want: [][]byte{m1, m2},
			check: func(t *testing.T, r *Reassembler, out []got) {
				if !bytes.Equal(out[0].packets[0], out[1].packets[0]) || len(out[1].packets) != 1 {
					t.Error("both messages should list the one datagram")
				}
			},
		},
		{
			name: "message split over three segments",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 77}
				return segsOf(c.syn(1), c.split(framed(m2), 10, 30, 60))
			},
			want: [][]byte{m2},
			check: func(t *testing.T, r *Reassembler, out []got) {
				g := out[0]
				if len(g.packets) != 3 || !reflect.DeepEqual(g.times, []int64{10, 11, 12}) || g.time != 10 {
					t.Fatalf("packets %d times %v time %d", len(g.packets), g.times, g.time)
				}
				st := framed(m2)
				for i, want := range [][]byte{st[:30], st[30:60], st[60:]} {
					if !bytes.Equal(g.packets[i][20:], want) {
						t.Errorf("packet %d carries the wrong octets", i)
					}
				}
			},
		},
		{
			name: "one-octet segments",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 9}
				st := framed(m1, m3)
				cuts := make([]int, 0, len(st))
				for i := 1; i < len(st); i++ {
					cuts = append(cuts, i)
				}
				return segsOf(c.syn(1), c.split(st, 100, cuts...))
			},
			want: [][]byte{m1, m3},
			check: func(t *testing.T, r *Reassembler, out []got) {
				if len(out[0].packets) != len(m1)+2 || len(out[1].packets) != len(m3)+2 {
					t.Errorf("packets %d %d", len(out[0].packets), len(out[1].packets))
				}
				if out[1].time != 100+int64(len(m1)+2) {
					t.Errorf("second message time %d", out[1].time)
				}
			},
		},
		{
			name: "length prefix split across segments",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 9}
				st := framed(m1, m2)
				return segsOf(c.syn(1), c.split(st, 10, 1, len(m1)+3, len(m1)+4))
			},
			want: [][]byte{m1, m2},
			check: func(t *testing.T, r *Reassembler, out []got) {
				if len(out[0].packets) != 2 || len(out[1].packets) != 3 {
					t.Errorf("packets %d %d", len(out[0].packets), len(out[1].packets))
				}
			},
		},
		{
			name: "out-of-order arrival",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 4242}
				s := c.split(framed(m2, m4), 10, 50, 120, 200)
				return segsOf(c.syn(1), s[0], s[3], s[2], s[1])
			},
			want:  [][]byte{m2, m4},
			stats: Stats{OutOfOrder: 2},
			check: func(t *testing.T, r *Reassembler, out []got) {
				// Packets are in sequence order, not arrival order.
				if !reflect.DeepEqual(out[0].times, []int64{10, 11}) || !reflect.DeepEqual(out[1].times, []int64{11, 12, 13}) {
					t.Errorf("times %v %v", out[0].times, out[1].times)
				}
			},
		},
		{
			name: "retransmitted duplicate",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				s := c.split(framed(m2, m1), 10, 50)
				return segsOf(c.syn(1), s[0], s[0], s[1], s[1], s[0])
			},
			want:  [][]byte{m2, m1},
			stats: Stats{Duplicates: 3},
		},
		{
			name: "overlapping retransmit",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				st := framed(m2, m1)
				return segsOf(c.syn(1), c.seg(0, st[:50], 1), c.seg(30, st[30:80], 2), c.seg(80, st[80:], 3))
			},
			want:  [][]byte{m2, m1},
			stats: Stats{Overlaps: 1, DuplicateBytes: 20},
		},
		{
			name: "out-of-order overlapping the hole",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				st := framed(m2, m1)
				return segsOf(c.syn(1), c.seg(60, st[60:], 1), c.seg(40, st[40:70], 2), c.seg(0, st[:50], 3))
			},
			want:  [][]byte{m2, m1},
			stats: Stats{OutOfOrder: 2, Overlaps: 2},
		},
		{
			name: "gap at a message boundary then recovery",
			cfg:  Config{GapTimeout: 5},
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				st := framed(m1, m2, m3, m4)
				s := c.split(st, 10, len(m1)+2, len(m1)+len(m2)+4, len(m1)+len(m2)+len(m3)+6)
				// s[1] (m2) is never captured; by the time s[3] arrives the
				// hole is older than GapTimeout.
				return segsOf(c.syn(1), s[0], s[2], withFlag(s[3], func(s *Segment) { s.Time = 100 }))
			},
			want:  [][]byte{m1, m3, m4},
			stats: Stats{Gaps: 1, GapBytes: uint64(len(m2) + 2), Resyncs: 1},
		},
		{
			name: "gap inside a message keeps framing",
			cfg:  Config{GapTimeout: 5},
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				st := framed(m2, m1)
				s := c.split(st, 10, 30, 60, 102)
				return segsOf(c.syn(1), s[0], s[2], withFlag(s[3], func(s *Segment) { s.Time = 100 }))
			},
			want:  [][]byte{m1},
			stats: Stats{Gaps: 1, GapBytes: 30, Incomplete: 1},
			check: func(t *testing.T, r *Reassembler, out []got) {
				if r.Stats().Resyncs != 0 {
					t.Error("framing should have survived the hole")
				}
			},
		},
		{
			name: "gap resolved by the out-of-order limit",
			cfg:  Config{MaxOutOfOrder: 2, GapTimeout: time.Hour},
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				st := framed(m1, m2, m3, m4)
				s := c.split(st, 10, len(m1)+2, len(m1)+len(m2)+4, len(m1)+len(m2)+len(m3)+6, len(m1)+len(m2)+len(m3)+20)
				return segsOf(c.syn(1), s[0], s[2], s[3], s[4])
			},
			want:  [][]byte{m1, m3, m4},
			stats: Stats{Gaps: 1},
		},
		{
			name: "mid-stream start",
			build: func() []Segment {
				c := &conn{src: srv, dst: cli, isn: 0x1234}
				st := framed(m2, m1, m4)
				// Capture starts inside m2: its tail is not plausible.
				return segsOf(c.seg(60, st[60:102], 1), c.seg(102, st[102:150], 2), c.seg(150, st[150:], 3))
			},
			want:  [][]byte{m1, m4},
			stats: Stats{MidstreamStarts: 1, Resyncs: 1, SkippedBytes: 42},
		},
		{
			name: "mid-stream start with short segments",
			build: func() []Segment {
				c := &conn{src: srv, dst: cli, isn: 0x1234}
				st := framed(m2, m1)
				// Tail of m2 in 3-octet pieces, then m1's prefix alone,
				// then m1's body in two.
				var segs []Segment
				for off := 90; off < 102; off += 3 {
					segs = append(segs, c.seg(off, st[off:off+3], int64(off)))
				}
				return append(segs, c.seg(102, st[102:104], 200), c.seg(104, st[104:110], 201), c.seg(110, st[110:], 202))
			},
			want:  [][]byte{m1},
			stats: Stats{MidstreamStarts: 1, Resyncs: 1, SkippedBytes: 12},
			check: func(t *testing.T, r *Reassembler, out []got) {
				if !reflect.DeepEqual(out[0].times, []int64{200, 201, 202}) {
					t.Errorf("times %v", out[0].times)
				}
			},
		},
		{
			name: "RST mid-message",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				st := framed(m1, m2)
				return segsOf(c.syn(1), c.seg(0, st[:60], 2), withFlag(c.seg(60, nil, 3), func(s *Segment) { s.RST = true }),
					c.seg(60, st[60:], 4))
			},
			want:  [][]byte{m1},
			stats: Stats{Incomplete: 1, StreamsClosed: 1, MidstreamStarts: 1},
		},
		{
			name: "FIN mid-message",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				st := framed(m1, m2)
				return segsOf(c.syn(1), withFlag(c.seg(0, st[:60], 2), func(s *Segment) { s.FIN = true }))
			},
			want:  [][]byte{m1},
			stats: Stats{Incomplete: 1, StreamsClosed: 1},
			pre: func(t *testing.T, r *Reassembler, out []got) {
				if r.Streams() != 0 || r.MemoryBytes() != 0 {
					t.Errorf("streams %d memory %d after FIN", r.Streams(), r.MemoryBytes())
				}
			},
		},
		{
			name: "FIN before the last data arrives",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				st := framed(m1, m2)
				s := c.split(st, 10, 60)
				return segsOf(c.syn(1), withFlag(s[1], func(s *Segment) { s.FIN = true }), s[0])
			},
			want:  [][]byte{m1, m2},
			stats: Stats{StreamsClosed: 1, OutOfOrder: 1},
		},
		{
			name: "sequence wrap-around",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 0xffffffff - 50}
				st := framed(m2, m4)
				s := c.split(st, 10, 40, 80, 200)
				return segsOf(c.syn(1), s[0], s[2], s[1], s[1], s[3])
			},
			want:  [][]byte{m2, m4},
			stats: Stats{OutOfOrder: 1, Duplicates: 1},
		},
		{
			name: "too many streams evicts the least recently used",
			cfg:  Config{MaxStreams: 2},
			build: func() []Segment {
				a := &conn{src: cli, dst: srv, isn: 1}
				b := &conn{src: srv, dst: cli, isn: 2}
				d := &conn{src: netip.MustParseAddrPort("192.0.2.9:1000"), dst: srv, isn: 3}
				sa := a.split(framed(m2), 10, 30)
				return segsOf(a.syn(1), b.syn(2), sa[0], b.seg(0, framed(m1), 3), d.syn(4), d.seg(0, framed(m3), 5), sa[1])
			},
			// a is the LRU when d arrives: its first half is lost, and its
			// second half is a mid-stream start that is not plausible.
			want:  [][]byte{m1, m3},
			stats: Stats{StreamsEvicted: 2, BytesDroppedCap: 30, Incomplete: 1},
		},
		{
			name: "huge declared length is skipped, not allocated",
			cfg:  Config{MaxBufferPerStream: 2048},
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				st := framed(big, m1)
				var segs []Segment
				segs = append(segs, c.syn(1))
				for off := 0; off < len(st); off += 1000 {
					segs = append(segs, c.seg(off, st[off:min(off+1000, len(st))], int64(off)))
				}
				return segs
			},
			want:  [][]byte{m1},
			stats: Stats{OversizeFrames: 1, SkippedBytes: uint64(len(big) + 2)},
		},
		{
			name: "datagram copies count against the per-stream cap",
			cfg:  Config{MaxBufferPerStream: 2000},
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				st := framed(m4, m1)
				cuts := []int{}
				for i := 10; i < len(m4)+2; i += 10 {
					cuts = append(cuts, i)
				}
				return segsOf(c.syn(1), c.split(st, 10, cuts...))
			},
			want:  [][]byte{m1},
			stats: Stats{FramesDroppedCap: 1},
		},
		{
			name: "total cap evicts another stream",
			cfg:  Config{MaxTotalBytes: 5000},
			build: func() []Segment {
				a := &conn{src: cli, dst: srv, isn: 1}
				b := &conn{src: srv, dst: cli, isn: 2}
				sa := a.split(framed(big), 10, 1000)
				sb := b.split(framed(big), 20, 1000, 1500)
				return segsOf(a.syn(1), b.syn(2), sa[0], sb[0], sb[1])
			},
			stats: Stats{StreamsEvicted: 1},
			pre: func(t *testing.T, r *Reassembler, out []got) {
				if r.MemoryBytes() > 5000 || r.Streams() != 1 {
					t.Errorf("memory %d streams %d", r.MemoryBytes(), r.Streams())
				}
			},
		},
		{
			name: "garbage length resynchronises",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				bad := []byte{0, 5, 1, 2, 3, 4, 5}
				return segsOf(c.syn(1), c.seg(0, append(bad, framed(m1)...), 2), c.seg(len(bad)+len(m1)+2, framed(m2), 3))
			},
			want:  [][]byte{m2},
			stats: Stats{GarbageFrames: 1, Resyncs: 1},
		},
		{
			name:   "idle expiry with packet time",
			cfg:    Config{IdleTimeout: 100, GapTimeout: 1000},
			expire: 250,
			build: func() []Segment {
				a := &conn{src: cli, dst: srv, isn: 1}
				b := &conn{src: srv, dst: cli, isn: 2}
				st := framed(m1, m2)
				sa := a.split(st, 100, 42, 60)
				// a: m1, then a hole at [42,60) inside m2 that expiry gives
				// up on; the rest of m2 is not plausible. b stays active.
				return segsOf(a.syn(100), sa[0], sa[2], b.syn(200), b.seg(0, framed(m3), 200))
			},
			want:  [][]byte{m1, m3},
			stats: Stats{StreamsExpired: 1, Gaps: 1},
			pre: func(t *testing.T, r *Reassembler, out []got) {
				if r.Streams() != 1 {
					t.Errorf("streams %d after expiry, want 1", r.Streams())
				}
			},
		},
		{
			name: "Packets of a segment shared by two messages",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				st := framed(m2, m1)
				return segsOf(c.syn(1), c.split(st, 10, 40, 80, 110))
			},
			want: [][]byte{m2, m1},
			check: func(t *testing.T, r *Reassembler, out []got) {
				if !reflect.DeepEqual(out[0].times, []int64{10, 11, 12}) || !reflect.DeepEqual(out[1].times, []int64{12, 13}) {
					t.Fatalf("times %v %v", out[0].times, out[1].times)
				}
				if !bytes.Equal(out[0].packets[2], out[1].packets[0]) || out[1].time != 12 {
					t.Error("the shared datagram should head the second message")
				}
			},
		},
		{
			name: "flush replays across a hole",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				s := c.split(framed(m2, m1), 10, 50, 80)
				return segsOf(c.syn(1), s[0], s[2])
			},
			want:  [][]byte{m1},
			stats: Stats{Incomplete: 1, Gaps: 1},
		},
		{
			name: "flush with a partial message",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				return segsOf(c.syn(1), c.seg(0, framed(m2)[:50], 2))
			},
			stats: Stats{IncompleteAtFlush: 1},
		},
		{
			name: "SYN of a new connection on the same addresses",
			build: func() []Segment {
				c := &conn{src: cli, dst: srv, isn: 1}
				d := &conn{src: cli, dst: srv, isn: 900000}
				return segsOf(c.syn(1), c.seg(0, framed(m2)[:50], 2), d.syn(3), d.seg(0, framed(m1), 4))
			},
			want:  [][]byte{m1},
			stats: Stats{Incomplete: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(tt.cfg)
			var out []got
			emit := collector(&out)
			for _, s := range tt.build() {
				r.Add(s, emit)
				checkCaps(t, r)
			}
			if tt.expire != 0 {
				r.Expire(tt.expire, emit)
			}
			if tt.pre != nil {
				tt.pre(t, r, out)
			}
			r.Flush(emit)
			checkCaps(t, r)
			if r.Streams() != 0 || r.MemoryBytes() != 0 {
				t.Errorf("after Flush: streams %d memory %d", r.Streams(), r.MemoryBytes())
			}
			if len(out) != len(tt.want) {
				t.Fatalf("got %d messages, want %d", len(out), len(tt.want))
			}
			for i, g := range out {
				if !bytes.Equal(g.data, tt.want[i]) {
					t.Errorf("message %d differs: got id %x len %d", i, g.data[:2], len(g.data))
				}
				if len(g.packets) == 0 || len(g.packets) != len(g.times) || g.times[0] != g.time {
					t.Errorf("message %d: %d packets, times %v, time %d", i, len(g.packets), g.times, g.time)
				}
			}
			if tt.check != nil {
				tt.check(t, r, out)
			}
			checkStats(t, r.Stats(), tt.stats)
		})
	}
}

// checkCaps verifies the accounting invariants.
func checkCaps(t testing.TB, r *Reassembler) {
	t.Helper()
	sum := 0
	for _, st := range r.streams {
		if st.mem > r.perStream || st.mem < 0 {
			t.Fatalf("stream memory %d outside [0,%d]", st.mem, r.perStream)
		}
		want := cap(st.buf) + cap(st.arena) + len(st.recs)*recCost
		for _, p := range st.pend {
			want += len(p.b) + pendOverhead
		}
		if st.mem != want {
			t.Fatalf("stream accounted %d, holds %d", st.mem, want)
		}
		sum += st.mem
	}
	if sum != r.mem || r.mem > r.total {
		t.Fatalf("total accounted %d, streams hold %d, cap %d", r.mem, sum, r.total)
	}
	if len(r.streams) > r.maxStreams {
		t.Fatalf("%d streams, cap %d", len(r.streams), r.maxStreams)
	}
}

func TestHugeLengthNotAllocated(t *testing.T) {
	r := New(Config{})
	c := &conn{src: cli, dst: srv, isn: 1}
	emit := func(*Message) {}
	r.Add(c.syn(1), emit)
	head := append([]byte{0xff, 0xff}, dnsMsg(1, 98)...)
	r.Add(c.seg(0, head, 2), emit)
	if m := r.MemoryBytes(); m == 0 || m > 1024 {
		t.Fatalf("memory %d after a 100-octet head of a 65535-octet message", m)
	}
	r.Add(Segment{Src: cli, Dst: srv, Seq: 2 + 100, RST: true}, emit)
	if r.MemoryBytes() != 0 || r.Stats().Incomplete != 1 {
		t.Fatalf("memory %d, stats %+v", r.MemoryBytes(), r.Stats())
	}
}

func TestPlausible(t *testing.T) {
	ok := framed(dnsMsg(7, 40))
	if !plausible(ok) {
		t.Fatal("a query should be plausible")
	}
	mut := func(f func(b []byte)) []byte { b := bytes.Clone(ok); f(b); return b }
	for name, b := range map[string][]byte{
		"short length": mut(func(b []byte) { b[1] = 11 }),
		"opcode 15":    mut(func(b []byte) { b[4] |= 0x78 }),
		"opcode 3":     mut(func(b []byte) { b[4] |= 3 << 3 }),
		"Z bit":        mut(func(b []byte) { b[5] |= 0x40 }),
		"qdcount 2":    mut(func(b []byte) { b[7] = 2 }),
		"ancount huge": mut(func(b []byte) { b[8] = 0xff }),
	} {
		if plausible(b) {
			t.Errorf("%s: plausible", name)
		}
	}
}

func TestExpireKeepsActive(t *testing.T) {
	r := New(Config{IdleTimeout: 10})
	c := &conn{src: cli, dst: srv, isn: 1}
	var out []got
	emit := collector(&out)
	r.Add(c.syn(100), emit)
	r.Add(c.seg(0, framed(dnsMsg(1, 40))[:20], 105), emit)
	r.Expire(115, emit)
	if r.Streams() != 1 {
		t.Fatal("stream expired before IdleTimeout")
	}
	r.Expire(116, emit)
	if r.Streams() != 0 || r.Stats().StreamsExpired != 1 || r.Stats().Incomplete != 1 {
		t.Fatalf("streams %d stats %+v", r.Streams(), r.Stats())
	}
}

func TestGapTimeoutInExpire(t *testing.T) {
	r := New(Config{IdleTimeout: time.Hour, GapTimeout: 10})
	c := &conn{src: cli, dst: srv, isn: 1}
	m1, m2 := dnsMsg(1, 40), dnsMsg(2, 50)
	var out []got
	emit := collector(&out)
	r.Add(c.syn(100), emit)
	r.Add(c.seg(len(m1)+2, framed(m2), 101), emit) // m1's segment lost
	r.Expire(105, emit)
	if len(out) != 0 {
		t.Fatal("hole given up before GapTimeout")
	}
	r.Expire(112, emit)
	if len(out) != 1 || !bytes.Equal(out[0].data, m2) {
		t.Fatalf("got %d messages after the gap timeout", len(out))
	}
}

// steadyState builds a long-lived connection in both directions, ready for
// one query and one response per segment.
func steadyState(tb testing.TB) (r *Reassembler, q, a *Segment, step func()) {
	r = New(Config{})
	c := &conn{src: cli, dst: srv, isn: 1}
	s := &conn{src: srv, dst: cli, isn: 2}
	emit := func(*Message) {}
	r.Add(c.syn(1), emit)
	r.Add(s.syn(2), emit)
	qf, af := framed(dnsMsg(1, 45)), framed(dnsMsg(2, 180))
	qs, as := c.seg(0, qf, 3), s.seg(0, af, 4)
	q, a = &qs, &as
	step = func() {
		q.Seq += uint32(len(qf))
		a.Seq += uint32(len(af))
		q.Time += 2
		a.Time += 2
	}
	return r, q, a, step
}

func TestAllocsSteadyState(t *testing.T) {
	r, q, a, step := steadyState(t)
	n := 0
	emit := func(m *Message) { n++ }
	allocs := testing.AllocsPerRun(1000, func() {
		r.Add(*q, emit)
		r.Add(*a, emit)
		step()
	})
	if allocs != 0 {
		t.Errorf("%v allocations per query/response", allocs)
	}
	if n != 2002 {
		t.Errorf("%d messages", n)
	}

	// A response split over two segments reuses the stream's buffer.
	af := framed(dnsMsg(3, 1400))
	c := &conn{src: srv, dst: cli, isn: a.Seq - 1}
	s1, s2 := c.seg(0, af[:700], 0), c.seg(700, af[700:], 0)
	allocs = testing.AllocsPerRun(1000, func() {
		r.Add(s1, emit)
		r.Add(s2, emit)
		s1.Seq += uint32(len(af))
		s2.Seq += uint32(len(af))
	})
	if allocs != 0 {
		t.Errorf("%v allocations per split response", allocs)
	}

	// Connection churn: SYN, query, FIN, on pooled streams.
	m := framed(dnsMsg(4, 40))
	isn := uint32(1)
	allocs = testing.AllocsPerRun(1000, func() {
		c := Segment{Src: cli, Dst: srv, Seq: isn, SYN: true}
		r.Add(c, emit)
		c.SYN, c.Seq, c.Payload, c.FIN = false, isn+1, m, true
		r.Add(c, emit)
		isn += 1000
	})
	if allocs > 0.1 {
		t.Errorf("%v allocations per short connection", allocs)
	}
}

func BenchmarkReassembler(b *testing.B) {
	r, q, a, step := steadyState(b)
	emit := func(*Message) {}
	b.ReportAllocs()
	b.SetBytes(int64(len(q.Payload) + len(a.Payload)))
	for b.Loop() {
		r.Add(*q, emit)
		r.Add(*a, emit)
		step()
	}
}

func BenchmarkReassemblerSplit(b *testing.B) {
	r := New(Config{})
	c := &conn{src: srv, dst: cli, isn: 2}
	emit := func(*Message) {}
	r.Add(c.syn(1), emit)
	af := framed(dnsMsg(3, 4000))
	segs := c.split(af, 10, 1448, 2896)
	b.ReportAllocs()
	b.SetBytes(int64(len(af)))
	for b.Loop() {
		for i := range segs {
			r.Add(segs[i], emit)
			segs[i].Seq += uint32(len(af))
		}
	}
}

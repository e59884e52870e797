package defrag

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/sensor/internal/decode"
)

var src4, dst4 = netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.2")

// frag4 builds an IPv4 fragment of a UDP datagram: data is the fragment's share of the upper layer.
func frag4(id uint16, off int, more bool, data []byte) []byte {
	b := []byte{0x45, 0, 0, 0, byte(id >> 8), byte(id), 0, 0, 64, 17, 0, 0}
	binary.BigEndian.PutUint16(b[2:], uint16(20+len(data)))
	fo := uint16(off / 8)
	if more {
		fo |= 0x2000
	}
	binary.BigEndian.PutUint16(b[6:], fo)
	b = append(append(b, src4.AsSlice()...), dst4.AsSlice()...)
	return append(b, data...)
}

func frag6(id uint32, off int, more bool, data []byte) []byte {
	b := []byte{0x60, 0, 0, 0, 0, 0, 44, 64}
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(data)))
	b = append(b, netip.MustParseAddr("2001:db8::1").AsSlice()...)
	b = append(b, netip.MustParseAddr("2001:db8::2").AsSlice()...)
	fo := uint16(off)
	if more {
		fo |= 1
	}
	b = append(b, 17, 0, byte(fo>>8), byte(fo), 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[len(b)-4:], id)
	return append(b, data...)
}

func udpDatagram(n int) []byte {
	b := make([]byte, 8+n)
	binary.BigEndian.PutUint16(b, 5300)
	binary.BigEndian.PutUint16(b[2:], 53)
	binary.BigEndian.PutUint16(b[4:], uint16(8+n))
	for i := 8; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

func add(t *testing.T, r *Reassembler, pkt []byte, now int64) *Datagram {
	t.Helper()
	var p decode.Packet
	if res := decode.DecodeIP(pkt, &p); res != decode.OK || !p.Frag {
		t.Fatalf("fragment does not decode: %v frag=%v", res, p.Frag)
	}
	return r.Add(&p, now)
}

func TestReassembleOutOfOrderBothFamilies(t *testing.T) {
	whole := udpDatagram(3000)
	for _, mk := range []func(off int, more bool, d []byte) []byte{
		func(off int, more bool, d []byte) []byte { return frag4(7, off, more, d) },
		func(off int, more bool, d []byte) []byte { return frag6(7, off, more, d) },
	} {
		r := New(Config{})
		f0, f1, f2 := mk(0, true, whole[:1232]), mk(1232, true, whole[1232:2464]), mk(2464, false, whole[2464:])
		if d := add(t, r, f2, 3); d != nil {
			t.Fatal("complete after one fragment")
		}
		if d := add(t, r, f0, 1); d != nil {
			t.Fatal("complete after two fragments")
		}
		d := add(t, r, f1, 2)
		if d == nil {
			t.Fatal("not complete after all fragments")
		}
		if !bytes.Equal(d.L4, whole) || d.Proto != 17 {
			t.Fatalf("reassembled %d octets proto %d", len(d.L4), d.Proto)
		}
		// Stored in offset order, with their own capture times.
		if !bytes.Equal(d.Frags[0], f0) || !bytes.Equal(d.Frags[2], f2) || d.Times[0] != 1 || d.Times[2] != 3 {
			t.Error("fragments not kept in offset order with their times")
		}
		if r.Pending() != 0 || r.Bytes() != 0 {
			t.Errorf("state left: %d pending, %d bytes", r.Pending(), r.Bytes())
		}
	}
}

func TestOverlapDuplicateExpiryAndCaps(t *testing.T) {
	whole := udpDatagram(2000)
	r := New(Config{Timeout: time.Second, MaxDatagrams: 2, MaxFragments: 3})
	add(t, r, frag4(1, 0, true, whole[:1000]), 0)
	add(t, r, frag4(1, 0, true, whole[:1000]), 0)
	if s := r.Stats(); s.Duplicates != 1 {
		t.Errorf("duplicates %d", s.Duplicates)
	}
	add(t, r, frag4(1, 992, false, whole[992:]), 0) // overlaps the first by 8 octets
	if s := r.Stats(); s.Overlaps != 1 || r.Pending() != 0 {
		t.Errorf("overlap: %+v pending %d", s, r.Pending())
	}
	add(t, r, frag4(2, 0, true, whole[:1000]), 0)
	add(t, r, frag4(3, 0, true, whole[:1000]), 0)
	add(t, r, frag4(4, 0, true, whole[:1000]), 0) // evicts id 2
	if s := r.Stats(); s.Evicted != 1 || r.Pending() != 2 {
		t.Errorf("evicted %d pending %d", s.Evicted, r.Pending())
	}
	r.Expire(2e9)
	if s := r.Stats(); s.Expired != 2 || r.Pending() != 0 || r.Bytes() != 0 {
		t.Errorf("expired %d pending %d bytes %d", s.Expired, r.Pending(), r.Bytes())
	}
	for i := 0; i < 4; i++ {
		add(t, r, frag4(9, i*8, true, whole[i*8:i*8+8]), 3e9)
	}
	if s := r.Stats(); s.TooMany != 1 {
		t.Errorf("TooMany %d", s.TooMany)
	}
}

// TestFIFOStaysBounded: completed datagrams behind a long-lived incomplete one must not make the
// FIFO grow with traffic.
func TestFIFOStaysBounded(t *testing.T) {
	whole := udpDatagram(16)
	r := New(Config{MaxDatagrams: 8, Timeout: time.Hour})
	add(t, r, frag4(60000, 0, true, whole[:8]), 0)
	for i := 0; i < 1000; i++ {
		add(t, r, frag4(uint16(i), 0, true, whole[:8]), 1)
		if add(t, r, frag4(uint16(i), 8, false, whole[8:]), 1) == nil {
			t.Fatal("not completed")
		}
	}
	if len(r.fifo) > 2*8+1 {
		t.Errorf("FIFO holds %d entries", len(r.fifo))
	}
}

package pktbuild

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// valid checks the IPv4 header checksum and the transport checksum of pkt with the textbook
// 16-bit loop, independent of internal/inet.
func valid(t *testing.T, pkt []byte, v4 bool, proto byte) {
	t.Helper()
	sum := func(parts ...[]byte) uint16 {
		var s uint32
		for _, b := range parts {
			for i := 0; i+1 < len(b); i += 2 {
				s += uint32(binary.BigEndian.Uint16(b[i:]))
			}
			if len(b)%2 == 1 {
				t.Fatal("odd part")
			}
		}
		for s>>16 != 0 {
			s = s&0xffff + s>>16
		}
		return uint16(s)
	}
	var hl int
	var src, dst []byte
	if v4 {
		hl, src, dst = 20, pkt[12:16], pkt[16:20]
		if sum(pkt[:20]) != 0xffff {
			t.Errorf("IPv4 header checksum wrong: % x", pkt[:20])
		}
	} else {
		hl, src, dst = 40, pkt[8:24], pkt[24:40]
	}
	l4 := pkt[hl:]
	pad := l4
	if len(l4)%2 == 1 {
		pad = append(append([]byte(nil), l4...), 0)
	}
	ph := binary.BigEndian.AppendUint16([]byte{0, proto}, uint16(len(l4)))
	if sum(src, dst, ph, pad) != 0xffff {
		t.Errorf("transport checksum wrong (proto %d, v4 %v)", proto, v4)
	}
}

func TestChecksums(t *testing.T) {
	for _, pair := range [][2]string{{"198.51.100.2:40000", "192.0.2.10:53"}, {"[2001:db8:1::2]:40000", "[2001:db8:2::10]:53"}} {
		src, dst := netip.MustParseAddrPort(pair[0]), netip.MustParseAddrPort(pair[1])
		for _, msg := range [][]byte{{1, 2, 3}, make([]byte, 512), {0xff, 0xff, 0xff, 0xff}} {
			valid(t, AppendUDP(nil, src, dst, msg), src.Addr().Is4(), 17)
			valid(t, AppendTCP([]byte("prefix"), src, dst, 7, msg)[6:], src.Addr().Is4(), 6)
		}
	}
}

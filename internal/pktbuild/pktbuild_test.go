package pktbuild

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/sie-europe/dnssensor/internal/inet"
)

// valid checks the IPv4 header checksum and the transport checksum of pkt with the textbook
// 16-bit loop (inet.Reference), independent of the builder's inet.Sum.
func valid(t *testing.T, pkt []byte, v4 bool, proto byte) {
	t.Helper()
	var hl int
	var src, dst []byte
	if v4 {
		hl, src, dst = 20, pkt[12:16], pkt[16:20]
		if inet.Reference(pkt[:20]) != 0xffff {
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
	if inet.Reference(src, dst, ph, pad) != 0xffff {
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

func TestICMPUnreachableChecksums(t *testing.T) {
	quoted := AppendUDP(nil, netip.MustParseAddrPort("198.51.100.2:40000"), netip.MustParseAddrPort("192.0.2.10:53"), []byte{1, 2, 3})
	p4 := AppendICMPUnreachable(nil, netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("198.51.100.2"), quoted)
	if inet.Reference(p4[:20]) != 0xffff || inet.Reference(p4[20:]) != 0xffff || p4[9] != 1 || p4[20] != 3 || p4[21] != 3 {
		t.Errorf("ICMP: % x", p4[:28])
	}
	from, to := netip.MustParseAddr("2001:db8:2::10"), netip.MustParseAddr("2001:db8:1::2")
	p6 := AppendICMPUnreachable(nil, from, to, quoted)
	body := p6[40:]
	pad := body
	if len(body)%2 == 1 {
		pad = append(append([]byte(nil), body...), 0)
	}
	ph := []byte{0, 0, byte(len(body) >> 8), byte(len(body)), 0, 0, 0, 58}
	if inet.Reference(from.AsSlice(), to.AsSlice(), ph, pad) != 0xffff || p6[6] != 58 || body[0] != 1 || body[1] != 4 {
		t.Errorf("ICMPv6: % x", p6[:48])
	}
}

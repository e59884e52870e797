package privacy

import (
	"encoding/binary"
	"net/netip"

	"github.com/sie-europe/dnssensor/internal/inet"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
)

var (
	zero4  = netip.AddrFrom4([4]byte{})
	zero16 = netip.AddrFrom16([16]byte{})
)

// zeroAddr zeroes the source (src true) or destination address of an IP packet and patches the IPv4
// header checksum and, when the packet holds the transport header, the UDP/TCP/ICMPv6 checksum,
// whose pseudo-header covers the address.
func zeroAddr(pkt []byte, src bool) bool {
	var p decode.Packet
	if r := decode.DecodeIP(pkt, &p); r != decode.OK {
		return false
	}
	var a []byte
	switch {
	case p.Src.Is4() && src:
		a = pkt[12:16]
	case p.Src.Is4():
		a = pkt[16:20]
	case src:
		a = pkt[8:24]
	default:
		a = pkt[24:40]
	}
	old := inet.Sum(0, a, false)
	if old == 0 {
		return true
	}
	clear(a)
	if p.Src.Is4() {
		binary.BigEndian.PutUint16(pkt[10:], inet.Update(binary.BigEndian.Uint16(pkt[10:]), old, 0))
	}
	if p.Frag && p.FragOff != 0 {
		return true // the transport checksum lives in the first fragment
	}
	patchL4(p.Proto, p.L4, p.Src.Is4(), old, 0)
	return true
}

// patchL4 updates the checksum of a transport header whose covered data (pseudo-header or
// payload) summing to old now sums to new.
func patchL4(proto uint8, l4 []byte, v4 bool, old, new uint64) {
	at := -1
	switch proto {
	case decode.ProtoUDP:
		at = 6
	case decode.ProtoTCP:
		at = 16
	case decode.ProtoICMPv6:
		at = 2
	}
	if at < 0 || len(l4) < at+2 {
		return
	}
	c := binary.BigEndian.Uint16(l4[at:])
	if proto == decode.ProtoUDP && c == 0 && v4 {
		return
	}
	c = inet.Update(c, old, new)
	if proto == decode.ProtoUDP && c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[at:], c)
}

// zeroICMP zeroes the resolver in an ICMP error sent to it: the outer destination, and the source
// of the quoted packet (the resolver's own query), patching the ICMP checksum, the quoted IPv4
// header checksum and the quoted UDP/TCP checksum.
func zeroICMP(pkt []byte) bool {
	if !zeroAddr(pkt, false) {
		return false
	}
	var p decode.Packet
	if decode.DecodeIP(pkt, &p) != decode.OK || len(p.L4) < 8 {
		return false
	}
	icmp := p.L4
	inner := icmp[8:]
	if len(inner) == 0 {
		return true
	}
	var a []byte
	var innerHdr int
	var innerProto uint8
	switch inner[0] >> 4 {
	case 4:
		if len(inner) < 20 {
			return true
		}
		a, innerHdr, innerProto = inner[12:16], int(inner[0]&0xf)*4, inner[9]
	case 6:
		if len(inner) < 40 {
			return true
		}
		a, innerHdr, innerProto = inner[8:24], 40, inner[6]
	default:
		return true
	}
	// Every field touched below sits inside the ICMP message, so each change is also an ICMP
	// checksum change; collect old and new sums at their offsets (all even) within the message.
	var icmpOld, icmpNew uint64
	old := inet.Sum(0, a, false)
	icmpOld += old
	clear(a)
	if inner[0]>>4 == 4 {
		hc := inner[10:12]
		icmpOld = inet.Sum(icmpOld, hc, false)
		binary.BigEndian.PutUint16(hc, inet.Update(binary.BigEndian.Uint16(hc), old, 0))
		icmpNew = inet.Sum(icmpNew, hc, false)
	}
	if innerHdr%2 == 0 && len(inner) >= innerHdr+8 && (innerProto == decode.ProtoUDP || innerProto == decode.ProtoTCP) {
		at := innerHdr + 6
		if innerProto == decode.ProtoTCP {
			at = innerHdr + 16
		}
		if len(inner) >= at+2 {
			cs := inner[at : at+2]
			icmpOld = inet.Sum(icmpOld, cs, false)
			patchL4(innerProto, inner[innerHdr:], inner[0]>>4 == 4, old, 0)
			icmpNew = inet.Sum(icmpNew, cs, false)
		}
	}
	c := binary.BigEndian.Uint16(icmp[2:])
	binary.BigEndian.PutUint16(icmp[2:], inet.Update(c, icmpOld, icmpNew))
	return true
}

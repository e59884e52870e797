// Package pktbuild writes IP datagrams that carry one DNS message, for records whose messages did
// not arrive as one datagram: DNS over TCP (reassembled from segments) and dnstap (no packet at all).
// Consumers then see the same record shape as for UDP: one element of query_packet or
// response_packet holds one whole message.
package pktbuild

import (
	"encoding/binary"
	"net/netip"

	"github.com/sie-europe/dnssensor/internal/inet"
)

// AppendUDP appends an IPv4 or IPv6 datagram with a UDP header and msg as payload, with correct
// lengths and checksums. src and dst must be of the same family.
func AppendUDP(b []byte, src, dst netip.AddrPort, msg []byte) []byte {
	start := len(b)
	b = appendIP(b, src.Addr(), dst.Addr(), 17, 8+len(msg))
	b = binary.BigEndian.AppendUint16(b, src.Port())
	b = binary.BigEndian.AppendUint16(b, dst.Port())
	b = binary.BigEndian.AppendUint16(b, uint16(8+len(msg)))
	b = append(b, 0, 0)
	b = append(b, msg...)
	checksums(b[start:], src.Addr(), dst.Addr(), 17, 6)
	return b
}

// AppendTCP appends an IPv4 or IPv6 datagram with a TCP header (PSH|ACK, sequence seq) whose
// payload is msg with its two-octet length prefix (RFC 7766), with correct lengths and checksums.
func AppendTCP(b []byte, src, dst netip.AddrPort, seq uint32, msg []byte) []byte {
	start := len(b)
	b = appendIP(b, src.Addr(), dst.Addr(), 6, 20+2+len(msg))
	b = binary.BigEndian.AppendUint16(b, src.Port())
	b = binary.BigEndian.AppendUint16(b, dst.Port())
	b = binary.BigEndian.AppendUint32(b, seq)
	b = binary.BigEndian.AppendUint32(b, 0) // ack number: unknown and irrelevant to consumers
	b = append(b, 5<<4, 0x18)               // data offset 5 words; PSH|ACK
	b = binary.BigEndian.AppendUint16(b, 65535)
	b = append(b, 0, 0, 0, 0) // checksum, urgent pointer
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	b = append(b, msg...)
	checksums(b[start:], src.Addr(), dst.Addr(), 6, 16)
	return b
}

// checksums sets the IPv4 header checksum (there is none in IPv6) and the transport checksum,
// at offset at of the upper-layer header, of the datagram pkt that appendIP began.
func checksums(pkt []byte, src, dst netip.Addr, proto uint8, at int) {
	hl := 40
	if src.Is4() {
		hl = 20
		binary.BigEndian.PutUint16(pkt[10:], inet.Checksum(inet.Sum(0, pkt[:hl], false), false))
	}
	l4 := pkt[hl:]
	acc := inet.Sum(inet.Pseudo(0, src, dst, proto, len(l4)), l4, false)
	binary.BigEndian.PutUint16(l4[at:], inet.Checksum(acc, proto == 17))
}

// AppendICMPUnreachable appends an ICMP (IPv4: type 3 code 3) or ICMPv6 (type 1 code 4) port
// unreachable error from "from" to "to" that quotes the datagram quoted, with valid checksums.
func AppendICMPUnreachable(b []byte, from, to netip.Addr, quoted []byte) []byte {
	start := len(b)
	proto, typ, code := uint8(1), byte(3), byte(3)
	if from.Is6() {
		proto, typ, code = 58, 1, 4
	}
	b = appendIP(b, from, to, proto, 8+len(quoted))
	hl := len(b) - start
	b = append(b, typ, code, 0, 0, 0, 0, 0, 0)
	b = append(b, quoted...)
	pkt := b[start:]
	icmp := pkt[hl:]
	acc := inet.Sum(0, icmp, false)
	if from.Is4() {
		binary.BigEndian.PutUint16(pkt[10:], inet.Checksum(inet.Sum(0, pkt[:hl], false), false))
	} else {
		acc = inet.Pseudo(acc, from, to, proto, len(icmp)) // ICMPv6 covers a pseudo-header
	}
	binary.BigEndian.PutUint16(icmp[2:], inet.Checksum(acc, false))
	return b
}

func appendIP(b []byte, src, dst netip.Addr, proto uint8, l4len int) []byte {
	if src.Is4() {
		b = append(b, 0x45, 0)
		b = binary.BigEndian.AppendUint16(b, uint16(20+l4len))
		b = append(b, 0, 0, 0x40, 0, 64, proto, 0, 0) // id 0, DF, TTL 64
		s, d := src.As4(), dst.As4()
		b = append(b, s[:]...)
		return append(b, d[:]...)
	}
	b = append(b, 0x60, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(l4len))
	b = append(b, proto, 64)
	s, d := src.As16(), dst.As16()
	b = append(b, s[:]...)
	return append(b, d[:]...)
}

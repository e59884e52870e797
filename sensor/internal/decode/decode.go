// Package decode turns captured frames into IP datagrams with their addresses, fragment fields and
// transport header, without allocating.
//
// It is hand-written rather than built on gopacket's DecodingLayerParser, whose layer set (v1.7.7)
// stops at the things a tap in front of a resolver does carry: 0x9100 VLAN tags, MPLS label stacks
// (not a DecodingLayer), IPv6 routing and other extension headers (not DecodingLayers). The test
// suite cross-checks this decoder against gopacket on every frame both understand, so the two
// cannot silently disagree; gopacket still reads the capture files and rings.
package decode

import (
	"encoding/binary"
	"net/netip"
)

// LinkType is a pcap LINKTYPE_ value.
type LinkType uint32

const (
	LinkNull     LinkType = 0   // BSD loopback: 4-octet address family in host order
	LinkEthernet LinkType = 1   // Ethernet II, with any number of 802.1Q/802.1ad tags and MPLS
	LinkRaw      LinkType = 101 // raw IPv4 or IPv6
	LinkRawAlt   LinkType = 12  // DLT_RAW on OpenBSD-derived captures
	LinkRawAlt2  LinkType = 14  // DLT_RAW on others
	LinkSLL      LinkType = 113 // Linux cooked v1
	LinkSLL2     LinkType = 276 // Linux cooked v2
	LinkIPv4     LinkType = 228
	LinkIPv6     LinkType = 229
)

// Supported reports whether Decode understands frames of link type l.
func Supported(l LinkType) bool {
	switch l {
	case LinkNull, LinkEthernet, LinkRaw, LinkRawAlt, LinkRawAlt2, LinkSLL, LinkSLL2, LinkIPv4, LinkIPv6:
		return true
	}
	return false
}

// IP protocol numbers the sensor cares about.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// Limits on what a hostile frame can make the decoder walk.
const (
	maxTags      = 8
	maxLabels    = 16
	maxExtHeader = 16
)

// Result says what Decode made of a frame. Everything but OK and NotIP is a malformed frame that
// the caller counts under Result.String().
type Result uint8

const (
	OK Result = iota
	NotIP
	ShortLink
	TooManyTags
	BadMPLS
	BadIPv4
	BadIPv6
	BadExtHeader
	IPTruncated
	BadL4
	L4Truncated
	UnsupportedLink
	numResults
)

var resultNames = [...]string{"ok", "not_ip", "short_link", "too_many_tags", "bad_mpls", "bad_ipv4",
	"bad_ipv6", "bad_ext_header", "ip_truncated", "bad_l4", "l4_truncated", "unsupported_link"}

func (r Result) String() string { return resultNames[r] }

// NumResults is the number of distinct Result values, for counter arrays.
const NumResults = int(numResults)

// Packet is one decoded IP datagram. All slices alias the frame passed to Decode.
type Packet struct {
	Net   []byte // the IP datagram, trimmed to the IP length (link padding removed)
	Src   netip.Addr
	Dst   netip.Addr
	Proto uint8  // upper-layer protocol after any IPv6 extension headers
	L4    []byte // upper-layer octets; for a fragment, the fragment's data

	Frag     bool // part of a fragmented datagram
	FragID   uint32
	FragOff  int // in octets
	FragMore bool
	HdrLen   int // octets of Net before L4 (IP header plus extension headers)
	// FragData is, for a fragment, the octets of Net before the fragment's data: the IPv4
	// header, or the IPv6 headers up to the Fragment header. Headers after it (Destination
	// Options, RFC 8200 section 4.5) are part of the fragmented data; a first fragment's are
	// walked, so Proto and L4 are the upper layer's (HdrLen includes them), and a later
	// fragment's Proto is the Fragment header's next header.
	FragData int

	// Transport fields, set only when Frag is false.
	SrcPort, DstPort uint16
	Payload          []byte // UDP or TCP payload
	TCPSeq           uint32
	TCPFlags         uint8
}

// TCP flag bits in Packet.TCPFlags.
const (
	TCPFin = 0x01
	TCPSyn = 0x02
	TCPRst = 0x04
)

// Decode fills p from one frame of link type link. It never panics on any input.
func Decode(link LinkType, frame []byte, p *Packet) Result {
	var etype uint16
	var b []byte
	switch link {
	case LinkEthernet:
		if len(frame) < 14 {
			return ShortLink
		}
		etype, b = binary.BigEndian.Uint16(frame[12:]), frame[14:]
	case LinkRaw, LinkRawAlt, LinkRawAlt2, LinkIPv4, LinkIPv6:
		return DecodeIP(frame, p)
	case LinkSLL:
		if len(frame) < 16 {
			return ShortLink
		}
		etype, b = binary.BigEndian.Uint16(frame[14:]), frame[16:]
	case LinkSLL2:
		if len(frame) < 20 {
			return ShortLink
		}
		etype, b = binary.BigEndian.Uint16(frame[0:]), frame[20:]
	case LinkNull:
		if len(frame) < 4 {
			return ShortLink
		}
		// The family is in the capturing host's byte order; IPv6 has several values by OS.
		fam := binary.LittleEndian.Uint32(frame)
		if fam > 0xffff {
			fam = binary.BigEndian.Uint32(frame)
		}
		switch fam {
		case 2:
			etype = 0x0800
		case 24, 28, 30:
			etype = 0x86dd
		default:
			return NotIP
		}
		b = frame[4:]
	default:
		return UnsupportedLink
	}
	for tags := 0; ; tags++ {
		switch etype {
		case 0x8100, 0x88a8, 0x9100, 0x9200:
			if tags >= maxTags {
				return TooManyTags
			}
			if len(b) < 4 {
				return ShortLink
			}
			etype, b = binary.BigEndian.Uint16(b[2:]), b[4:]
			continue
		case 0x8847, 0x8848:
			return decodeMPLS(b, p)
		case 0x0800, 0x86dd:
			return DecodeIP(b, p)
		}
		return NotIP
	}
}

func decodeMPLS(b []byte, p *Packet) Result {
	for i := 0; ; i++ {
		if i >= maxLabels || len(b) < 4 {
			return BadMPLS
		}
		bottom := b[2]&1 != 0
		b = b[4:]
		if bottom {
			break
		}
	}
	// No type field follows the stack: IP is recognised by its version nibble. A pseudowire
	// control word (nibble 0) carries Ethernet, which a resolver tap does not see in practice.
	if len(b) == 0 || (b[0]>>4 != 4 && b[0]>>4 != 6) {
		return NotIP
	}
	return DecodeIP(b, p)
}

// DecodeIP fills p from a bare IPv4 or IPv6 datagram.
func DecodeIP(b []byte, p *Packet) Result {
	*p = Packet{}
	if len(b) == 0 {
		return ShortLink
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return BadIPv4
		}
		hl := int(b[0]&0xf) * 4
		tl := int(binary.BigEndian.Uint16(b[2:]))
		if hl < 20 || tl < hl {
			return BadIPv4
		}
		if tl > len(b) {
			return IPTruncated
		}
		p.Net = b[:tl]
		p.Src = netip.AddrFrom4([4]byte(b[12:16]))
		p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		p.Proto = b[9]
		p.HdrLen = hl
		p.L4 = b[hl:tl]
		fo := binary.BigEndian.Uint16(b[6:])
		if fo&0x3fff != 0 {
			p.Frag, p.FragID, p.FragMore, p.FragOff = true, uint32(binary.BigEndian.Uint16(b[4:])), fo&0x2000 != 0, int(fo&0x1fff)*8
			p.FragData = hl
			return OK
		}
	case 6:
		if len(b) < 40 {
			return BadIPv6
		}
		pl := int(binary.BigEndian.Uint16(b[4:]))
		if pl == 0 {
			return BadIPv6 // jumbograms never carry DNS
		}
		if 40+pl > len(b) {
			return IPTruncated
		}
		p.Net = b[:40+pl]
		p.Src = netip.AddrFrom16([16]byte(b[8:24]))
		p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		next, off := b[6], 40
		for i := 0; ; i++ {
			if i >= maxExtHeader {
				return BadExtHeader
			}
			switch next {
			case 0, 43, 60, 135, 139, 140: // hop-by-hop, routing, destination, mobility, HIP, shim6
				if off+8 > len(p.Net) {
					return BadExtHeader
				}
				l := (int(p.Net[off+1]) + 1) * 8
				if off+l > len(p.Net) {
					return BadExtHeader
				}
				next, off = p.Net[off], off+l
				continue
			case 51: // authentication header counts in 4-octet units
				if off+8 > len(p.Net) {
					return BadExtHeader
				}
				l := (int(p.Net[off+1]) + 2) * 4
				if off+l > len(p.Net) {
					return BadExtHeader
				}
				next, off = p.Net[off], off+l
				continue
			case 44:
				if off+8 > len(p.Net) {
					return BadExtHeader
				}
				fo := binary.BigEndian.Uint16(p.Net[off+2:])
				p.Frag = true
				p.FragID = binary.BigEndian.Uint32(p.Net[off+4:])
				p.FragOff = int(fo &^ 7)
				p.FragMore = fo&1 != 0
				next, off = p.Net[off], off+8
				p.FragData = off
				if p.FragOff != 0 {
					break // the rest is data, whatever the next header says
				}
				continue
			}
			break
		}
		p.Proto, p.HdrLen, p.L4 = next, off, p.Net[off:]
		if p.Frag {
			if p.FragOff == 0 && !p.FragMore {
				// An atomic fragment (RFC 6946) is a whole datagram.
				p.Frag = false
			} else {
				return OK
			}
		}
	default:
		return NotIP
	}
	return DecodeL4(p)
}

// DecodeL4 fills the transport fields of p from p.Proto and p.L4.
func DecodeL4(p *Packet) Result {
	l4 := p.L4
	switch p.Proto {
	case ProtoUDP:
		if len(l4) < 8 {
			return BadL4
		}
		ul := int(binary.BigEndian.Uint16(l4[4:]))
		if ul < 8 {
			return BadL4
		}
		if ul > len(l4) {
			return L4Truncated
		}
		p.SrcPort = binary.BigEndian.Uint16(l4)
		p.DstPort = binary.BigEndian.Uint16(l4[2:])
		p.Payload = l4[8:ul]
	case ProtoTCP:
		if len(l4) < 20 {
			return BadL4
		}
		do := int(l4[12]>>4) * 4
		if do < 20 || do > len(l4) {
			return BadL4
		}
		p.SrcPort = binary.BigEndian.Uint16(l4)
		p.DstPort = binary.BigEndian.Uint16(l4[2:])
		p.TCPSeq = binary.BigEndian.Uint32(l4[4:])
		p.TCPFlags = l4[13]
		p.Payload = l4[do:]
	case ProtoICMP, ProtoICMPv6:
		if len(l4) < 8 {
			return BadL4
		}
		p.Payload = l4[8:]
	}
	return OK
}

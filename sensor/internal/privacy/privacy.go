// Package privacy enforces what may leave the box about end users: it zeroes IP option and IPv6
// extension-header contents and EDNS Client Subnet (and any EDNS data or trailing octets that no
// well-formed OPT record accounts for) in stored packets, and zeroes the resolver's address in
// records and packets, keeping every checksum consistent so that none of them betrays what was
// removed.
//
// Checksums are patched incrementally (RFC 1624) rather than recomputed: a checksum that was
// correct stays correct, and one that was wrong on the wire stays wrong by the same amount, so the
// record's udp_checksum verdict (taken before scrubbing, as the C reference does) still describes
// the stored packet, and neither reveals the zeroed octets.
package privacy

import (
	"encoding/binary"

	"github.com/sie-europe/dnssensor/internal/inet"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
	"github.com/sie-europe/dnssensor/sensor/internal/dnswire"
)

// Stats counts what the scrubber changed.
type Stats struct {
	ECSScrubbed     uint64 // ECS options zeroed
	ECSUnparsed     uint64 // packet lists whose DNS message could not be assembled to walk it (dropped)
	ResolverZeroed  uint64 // records whose resolver address was zeroed
	PacketsUnparsed uint64 // stored packets that did not parse while zeroing (dropped)
	EDNSZeroed      uint64 // messages whose unaccounted EDNS data or trailing octets were zeroed
	OptionsZeroed   uint64 // EDNS options other than ECS whose data was zeroed (not known to be client-free)
	HeadersZeroed   uint64 // stored packets whose IP options or extension-header contents were zeroed
}

// Scrubber applies the rules to records in place. Not safe for concurrent use.
type Scrubber struct {
	ZeroResolver bool
	Stats        Stats
	frags        []fragInfo
	msg          []byte
}

// Record scrubs r's packets (which the caller owns and lets it modify) and, with ZeroResolver,
// its query_ip. It returns false when a packet could not be checked, in which case the record must
// not be shipped: an unparsable packet could hide an address or an ECS option.
func (s *Scrubber) Record(r *dnsqr.Record) bool {
	if !s.headers(r.QueryPackets) || !s.headers(r.ResponsePackets) || (r.ICMP != nil && !s.icmp(r.ICMP)) {
		s.Stats.PacketsUnparsed++
		return false
	}
	if !s.scrubECS(r.QueryPackets) || !s.scrubECS(r.ResponsePackets) {
		s.Stats.ECSUnparsed++
		return false
	}
	if !s.ZeroResolver {
		return true
	}
	ok := true
	for _, p := range r.QueryPackets {
		ok = zeroAddr(p, true) && ok
	}
	for _, p := range r.ResponsePackets {
		ok = zeroAddr(p, false) && ok
	}
	if r.ICMP != nil {
		ok = zeroICMP(r.ICMP) && ok
	}
	if !ok {
		s.Stats.PacketsUnparsed++
		return false
	}
	if r.QueryIP.Is4() {
		r.QueryIP = zero4
	} else {
		r.QueryIP = zero16
	}
	if len(r.QueryPackets) > 0 || len(r.ResponsePackets) > 0 || r.ICMP != nil {
		r.HasResolverZeroed, r.ResolverZeroed = true, true
	}
	s.Stats.ResolverZeroed++
	return true
}

type fragInfo struct {
	pkt     []byte
	hdr     int // octets before the fragment's upper-layer data
	ext     int // extension headers at the start of that data (after an IPv6 Fragment header)
	off     int // offset of that data in the upper-layer datagram
	first   bool
	udp     bool
	isV4    bool
	dataLen int
}

// scrubECS zeroes, in the DNS message that pkts carry (one datagram, or its IP fragments in any
// order), the data of every ECS option, whatever EDNS data or trailing octets no well-formed OPT
// record accounts for, and any octets after the UDP datagram inside the IP payload.
func (s *Scrubber) scrubECS(pkts [][]byte) bool {
	if len(pkts) == 0 {
		return true
	}
	s.frags = s.frags[:0]
	var first *fragInfo
	total := 0
	for _, pkt := range pkts {
		var p decode.Packet
		if decode.DecodeIP(pkt, &p) != decode.OK {
			return false
		}
		later := p.Frag && p.FragOff != 0 // its Proto may name a header, not the upper layer
		if p.Proto != decode.ProtoUDP && p.Proto != decode.ProtoTCP && !later {
			return true // ICMP records carry no DNS message of their own here
		}
		f := fragInfo{pkt: pkt, hdr: p.HdrLen, off: p.FragOff, first: !p.Frag || p.FragOff == 0,
			udp: p.Proto == decode.ProtoUDP, isV4: p.Src.Is4(), dataLen: len(p.L4)}
		if p.Frag {
			f.hdr, f.ext, f.dataLen = p.FragData, p.HdrLen-p.FragData, len(p.Net)-p.FragData
		}
		s.frags = append(s.frags, f)
		total += f.dataLen
	}
	// Fast path: one whole datagram, the message is contiguous in the packet.
	var l4 []byte
	if len(s.frags) == 1 {
		first = &s.frags[0]
		l4 = first.pkt[first.hdr:]
	} else {
		// Fragments: assemble a copy of the upper-layer datagram to find the options, then map
		// each region back to the fragments that hold its octets.
		s.msg = s.msg[:0]
		for next := 0; ; {
			var f *fragInfo
			for i := range s.frags {
				if s.frags[i].off == next {
					f = &s.frags[i]
					break
				}
			}
			if f == nil {
				break
			}
			if f.first {
				first = f
			}
			s.msg = append(s.msg, f.pkt[f.hdr:f.hdr+f.dataLen]...)
			next += f.dataLen
			if f.dataLen == 0 {
				break
			}
		}
		// Data not in the assembled datagram could not be checked. Extension headers that
		// follow the Fragment header (first.ext octets) open the fragment data.
		if first == nil || !first.udp || len(s.msg) != total || len(s.msg) < first.ext {
			return false
		}
		l4 = s.msg[first.ext:]
	}
	var msg []byte
	var msgOff int // offset of the DNS message within the upper-layer datagram
	if first.udp {
		if len(l4) < 8 {
			return false
		}
		ul := int(binary.BigEndian.Uint16(l4[4:]))
		if ul < 8 || ul > len(l4) {
			return false
		}
		if ul < len(l4) {
			// Inside the IP payload but outside the UDP datagram: no checksum covers them.
			s.Stats.EDNSZeroed++
			s.zeroL4(first, ul, len(l4)-ul, false)
		}
		msg, msgOff = l4[8:ul], 8
	} else {
		if len(l4) < 20 {
			return false
		}
		do := int(l4[12]>>4) * 4
		if do+2 > len(l4) {
			return false
		}
		msg, msgOff = l4[do+2:], do+2
	}
	s.scanMessage(msg, func(off, n int) { s.zeroL4(first, msgOff+off, n, true) })
	return true
}

// scanMessage calls zero for every region of a DNS message that must not be stored: the data of
// each ECS option, and everything from where the EDNS data can no longer be accounted for (an
// option overrunning its OPT record, a malformed ECS option, an OPT record in octets after the
// counted records, a record that does not parse) to the end. Zeroing the tail rather than
// dropping the record keeps the transaction (header, question) and ships no unexamined octet.
func (s *Scrubber) scanMessage(msg []byte, zero func(off, n int)) {
	cut := dnswire.ScanOptions(msg, func(o dnswire.Option) {
		if o.Len == 0 || keepOption(o.Code) || (brokenECS && o.Code == dnswire.OptionECS) {
			return
		}
		if o.Code == dnswire.OptionECS {
			s.Stats.ECSScrubbed++
		} else {
			s.Stats.OptionsZeroed++
		}
		zero(o.Off+4, o.Len)
	})
	if cut < len(msg) {
		s.Stats.EDNSZeroed++
		zero(cut, len(msg)-cut)
	}
}

// keepOption reports whether an EDNS option's data is known to say nothing about the resolver's
// clients, and so is kept. Everything else is zeroed: Client Subnet, client and server tags
// (codes 16, 17), private options that carry a client's address or device (Umbrella 20292,
// DeviceID 26946), and any code this sensor does not know.
func keepOption(code uint16) bool {
	switch code {
	case 3, // NSID: the server's identity
		5, 6, 7, // DAU, DHU, N3U: algorithm lists
		9,  // EXPIRE
		10, // COOKIE: the resolver's own cookie, keyed to the server
		11, // edns-tcp-keepalive
		12, // Padding
		13, // CHAIN: a zone name
		14, // edns-key-tag
		15, // Extended DNS Error
		18, // Report-Channel: an agent domain
		19: // ZONEVERSION
		return true
	}
	return false
}

// zeroL4 zeroes n octets at upper-layer offset at, across fragments, patching the transport
// checksum in the first fragment when it covers them.
func (s *Scrubber) zeroL4(first *fragInfo, at, n int, covered bool) {
	// at counts from the upper-layer header; the fragments' data starts with first.ext octets of
	// extension headers (a multiple of 8, so the checksum parity of an offset is unchanged).
	at += first.ext
	var oldSum uint64
	for i := range s.frags {
		f := &s.frags[i]
		lo, hi := max(at, f.off), min(at+n, f.off+f.dataLen)
		if lo >= hi {
			continue
		}
		b := f.pkt[f.hdr+lo-f.off : f.hdr+hi-f.off]
		oldSum = inet.Sum(oldSum, b, lo%2 == 1)
		clear(b)
	}
	if !covered {
		return
	}
	l4 := first.pkt[first.hdr+first.ext:]
	at16 := 16 // TCP checksum offset
	if first.udp {
		at16 = 6
	}
	if len(l4) < at16+2 {
		return
	}
	c := binary.BigEndian.Uint16(l4[at16:])
	if first.udp && c == 0 && first.isV4 {
		return // absent checksum stays absent
	}
	c = inet.Update(c, oldSum, 0)
	if first.udp && c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[at16:], c)
}

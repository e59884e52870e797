// Package privacy enforces what may leave the box about end users: it removes EDNS Client Subnet
// from stored packets and zeroes the resolver's address in records and packets, keeping every
// checksum consistent so that none of them betrays what was removed.
//
// Checksums are patched incrementally (RFC 1624) rather than recomputed: a checksum that was
// correct stays correct, and one that was wrong on the wire stays wrong by the same amount, so the
// record's udp_checksum verdict (taken before scrubbing, as the C reference does) still describes
// the stored packet, and neither reveals the zeroed octets.
package privacy

import (
	"encoding/binary"

	"github.com/sie-europe/dnssensor/sensor/decode"
	"github.com/sie-europe/dnssensor/sensor/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/dnswire"
)

// Stats counts what the scrubber changed.
type Stats struct {
	ECSScrubbed     uint64 // ECS options zeroed
	ECSUnparsed     uint64 // packet lists whose DNS message could not be walked for ECS (dropped)
	ResolverZeroed  uint64 // records whose resolver address was zeroed
	PacketsUnparsed uint64 // stored packets that did not parse while zeroing (dropped)
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
// not be shipped: an unparsable packet could hide an ECS option.
func (s *Scrubber) Record(r *dnsqr.Record) bool {
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

// scrubECS zeroes the data of every ECS option in the DNS message that pkts carry (one datagram, or
// its IP fragments in any order).
func (s *Scrubber) scrubECS(pkts [][]byte) bool {
	if len(pkts) == 0 {
		return true
	}
	s.frags = s.frags[:0]
	var udpLen int
	var first *fragInfo
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
	}
	// Fast path: one whole datagram, the message is contiguous in the packet.
	var msg []byte
	var msgOff int // offset of the DNS message within the upper-layer datagram
	if len(s.frags) == 1 {
		f := &s.frags[0]
		first = f
		l4 := f.pkt[f.hdr:]
		if f.udp {
			if len(l4) < 8 {
				return false
			}
			udpLen = int(binary.BigEndian.Uint16(l4[4:]))
			if udpLen < 8 || udpLen > len(l4) {
				return false
			}
			msg, msgOff = l4[8:udpLen], 8
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
	} else {
		// Fragments: assemble a copy of the upper-layer datagram to find the options, then map
		// each option back to the fragment that holds its octets.
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
		if first == nil || !first.udp || len(s.msg) < first.ext+8 {
			return false
		}
		msg, msgOff = s.msg[first.ext+8:], first.ext+8
	}
	ok := dnswire.FindOptions(msg, func(o dnswire.Option) {
		if o.Code != dnswire.OptionECS || o.Len == 0 {
			return
		}
		s.Stats.ECSScrubbed++
		s.zeroL4(first, msgOff+o.Off+4, o.Len)
	})
	if !ok {
		// A message that does not parse may still be legitimate (truncated answers of odd
		// servers); it is only a problem if an ECS option could hide in it, i.e. if it has EDNS.
		return !mayHaveOPT(msg)
	}
	return true
}

// mayHaveOPT is conservative: any message with additional records might carry OPT.
func mayHaveOPT(msg []byte) bool {
	h, ok := dnswire.ParseHeader(msg)
	return !ok || h.ARCount > 0
}

// zeroL4 zeroes n octets at upper-layer offset at, across fragments, patching the transport
// checksum in the first fragment.
func (s *Scrubber) zeroL4(first *fragInfo, at, n int) {
	var oldSum uint64
	for i := range s.frags {
		f := &s.frags[i]
		lo, hi := max(at, f.off), min(at+n, f.off+f.dataLen)
		if lo >= hi {
			continue
		}
		b := f.pkt[f.hdr+lo-f.off : f.hdr+hi-f.off]
		oldSum = sum(oldSum, b, lo%2 == 1)
		clear(b)
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
	c = update(c, oldSum, 0)
	if first.udp && c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[at16:], c)
}

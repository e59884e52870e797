package privacy

import (
	"encoding/binary"

	"github.com/sie-europe/dnssensor/internal/inet"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
)

// Stored packets keep no IPv4 option or IPv6 extension-header contents: a Record Route option, a
// Hop-by-Hop or Destination option or a Routing header can carry any address, a client's
// included, and nothing downstream needs them. Each is zeroed in place, lengths and next-header
// octets kept so every offset stays valid: zeroed IPv4 options read as End of Option List,
// zeroed IPv6 options as Pad1, a zeroed Routing header as one with no segment left.
//
// The transport checksum's pseudo-header uses the final destination (RFC 8200 §8.1; the same for
// an unfinished IPv4 source route), which an unfinished route holds in the header being zeroed.
// Once the route is gone the stored packet's final destination is its header's destination, so
// the transport checksum is moved from the one to the other (RFC 1624): a checksum valid on the
// wire stays valid for the stored packet, and none depends on the removed address.

// hdrScrub is what scrubIP found and changed.
type hdrScrub struct {
	l4      int   // offset of the transport header, or -1 when the packet holds none (a later fragment)
	proto   uint8 // upper-layer protocol
	oldDst  uint64
	newDst  uint64 // sums of the pseudo-header's destination before and after; equal when unrouted
	changed bool
}

// scrubIP zeroes the option and extension-header contents of the IP datagram (or fragment) at
// the start of b and patches the IPv4 header checksum. quoted allows b to end early, as the quote
// in an ICMP error does; then l4 is -1 when the headers are cut. ok is false when the headers do
// not parse, or a routing header with segments left is of a type whose final destination this
// code cannot find (its checksum could not be kept honest).
func scrubIP(b []byte, quoted bool) (h hdrScrub, ok bool) {
	if len(b) == 0 {
		return h, false
	}
	switch b[0] >> 4 {
	case 4:
		hl := int(b[0]&0xf) * 4
		if len(b) < 20 || hl < 20 || hl > len(b) {
			return h, false
		}
		h.proto, h.l4 = b[9], hl
		if binary.BigEndian.Uint16(b[6:])&0x1fff != 0 {
			h.l4 = -1
		}
		if hl == 20 {
			return h, true
		}
		opts := b[20:hl]
		if fin := sourceRouteFinal(opts); fin != nil && h.l4 >= 0 {
			h.oldDst, h.newDst = inet.Sum(0, fin, false), inet.Sum(0, b[16:20], false)
		}
		old := inet.Sum(0, opts, false)
		clear(opts)
		binary.BigEndian.PutUint16(b[10:], inet.Update(binary.BigEndian.Uint16(b[10:]), old, 0))
		h.changed = true
		return h, true
	case 6:
		if len(b) < 40 {
			return h, false
		}
		next, off, routed := b[6], 40, false
		for i := 0; i < 16; i++ {
			var l int
			switch next {
			case 0, 43, 60, 135, 139, 140:
				if off+2 <= len(b) {
					l = (int(b[off+1]) + 1) * 8
				}
			case 51:
				if off+2 <= len(b) {
					l = (int(b[off+1]) + 2) * 4
				}
			case 44:
				l = 8
			default:
				h.proto, h.l4 = next, off
				return h, true
			}
			if l == 0 || off+l > len(b) {
				if quoted {
					// The quote ends inside the headers: zero what is there.
					if off+2 < len(b) {
						clear(b[off+2:])
					}
					h.l4 = -1
					return h, true
				}
				return h, false
			}
			eh := b[off : off+l]
			switch next {
			case 44:
				if binary.BigEndian.Uint16(eh[2:])&^7 != 0 {
					h.proto, h.l4 = eh[0], -1 // what follows is the middle of the datagram
					return h, true
				}
			case 43:
				if eh[3] != 0 {
					fin := routeFinal(eh)
					if fin == nil || routed {
						return h, false
					}
					routed = true
					h.oldDst, h.newDst = inet.Sum(0, fin, false), inet.Sum(0, b[24:40], false)
				}
				eh[3] = 0
				clear(eh[4:])
				h.changed = true
			default:
				clear(eh[2:])
				h.changed = true
			}
			next, off = eh[0], off+l
		}
		return h, false
	}
	return h, false
}

// sourceRouteFinal returns the final destination of an unfinished IPv4 loose or strict source
// route (RFC 791) among the options, or nil.
func sourceRouteFinal(opts []byte) []byte {
	for i := 0; i < len(opts); {
		switch opts[i] {
		case 0:
			return nil
		case 1:
			i++
			continue
		}
		if i+2 > len(opts) {
			return nil
		}
		l := int(opts[i+1])
		if l < 2 || i+l > len(opts) {
			return nil
		}
		if (opts[i] == 131 || opts[i] == 137) && l >= 7 && int(opts[i+2])+3 <= l {
			n := (l - 3) / 4
			return opts[i+3+4*(n-1) : i+3+4*n]
		}
		i += l
	}
	return nil
}

// routeFinal returns the final destination held by a routing header with segments left, or nil
// for types whose layout is not known here (RPL's compressed addresses, future types).
func routeFinal(rh []byte) []byte {
	switch rh[2] {
	case 0, 2: // RFC 2460 type 0, RFC 6275 type 2: the last address
		n := (len(rh) - 8) / 16
		if n == 0 {
			return nil
		}
		return rh[8+16*(n-1) : 8+16*n]
	case 4: // RFC 8754 SRH: Segment List[0] is the last segment
		if len(rh) < 24 {
			return nil
		}
		return rh[8:24]
	}
	return nil
}

// patchDst moves the transport checksum of the packet at b from the pseudo-header destination it
// had to the one it has now.
func (h *hdrScrub) patchDst(b []byte, v4 bool) {
	if h.l4 < 0 || h.oldDst == h.newDst {
		return
	}
	patchL4(h.proto, b[h.l4:], v4, h.oldDst, h.newDst)
}

// headers scrubs the IP headers of every packet in pkts.
func (s *Scrubber) headers(pkts [][]byte) bool {
	for _, p := range pkts {
		if len(p) > 0 && (p[0] == 0x45 || p[0]>>4 == 6 && isUpper(p)) {
			continue // the common case: nothing to zero
		}
		h, ok := scrubIP(p, false)
		if !ok {
			return false
		}
		h.patchDst(p, p[0]>>4 == 4)
		if h.changed {
			s.Stats.HeadersZeroed++
		}
	}
	return true
}

// isUpper reports whether an IPv6 packet's first next header is already the upper layer.
func isUpper(p []byte) bool {
	if len(p) < 40 {
		return false
	}
	switch p[6] {
	case decode.ProtoUDP, decode.ProtoTCP, decode.ProtoICMPv6:
		return true
	}
	return false
}

// icmp scrubs an ICMP record's datagram: its own headers, and inside the quoted packet the
// headers, any octets after the quoted UDP datagram and the quoted DNS message's ECS and
// unaccounted EDNS data, patching the quoted checksums and the ICMP checksum.
func (s *Scrubber) icmp(pkt []byte) bool {
	oh, ok := scrubIP(pkt, false)
	if !ok || oh.l4 < 0 {
		return false
	}
	v4 := pkt[0]>>4 == 4
	oh.patchDst(pkt, v4)
	if oh.changed {
		s.Stats.HeadersZeroed++
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
	before := inet.Sum(0, inner, false)
	ih, ok := scrubIP(inner, true)
	if !ok {
		return false
	}
	iv4 := inner[0]>>4 == 4
	ih.patchDst(inner, iv4)
	if ih.changed {
		s.Stats.HeadersZeroed++
	}
	if ih.l4 >= 0 {
		s.quotedPayload(inner[ih.l4:], ih.proto, iv4)
	}
	c := binary.BigEndian.Uint16(icmp[2:])
	binary.BigEndian.PutUint16(icmp[2:], inet.Update(c, before, inet.Sum(0, inner, false)))
	return true
}

// quotedPayload scrubs the transport layer quoted in an ICMP error (often cut short): for UDP,
// the DNS message as for any stored message and whatever follows the UDP length; for TCP, the
// whole payload, since a quoted segment need not start at a message.
func (s *Scrubber) quotedPayload(l4 []byte, proto uint8, v4 bool) {
	var data []byte
	switch proto {
	case decode.ProtoUDP:
		if len(l4) < 8 {
			return
		}
		ul := int(binary.BigEndian.Uint16(l4[4:]))
		if ul < 8 {
			ul = 8
		}
		if ul < len(l4) {
			clear(l4[ul:]) // not covered by the UDP checksum
			l4 = l4[:ul]
		}
		data = l4[8:]
	case decode.ProtoTCP:
		if len(l4) < 20 {
			return
		}
		do := int(l4[12]>>4) * 4
		if do < 20 || do >= len(l4) {
			return
		}
		data = l4[do:]
	default:
		return
	}
	off := len(l4) - len(data)
	var old uint64
	if proto == decode.ProtoTCP {
		old = inet.Sum(0, data, off%2 == 1)
		clear(data)
	} else {
		s.scanMessage(data, func(o, n int) {
			b := data[o : o+n]
			old = inet.Sum(old, b, (off+o)%2 == 1)
			clear(b)
		})
	}
	if old != 0 {
		patchL4(proto, l4, v4, old, 0)
	}
}

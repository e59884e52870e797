package pipeline

import (
	"encoding/binary"
	"net/netip"

	"github.com/sie-europe/dnssensor/sensor/decode"
	"github.com/sie-europe/dnssensor/sensor/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/dnswire"
)

// icmpError reports whether an ICMP or ICMPv6 type is an error that quotes the offending packet.
func icmpError(proto uint8, typ uint8) bool {
	if proto == decode.ProtoICMP {
		return typ == 3 || typ == 4 || typ == 5 || typ == 11 || typ == 12
	}
	return typ >= 1 && typ <= 4
}

// icmp turns an ICMP error that quotes one of the resolver's DNS queries into an ICMP record,
// closing the pending query it answers. The C reference parses the quoted packet as if it were the
// outer one and so never matches anything; here the quote is read leniently, since routers quote
// as little as 8 octets of UDP.
func (p *Pipeline) icmp(pk *decode.Packet, pkt []byte, ts int64) {
	if len(pk.L4) < 8 || !icmpError(pk.Proto, pk.L4[0]) {
		p.stats.NotDNS++
		return
	}
	q := pk.Payload
	var qsrc, qdst netip.Addr
	var proto uint8
	var l4 []byte
	switch {
	case len(q) >= 20 && q[0]>>4 == 4:
		hl := int(q[0]&0xf) * 4
		if hl < 20 || hl > len(q) {
			p.stats.ICMPMalformed++
			return
		}
		qsrc, qdst, proto, l4 = netip.AddrFrom4([4]byte(q[12:16])), netip.AddrFrom4([4]byte(q[16:20])), q[9], q[hl:]
	case len(q) >= 40 && q[0]>>4 == 6:
		// Extension headers in a quoted query are not worth walking: resolvers do not send them.
		qsrc, qdst, proto, l4 = netip.AddrFrom16([16]byte(q[8:24])), netip.AddrFrom16([16]byte(q[24:40])), q[6], q[40:]
	default:
		p.stats.ICMPMalformed++
		return
	}
	if (proto != decode.ProtoUDP && proto != decode.ProtoTCP) || len(l4) < 4 {
		p.stats.NotDNS++
		return
	}
	sport, dport := binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
	if !isDNSPort(dport) {
		p.stats.NotDNS++
		return
	}
	if !p.initiator(qsrc, qdst) || pk.Dst != qsrc {
		p.stats.NotResolver++
		return
	}
	var id uint16
	var h dnswire.Header
	var hasH bool
	var dnsMsg []byte
	if proto == decode.ProtoUDP && len(l4) >= 8+dnswire.HeaderLen {
		dnsMsg = l4[8:]
		h, hasH = dnswire.ParseHeader(dnsMsg)
		id = h.ID
	}
	r := p.newRecord(dnsqr.ICMP, pk.Proto, qsrc, qdst, sport, dport, id)
	var flags uint16
	matched := int32(nilIdx)
	if hasH {
		matched = p.t.first(makeKey(qsrc, qdst, proto, sport, dport, id))
	}
	if matched != nilIdx {
		p.t.unlink(matched)
		e := &p.t.e[matched]
		r.QueryPackets, r.QueryTimes = append(r.QueryPackets, e.pkts...), append(r.QueryTimes, e.times...)
		if e.hasQ {
			r.HasQuestion, r.Qname, r.Qtype, r.Qclass = true, e.qname, e.qtype, e.qclass
		}
		flags = e.flags
		p.stats.ICMPMatched++
	} else if hasH {
		flags = h.Flags
		if h.QDCount == 1 {
			if qq, ok := dnswire.ParseQuestion(dnsMsg); ok {
				r.HasQuestion, r.Qname, r.Qtype, r.Qclass = true, qq.Name, qq.Type, qq.Class
			}
		}
	}
	p.ibuf = append(p.ibuf[:0], pkt...)
	r.ICMP = p.ibuf
	r.EventTime = ts
	p.finish(r, flags)
	if matched != nilIdx {
		p.t.release(matched)
	}
}

package pipeline

import (
	"encoding/binary"
	"net/netip"

	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
	"github.com/sie-europe/dnssensor/sensor/internal/dnswire"
)

// icmpError reports whether an ICMP or ICMPv6 type is an error that quotes the offending packet.
func icmpError(proto uint8, typ uint8) bool {
	if proto == decode.ProtoICMP {
		return typ == 3 || typ == 4 || typ == 5 || typ == 11 || typ == 12
	}
	return typ >= 1 && typ <= 4
}

// icmp turns an ICMP error that quotes one of the resolver's pending DNS queries into an ICMP
// record, closing that query. The C reference parses the quoted packet as if it were the outer one
// and so never matches anything. Only a quoted query (QR=0) that the privacy rule keeps (a
// resolver asking port 53) and that is pending counts: anything else an ICMP error can quote, such
// as the resolver's answer to a client, or a "query" a client made up, would put the client's
// address and names into a record.
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
	if !isDNSPort(sport) && !isDNSPort(dport) {
		p.stats.NotDNS++
		return
	}
	if v := p.rule(qsrc, sport, qdst, dport); v != keep || pk.Dst != qsrc {
		p.refuse(v)
		return
	}
	// Only a UDP quote long enough to show the DNS header can be told to be a query and matched;
	// the table holds only queries the rule kept, so a match vouches for every address involved.
	if proto != decode.ProtoUDP || len(l4) < 8+dnswire.HeaderLen {
		p.stats.ICMPUnmatched++
		return
	}
	h, _ := dnswire.ParseHeader(l4[8:])
	if h.Response() {
		p.stats.NotResolver++
		return
	}
	matched := p.t.first(makeKey(qsrc, qdst, proto, sport, dport, h.ID))
	if matched == nilIdx {
		p.stats.ICMPUnmatched++
		return
	}
	r := p.newRecord(dnsqr.ICMP, pk.Proto, qsrc, qdst, sport, dport, h.ID)
	p.t.unlink(matched)
	e := &p.t.e[matched]
	r.QueryPackets, r.QueryTimes = append(r.QueryPackets, e.pkts...), append(r.QueryTimes, e.times...)
	if e.hasQ {
		r.HasQuestion, r.Qname, r.Qtype, r.Qclass = true, e.qname, e.qtype, e.qclass
	}
	p.stats.ICMPMatched++
	p.ibuf = append(p.ibuf[:0], pkt...)
	r.ICMP = p.ibuf
	r.EventTime = ts
	p.finish(r, e.flags)
	p.t.release(matched)
}

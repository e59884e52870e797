package pipeline

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/privacy"
)

// fragmentV6DestOpts cuts an IPv6/UDP datagram into fragments whose fragmentable part starts
// with a Destination Options header (PadN), placed after the Fragment header as RFC 8200 allows:
// the first fragment carries the options and the UDP header, later ones only data.
func fragmentV6DestOpts(dgram []byte, firstData int) [][]byte {
	udpPart := dgram[40:]
	opts := []byte{17, 0, 1, 4, 0, 0, 0, 0} // next header UDP, 8 octets, PadN of 4
	part := append(append([]byte(nil), opts...), udpPart...)
	var out [][]byte
	for off := 0; off < len(part); {
		end := min(off+firstData, len(part))
		if off > 0 {
			end = min(off+1024, len(part))
		}
		f := append([]byte(nil), dgram[:40]...)
		f[6] = 44
		fh := make([]byte, 8)
		fh[0] = 60 // the fragmentable part begins with Destination Options
		fo := uint16(off)
		if end < len(part) {
			fo |= 1
		}
		binary.BigEndian.PutUint16(fh[2:], fo)
		binary.BigEndian.PutUint32(fh[4:], 0xd0d0)
		f = append(append(f, fh...), part[off:end]...)
		binary.BigEndian.PutUint16(f[4:], uint16(len(f)-40))
		out = append(out, f)
		off = end
	}
	return out
}

// TestIPv6DestOptsAfterFragmentHeader: a fragmented IPv6 query whose Destination Options header
// follows the Fragment header is reassembled, paired and scrubbed of ECS (its later fragments'
// data were parsed as headers: bad_ext_header, and the query was lost).
func TestIPv6DestOptsAfterFragmentHeader(t *testing.T) {
	subnet := netip.MustParsePrefix("203.0.113.0/24")
	m := new(dns.Msg)
	m.SetQuestion("frag6.example.", dns.TypeA)
	m.Id = 77
	o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
	o.SetUDPSize(4096)
	// Padding first, so the ECS option lands in the second fragment.
	o.Option = append(o.Option, &dns.EDNS0_PADDING{Padding: make([]byte, 1500)},
		&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IP(subnet.Addr().AsSlice())})
	m.Extra = append(m.Extra, o)
	q, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	frags := fragmentV6DestOpts(udp(res6, 40000, auth6, 53, q), 512)
	if len(frags) < 3 {
		t.Fatalf("%d fragments", len(frags))
	}
	for _, zero := range []bool{false, true} {
		destOptsCase(t, frags, zero)
	}
}

func destOptsCase(t *testing.T, frags [][]byte, zero bool) {
	h := newHarness(t, Config{RD: -1, ZeroResolver: zero})
	// Out of order: the last fragment first.
	h.p.IPPacket(t0, frags[len(frags)-1])
	for i, f := range frags[:len(frags)-1] {
		h.p.IPPacket(t0+int64(i+1), f)
	}
	h.p.IPPacket(t0+1e6, udp(auth6, 53, res6, 40000, msg(t, 77, "frag6.example.", dns.TypeA, true, false, netip.Prefix{})))
	h.p.Flush()
	s := h.p.Stats()
	if len(h.recs) != 1 || h.recs[0].Type != dnsqr.UDPQueryResponse {
		t.Fatalf("%d records (want 1 UDP_QUERY_RESPONSE); %s", len(h.recs), s.String())
	}
	r := h.recs[0]
	if len(r.QueryPackets) != len(frags) || string(r.Qname) != "\x05frag6\x07example\x00" {
		t.Errorf("%d query packets (want %d), qname %q", len(r.QueryPackets), len(frags), r.Qname)
	}
	if h.contains([]byte{203, 0, 113}) || s.Privacy.ECSScrubbed != 1 {
		t.Errorf("zero-resolver %v: ECS address left in the record (ecs_scrubbed=%d)", zero, s.Privacy.ECSScrubbed)
	}
	if v := privacy.Verdict(r.QueryPackets); v != dnsqr.ChecksumCorrect {
		t.Errorf("zero-resolver %v: the scrubbed query's UDP checksum is %v", zero, v)
	}
	if a := res6.As16(); zero && h.contains(a[:]) {
		t.Errorf("the resolver's address is left in a record")
	}
}

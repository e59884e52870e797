package pipeline

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sie-europe/dnssensor/internal/inet"
	"github.com/sie-europe/dnssensor/internal/pktbuild"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
)

var (
	res4    = netip.MustParseAddr("198.51.100.2")
	res6    = netip.MustParseAddr("2001:db8:1::2")
	auth4   = netip.MustParseAddr("192.0.2.10")
	auth6   = netip.MustParseAddr("2001:db8:2::10")
	client4 = netip.MustParseAddr("10.53.0.7")
	client6 = netip.MustParseAddr("fd00:53::7")
)

// harness runs a pipeline and keeps each record both decoded and as the protobuf bytes that
// would leave the box.
type harness struct {
	t    *testing.T
	p    *Pipeline
	recs []*dnsqr.Record
	raw  [][]byte
}

func newHarness(t *testing.T, cfg Config) *harness {
	h := &harness{t: t}
	if cfg.Resolvers == nil && cfg.Authorities == nil {
		cfg.Resolvers = []netip.Prefix{netip.PrefixFrom(res4, 32), netip.PrefixFrom(res6, 128)}
	}
	p, err := New(cfg, func(r *dnsqr.Record) error {
		b := dnsqr.AppendProto(nil, r)
		rec, err := dnsqr.Parse(b)
		if err != nil {
			t.Fatalf("record does not parse back: %v", err)
		}
		h.recs = append(h.recs, rec)
		h.raw = append(h.raw, b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	h.p = p
	return h
}

func msg(t *testing.T, id uint16, name string, qtype uint16, resp, rd bool, ecs netip.Prefix) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id, m.Response, m.RecursionDesired = id, resp, rd
	if ecs.IsValid() {
		o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		o.SetUDPSize(1232)
		e := &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, SourceNetmask: uint8(ecs.Bits()), Address: net.IP(ecs.Addr().AsSlice())}
		e.Family = 1
		if ecs.Addr().Is6() {
			e.Family = 2
		}
		o.Option = append(o.Option, e)
		m.Extra = append(m.Extra, o)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func udp(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, m []byte) []byte {
	return pktbuild.AppendUDP(nil, netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport), m)
}

const t0 = int64(1700000000) * 1e9

func TestClientTrafficNeverRecorded(t *testing.T) {
	for _, fam := range []struct{ client, res netip.Addr }{{client4, res4}, {client6, res6}} {
		for _, rd := range []bool{true, false} {
			h := newHarness(t, Config{RD: -1})
			h.p.IPPacket(t0, udp(fam.client, 40000, fam.res, 53, msg(t, 7, "example.com.", dns.TypeA, false, rd, netip.Prefix{})))
			h.p.IPPacket(t0+1e6, udp(fam.res, 53, fam.client, 40000, msg(t, 7, "example.com.", dns.TypeA, true, rd, netip.Prefix{})))
			h.p.Flush()
			if len(h.recs) != 0 {
				t.Errorf("%v rd=%v: client traffic produced %d records", fam.client, rd, len(h.recs))
			}
			if s := h.p.Stats(); s.NotResolver != 2 {
				t.Errorf("%v: NotResolver = %d, want 2", fam.client, s.NotResolver)
			}
		}
	}
}

func TestRDDefaultDropsRecursiveQueries(t *testing.T) {
	h := newHarness(t, Config{RD: 0})
	h.p.IPPacket(t0, udp(res4, 40000, auth4, 53, msg(t, 7, "example.com.", dns.TypeA, false, true, netip.Prefix{})))
	h.p.IPPacket(t0+1e6, udp(auth4, 53, res4, 40000, msg(t, 7, "example.com.", dns.TypeA, true, true, netip.Prefix{})))
	h.p.IPPacket(t0+2e6, udp(res4, 40001, auth4, 53, msg(t, 8, "example.com.", dns.TypeA, false, false, netip.Prefix{})))
	h.p.IPPacket(t0+3e6, udp(auth4, 53, res4, 40001, msg(t, 8, "example.com.", dns.TypeA, true, false, netip.Prefix{})))
	h.p.Flush()
	if len(h.recs) != 1 || h.recs[0].ID != 8 {
		t.Fatalf("got %d records, want only the RD=0 transaction", len(h.recs))
	}
	if s := h.p.Stats(); s.FilteredRD != 1 {
		t.Errorf("FilteredRD = %d, want 1", s.FilteredRD)
	}
}

func TestCaseInsensitivePairing(t *testing.T) {
	h := newHarness(t, Config{RD: -1})
	h.p.IPPacket(t0, udp(res4, 40000, auth4, 53, msg(t, 9, "ExAmPlE.CoM.", dns.TypeA, false, false, netip.Prefix{})))
	h.p.IPPacket(t0+1e6, udp(auth4, 53, res4, 40000, msg(t, 9, "example.com.", dns.TypeA, true, false, netip.Prefix{})))
	h.p.Flush()
	if len(h.recs) != 1 || h.recs[0].Type != dnsqr.UDPQueryResponse {
		t.Fatalf("got %+v, want one UDP_QUERY_RESPONSE", h.recs)
	}
	// The C reference takes the response's question; it keeps its bytes as sent.
	if got := dnsqr.NameString(h.recs[0].Qname); got != "example.com." {
		t.Errorf("qname = %q", got)
	}
}

func TestUnansweredAfterTimeoutInPacketTime(t *testing.T) {
	h := newHarness(t, Config{RD: -1, QueryTimeout: 60 * time.Second})
	h.p.IPPacket(t0, udp(res4, 40000, auth4, 53, msg(t, 1, "lame.example.", dns.TypeA, false, false, netip.Prefix{})))
	h.p.IPPacket(t0+60e9, udp(res4, 40001, auth4, 53, msg(t, 2, "x.example.", dns.TypeA, false, false, netip.Prefix{})))
	if len(h.recs) != 0 {
		t.Fatalf("expired at exactly 60 s; the C reference waits for more than 60 whole seconds")
	}
	h.p.IPPacket(t0+61e9, udp(res4, 40002, auth4, 53, msg(t, 3, "y.example.", dns.TypeA, false, false, netip.Prefix{})))
	h.p.IPPacket(t0+62e9, udp(res4, 40003, auth4, 53, msg(t, 4, "z.example.", dns.TypeA, false, false, netip.Prefix{})))
	if len(h.recs) != 1 || h.recs[0].Type != dnsqr.UDPUnansweredQuery || h.recs[0].ID != 1 {
		t.Fatalf("got %d records, want the first query unanswered", len(h.recs))
	}
	if !h.recs[0].HasTimeout || h.recs[0].Timeout != 61 {
		t.Errorf("timeout = %v, want 61", h.recs[0].Timeout)
	}
	h.p.Flush()
	if len(h.recs) != 4 {
		t.Errorf("after flush: %d records, want 4", len(h.recs))
	}
}

func TestStateTableEvictionCounted(t *testing.T) {
	h := newHarness(t, Config{RD: -1, StateMax: 2})
	for i := 0; i < 5; i++ {
		h.p.IPPacket(t0+int64(i), udp(res4, uint16(40000+i), auth4, 53, msg(t, uint16(i), "a.example.", dns.TypeA, false, false, netip.Prefix{})))
	}
	s := h.p.Stats()
	if s.StateEvicted != 3 || s.Pending != 2 || len(h.recs) != 3 {
		t.Errorf("evicted %d pending %d records %d, want 3, 2, 3", s.StateEvicted, s.Pending, len(h.recs))
	}
}

// contains reports whether needle occurs anywhere in any record's encoded bytes.
func (h *harness) contains(needle []byte) bool {
	for _, b := range h.raw {
		if bytes.Contains(b, needle) {
			return true
		}
	}
	return false
}

func TestECSScrubbed(t *testing.T) {
	for _, tc := range []struct {
		res, auth netip.Addr
		subnet    netip.Prefix
	}{
		{res4, auth4, netip.MustParsePrefix("203.0.113.0/24")},
		{res6, auth6, netip.MustParsePrefix("2001:db8:beef:cafe::/64")},
		{res4, auth4, netip.MustParsePrefix("2001:db8:beef:cafe::/56")},
	} {
		h := newHarness(t, Config{RD: -1})
		h.p.IPPacket(t0, udp(tc.res, 40000, tc.auth, 53, msg(t, 5, "ecs.example.", dns.TypeA, false, false, tc.subnet)))
		h.p.IPPacket(t0+1e6, udp(tc.auth, 53, tc.res, 40000, msg(t, 5, "ecs.example.", dns.TypeA, true, false, tc.subnet)))
		h.p.Flush()
		if len(h.recs) != 1 {
			s := h.p.Stats()
			t.Fatalf("%v: %d records; %s", tc.subnet, len(h.recs), s.String())
		}
		sub := tc.subnet.Addr().AsSlice()[:tc.subnet.Bits()/8]
		if h.contains(sub) {
			t.Errorf("%v: the client subnet's octets %x are still in the record", tc.subnet, sub)
		}
		if got := h.p.Stats().Privacy.ECSScrubbed; got != 2 {
			t.Errorf("%v: ECSScrubbed = %d, want 2", tc.subnet, got)
		}
		r := h.recs[0]
		if r.UDPChecksum != dnsqr.ChecksumCorrect {
			t.Errorf("%v: response checksum verdict %v", tc.subnet, r.UDPChecksum)
		}
		for _, p := range append(r.QueryPackets, r.ResponsePackets...) {
			if !udpChecksumValid(p) {
				t.Errorf("%v: stored packet's UDP checksum no longer valid: % x", tc.subnet, p)
			}
			m, ok := dnsqr.DNSPayload([][]byte{p})
			if !ok {
				t.Fatalf("stored packet does not parse")
			}
			var dm dns.Msg
			if err := dm.Unpack(m); err != nil {
				t.Fatalf("scrubbed message does not unpack: %v", err)
			}
			for _, o := range dm.IsEdns0().Option {
				if e, ok := o.(*dns.EDNS0_SUBNET); ok && (e.SourceNetmask != 0 || !e.Address.IsUnspecified()) {
					t.Errorf("ECS left with netmask %d address %v", e.SourceNetmask, e.Address)
				}
			}
		}
	}
}

func udpChecksumValid(pkt []byte) bool {
	var p decode.Packet
	if decode.DecodeIP(pkt, &p) != decode.OK {
		return false
	}
	ph := binary.BigEndian.AppendUint16([]byte{0, 17}, uint16(len(p.L4)))
	return inet.Reference(p.Src.AsSlice(), p.Dst.AsSlice(), ph, p.L4) == 0xffff
}

func TestZeroResolverEverywhere(t *testing.T) {
	for _, fam := range []struct{ res, auth netip.Addr }{{res4, auth4}, {res6, auth6}} {
		// Unsolicited records on and no hold: the C reference's record order.
		h := newHarness(t, Config{RD: -1, ZeroResolver: true, Unsolicited: true})
		q := msg(t, 11, "z.example.", dns.TypeA, false, false, netip.Prefix{})
		// answered, unsolicited, unanswered
		h.p.IPPacket(t0, udp(fam.res, 40000, fam.auth, 53, q))
		h.p.IPPacket(t0+1e6, udp(fam.auth, 53, fam.res, 40000, msg(t, 11, "z.example.", dns.TypeA, true, false, netip.Prefix{})))
		h.p.IPPacket(t0+2e6, udp(fam.auth, 53, fam.res, 40001, msg(t, 12, "u.example.", dns.TypeA, true, false, netip.Prefix{})))
		h.p.IPPacket(t0+3e6, udp(fam.res, 40002, fam.auth, 53, msg(t, 13, "n.example.", dns.TypeA, false, false, netip.Prefix{})))
		// an ICMP error about a query
		q14 := udp(fam.res, 40003, fam.auth, 53, msg(t, 14, "i.example.", dns.TypeA, false, false, netip.Prefix{}))
		h.p.IPPacket(t0+4e6, q14)
		h.p.IPPacket(t0+5e6, icmpUnreach(fam.auth, fam.res, q14))
		h.p.Flush()
		if len(h.recs) != 4 {
			s := h.p.Stats()
			t.Fatalf("%v: %d records, want 4; %s", fam.res, len(h.recs), s.String())
		}
		if h.contains(fam.res.AsSlice()) {
			t.Errorf("%v: the resolver's address is still in a record", fam.res)
		}
		for _, r := range h.recs {
			if !r.QueryIP.IsUnspecified() || !r.ResolverZeroed {
				t.Errorf("%v %v: query_ip %v zeroed=%v", fam.res, r.Type, r.QueryIP, r.ResolverZeroed)
			}
			for _, p := range append(r.QueryPackets, r.ResponsePackets...) {
				if !udpChecksumValid(p) {
					t.Errorf("%v %v: UDP checksum invalid after zeroing", fam.res, r.Type)
				}
			}
		}
		// Emitted as they happen: pair, unsolicited, the ICMP error closing query 14, then the
		// unanswered query 13 at flush.
		want := []dnsqr.Type{dnsqr.UDPQueryResponse, dnsqr.UDPUnsolicitedResponse, dnsqr.ICMP, dnsqr.UDPUnansweredQuery}
		for i, r := range h.recs {
			if r.Type != want[i] {
				t.Errorf("%v: record %d is %v, want %v", fam.res, i, r.Type, want[i])
			}
		}
		if r := h.recs[2]; r.ID != 14 || len(r.QueryPackets) != 1 || r.ICMP == nil {
			t.Errorf("%v: ICMP error did not close query 14: %+v", fam.res, r)
		}
	}
}

// icmpUnreach builds a port-unreachable error from router to the query's sender, quoting it.
func icmpUnreach(from, to netip.Addr, quoted []byte) []byte {
	if len(quoted) > 200 {
		quoted = quoted[:200]
	}
	return pktbuild.AppendICMPUnreachable(nil, from, to, quoted)
}

func TestAuthorityMode(t *testing.T) {
	h := newHarness(t, Config{RD: -1, Authorities: []netip.Prefix{netip.PrefixFrom(auth4, 32)}})
	h.p.IPPacket(t0, udp(client4, 40000, auth4, 53, msg(t, 21, "a.example.", dns.TypeA, false, true, netip.Prefix{})))
	h.p.IPPacket(t0+1e6, udp(auth4, 53, client4, 40000, msg(t, 21, "a.example.", dns.TypeA, true, true, netip.Prefix{})))
	// Traffic not involving the authority is not ours.
	h.p.IPPacket(t0+2e6, udp(res6, 40000, auth6, 53, msg(t, 22, "a.example.", dns.TypeA, false, false, netip.Prefix{})))
	h.p.Flush()
	if len(h.recs) != 1 || h.recs[0].Type != dnsqr.UDPQueryResponse {
		t.Fatalf("got %d records, want one pair", len(h.recs))
	}
}

// TestTableChurn drives the hash table through random inserts and deletes against a model, so
// backward-shift deletion can never lose or misplace an entry.
func TestTableChurn(t *testing.T) {
	tb := newTable(64)
	live := map[int32]flowKey{}
	rnd := uint32(1)
	next := func() uint32 { rnd = rnd*1664525 + 1013904223; return rnd >> 8 }
	for step := 0; step < 20000; step++ {
		if len(live) < 64 && next()%3 != 0 {
			// few distinct ids, so duplicates and long probe runs are common
			k := makeKey(res4, auth4, 17, uint16(next()%8), 53, uint16(next()%4))
			i := tb.alloc(k)
			tb.e[i].hasQ = false
			live[i] = k
			continue
		}
		for i, k := range live {
			j := tb.first(k)
			if j == nilIdx {
				t.Fatalf("step %d: live key not found", step)
			}
			tb.unlink(j)
			tb.release(j)
			delete(live, j)
			_ = i
			break
		}
	}
	n := 0
	for _, s := range tb.slots {
		if s != 0 {
			n++
		}
	}
	if n != len(live) || tb.n != len(live) {
		t.Fatalf("slots %d, count %d, model %d", n, tb.n, len(live))
	}
}

package pipeline

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/sie-europe/dnssensor/internal/inet"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
)

// The crafted privacy cases for the octets around and beside the DNS message: IP options, IPv6
// extension headers, and EDNS data that is not inside a well-formed OPT record. Each case puts a
// client address (or an ECS subnet) where only a record's stored bytes could carry it out.

// withIPv4Options inserts opts (a multiple of 4 octets) into an IPv4 datagram's header, fixing the
// header length, total length and header checksum; the transport checksum does not cover options.
func withIPv4Options(pkt, opts []byte) []byte {
	hl := int(pkt[0]&0xf) * 4
	b := append(append(append([]byte{}, pkt[:hl]...), opts...), pkt[hl:]...)
	b[0] = 0x40 | byte((hl+len(opts))/4)
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[10], b[11] = 0, 0
	binary.BigEndian.PutUint16(b[10:], ^inet.Reference(b[:hl+len(opts)]))
	return b
}

// recordRoute is an IPv4 Record Route option (RFC 791) whose first slot holds a, padded with NOP.
func recordRoute(a netip.Addr) []byte {
	o := []byte{7, 11, 8}
	o = append(o, a.AsSlice()...)
	o = append(o, 0, 0, 0, 0)
	return append(o, 1) // NOP to a multiple of 4
}

// withIPv6Ext inserts an extension header of type nh whose body (after next-header and length) is
// body, padded to a multiple of 8 octets, right after the fixed header.
func withIPv6Ext(pkt []byte, nh uint8, body []byte) []byte {
	h := append([]byte{pkt[6], 0}, body...)
	for len(h)%8 != 0 {
		h = append(h, 0)
	}
	h[1] = byte(len(h)/8 - 1)
	b := append(append(append([]byte{}, pkt[:40]...), h...), pkt[40:]...)
	b[6] = nh
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
	return b
}

// optWith is a Hop-by-Hop or Destination Options body carrying a in an unknown option (type 0x1e:
// skip if unknown) after a PadN.
func optWith(a netip.Addr) []byte {
	s := a.AsSlice()
	return append([]byte{1, 0, 0x1e, byte(len(s))}, s...)
}

// l4Offset is where the transport header of a whole datagram starts.
func l4Offset(t *testing.T, pkt []byte) int {
	t.Helper()
	var p decode.Packet
	if r := decode.DecodeIP(pkt, &p); r != decode.OK {
		t.Fatalf("crafted packet does not decode: %v", r)
	}
	return p.HdrLen
}

// ipv4HeaderValid checks the header checksum of an IPv4 datagram (IPv6 has none).
func ipv4HeaderValid(pkt []byte) bool {
	if pkt[0]>>4 != 4 {
		return true
	}
	return inet.Reference(pkt[:int(pkt[0]&0xf)*4]) == 0xffff
}

// fragment cuts a whole datagram's upper layer into IP fragments of at most n octets of data
// (a multiple of 8), keeping the header (and, for IPv6, every extension header before the
// Fragment header) in each.
func fragment(t *testing.T, pkt []byte, n int) [][]byte {
	t.Helper()
	hl := l4Offset(t, pkt)
	data := pkt[hl:]
	var out [][]byte
	for off := 0; off < len(data); off += n {
		end := min(off+n, len(data))
		more := end < len(data)
		var f []byte
		if pkt[0]>>4 == 4 {
			f = append(append([]byte{}, pkt[:hl]...), data[off:end]...)
			binary.BigEndian.PutUint16(f[2:], uint16(len(f)))
			fo := uint16(off / 8)
			if more {
				fo |= 0x2000
			}
			binary.BigEndian.PutUint16(f[4:], 0x4242)
			binary.BigEndian.PutUint16(f[6:], fo)
			f[10], f[11] = 0, 0
			binary.BigEndian.PutUint16(f[10:], ^inet.Reference(f[:hl]))
		} else {
			// The Fragment header goes last among the extension headers: it takes over the
			// upper-layer protocol number from whichever header named it.
			last := 6
			for o := 40; o < hl; o += (int(pkt[o+1]) + 1) * 8 {
				last = o
			}
			fo := uint16(off)
			if more {
				fo |= 1
			}
			fh := []byte{pkt[last], 0, byte(fo >> 8), byte(fo), 0, 0, 0x42, 0x42}
			f = append(append(append([]byte{}, pkt[:hl]...), fh...), data[off:end]...)
			f[last] = 44
			binary.BigEndian.PutUint16(f[4:], uint16(len(f)-40))
		}
		out = append(out, f)
	}
	return out
}

// leakCase is one crafted input and the octets that must not reach any record.
type leakCase struct {
	name    string
	pkts    [][]byte // fed in order, one frame each
	secret  []byte
	records int // records expected (the transaction must still be kept)
}

// runLeakCase feeds c through a pipeline in every privacy-relevant configuration and reports
// whether the secret reached a record's encoded bytes; it also checks every stored packet is still
// well-formed with valid checksums.
func runLeakCase(t *testing.T, c leakCase) (leaked bool) {
	t.Helper()
	for _, zero := range []bool{false, true} {
		for _, rd := range []int{-1, 0} {
			h := newHarness(t, Config{RD: rd, ZeroResolver: zero})
			for i, p := range c.pkts {
				h.p.IPPacket(t0+int64(i)*1e6, p)
			}
			h.p.Flush()
			if len(h.recs) != c.records {
				s := h.p.Stats()
				t.Errorf("%s zero=%v rd=%d: %d records, want %d; %s", c.name, zero, rd, len(h.recs), c.records, s.String())
			}
			if h.contains(c.secret) {
				leaked = true
			}
			for _, r := range h.recs {
				checkStored(t, c.name, r)
				// A secret cut by a fragment boundary shows only in the reassembled data.
				for _, list := range [][][]byte{r.QueryPackets, r.ResponsePackets} {
					var data []byte
					for _, p := range list {
						var d decode.Packet
						decode.DecodeIP(p, &d)
						data = append(data, d.L4...)
					}
					if len(list) > 1 && bytes.Contains(data, c.secret) {
						leaked = true
					}
				}
			}
		}
	}
	return leaked
}

// checkStored checks that every stored packet still decodes and that its IPv4 header checksum
// and (for whole datagrams) transport checksum are valid: the crafted inputs were valid.
func checkStored(t *testing.T, name string, r *dnsqr.Record) {
	t.Helper()
	for _, list := range [][][]byte{r.QueryPackets, r.ResponsePackets} {
		for _, p := range list {
			var d decode.Packet
			if res := decode.DecodeIP(p, &d); res != decode.OK {
				t.Errorf("%s: stored packet no longer decodes (%v): % x", name, res, p)
				continue
			}
			if !ipv4HeaderValid(p) {
				t.Errorf("%s: stored IPv4 header checksum invalid: % x", name, p)
			}
			if len(list) == 1 && d.Proto == decode.ProtoUDP && !udpValid(&d) {
				t.Errorf("%s: stored UDP checksum invalid: % x", name, p)
			}
		}
	}
	if r.ICMP != nil {
		var d decode.Packet
		if res := decode.DecodeIP(r.ICMP, &d); res != decode.OK {
			t.Fatalf("%s: stored ICMP packet no longer decodes (%v)", name, res)
		}
		if !ipv4HeaderValid(r.ICMP) {
			t.Errorf("%s: ICMP packet's IPv4 header checksum invalid", name)
		}
		if d.Src.Is4() {
			if inet.Reference(d.L4) != 0xffff {
				t.Errorf("%s: ICMP checksum invalid", name)
			}
			if !ipv4HeaderValid(d.Payload) {
				t.Errorf("%s: quoted IPv4 header checksum invalid", name)
			}
		} else {
			ph := append(append(append([]byte{}, d.Src.AsSlice()...), d.Dst.AsSlice()...), 0, 0, byte(len(d.L4)>>8), byte(len(d.L4)), 0, 0, 0, 58)
			if inet.Reference(append(ph, d.L4...)) != 0xffff {
				t.Errorf("%s: ICMPv6 checksum invalid", name)
			}
		}
	}
}

// udpValid checks a whole datagram's UDP checksum over the UDP length (not the IP payload).
func udpValid(d *decode.Packet) bool {
	u := d.L4[:binary.BigEndian.Uint16(d.L4[4:])]
	ph := append(append(append([]byte{}, d.Src.AsSlice()...), d.Dst.AsSlice()...), 0, 17, byte(len(u)>>8), byte(len(u)))
	return inet.Reference(append(ph, u...)) == 0xffff
}

// headerCases are client addresses in IP options and IPv6 extension headers of stored packets.
func headerCases(t *testing.T) []leakCase {
	var cs []leakCase
	for _, f := range []struct {
		res, auth, client netip.Addr
	}{{res4, auth4, client4}, {res6, auth6, client6}} {
		q := udp(f.res, 40000, f.auth, 53, msg(t, 31, "opt.example.", dns.TypeA, false, false, netip.Prefix{}))
		r := udp(f.auth, 53, f.res, 40000, msg(t, 31, "opt.example.", dns.TypeA, true, false, netip.Prefix{}))
		big := func(resp bool) []byte {
			m := new(dns.Msg)
			m.SetQuestion("frag.example.", dns.TypeTXT)
			m.Id, m.Response, m.RecursionDesired = 32, resp, false
			if resp {
				for i := 0; i < 8; i++ {
					m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: "frag.example.", Rrtype: dns.TypeTXT, Class: 1, Ttl: 60},
						Txt: []string{string(bytes.Repeat([]byte{'a' + byte(i)}, 200))}})
				}
			}
			b, err := m.Pack()
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		fq := udp(f.res, 40001, f.auth, 53, big(false))
		fr := udp(f.auth, 53, f.res, 40001, big(true))
		sec := f.client.AsSlice()
		// Octets after the UDP length but inside the IP datagram: no checksum covers them.
		beyond := append(append([]byte{}, r...), sec...)
		if f.res.Is4() {
			binary.BigEndian.PutUint16(beyond[2:], uint16(len(beyond)))
			beyond[10], beyond[11] = 0, 0
			binary.BigEndian.PutUint16(beyond[10:], ^inet.Reference(beyond[:20]))
		} else {
			binary.BigEndian.PutUint16(beyond[4:], uint16(len(beyond)-40))
		}
		cs = append(cs, leakCase{f.res.String() + " octets after the UDP length", [][]byte{q, beyond}, sec, 1})
		// routedVia rewrites a query so its transport checksum uses final as the pseudo-header's
		// destination, as a sender does when a route still lists it.
		routedVia := func(pkt []byte, final netip.Addr) []byte {
			o := l4Offset(t, pkt)
			pkt[o+6], pkt[o+7] = 0, 0
			ph := append(append(append([]byte{}, f.res.AsSlice()...), final.AsSlice()...), 0, 17, pkt[o+4], pkt[o+5])
			binary.BigEndian.PutUint16(pkt[o+6:], ^inet.Reference(append(ph, pkt[o:]...)))
			return pkt
		}
		if f.res.Is4() {
			rr := recordRoute(f.client)
			lsrr := append([]byte{131, 7, 4}, sec...)
			lsrr = append(lsrr, 1) // NOP
			cs = append(cs, leakCase{"v4 loose source route, final destination in it", [][]byte{routedVia(withIPv4Options(q, lsrr), f.client), r}, sec, 1})
			cs = append(cs,
				leakCase{"v4 record route in query", [][]byte{withIPv4Options(q, rr), r}, sec, 1},
				leakCase{"v4 record route in response", [][]byte{q, withIPv4Options(r, rr)}, sec, 1},
				leakCase{"v4 record route in every fragment", append([][]byte{fq}, fragment(t, withIPv4Options(fr, rr), 512)...), sec, 1},
				leakCase{"v4 record route around an ICMP error and in its quote", [][]byte{withIPv4Options(q, rr),
					withIPv4Options(icmpUnreach(f.auth, f.res, withIPv4Options(q, rr)), rr)}, sec, 1},
			)
			continue
		}
		// A routing header with a segment left names the final destination, which the transport
		// checksum's pseudo-header then uses (RFC 8200 §8.1).
		routed := routedVia(withIPv6Ext(q, 43, append([]byte{0, 1, 0, 0, 0, 0}, sec...)), f.client)
		srh := routedVia(withIPv6Ext(q, 43, append([]byte{4, 1, 0, 0, 0, 0}, sec...)), f.client)
		cs = append(cs,
			leakCase{"v6 segment routing header, final destination in it", [][]byte{srh, r}, sec, 1},
			leakCase{"v6 hop-by-hop in query", [][]byte{withIPv6Ext(q, 0, optWith(f.client)), r}, sec, 1},
			leakCase{"v6 destination options in response", [][]byte{q, withIPv6Ext(r, 60, optWith(f.client))}, sec, 1},
			leakCase{"v6 routing header, no segment left", [][]byte{withIPv6Ext(q, 43, append([]byte{0, 0, 0, 0, 0, 0}, sec...)), r}, sec, 1},
			leakCase{"v6 routing header, final destination in it", [][]byte{routed, r}, sec, 1},
			leakCase{"v6 hop-by-hop in every fragment", append([][]byte{fq}, fragment(t, withIPv6Ext(fr, 0, optWith(f.client)), 512)...), sec, 1},
			leakCase{"v6 hop-by-hop around an ICMPv6 error", [][]byte{q, withIPv6Ext(icmpUnreach(f.auth, f.res, q), 0, optWith(f.client))}, sec, 1},
		)
	}
	return cs
}

func TestStoredHeadersKeepNoOptionContents(t *testing.T) {
	leaks := 0
	cs := headerCases(t)
	for _, c := range cs {
		if runLeakCase(t, c) {
			leaks++
			t.Errorf("%s: the client address % x reached a record", c.name, c.secret)
		}
	}
	t.Logf("%d of %d header cases leak", leaks, len(cs))
}

// ednsCases are ECS client subnets in EDNS data that no well-formed OPT record accounts for.
func ednsCases(t *testing.T) []leakCase {
	var cs []leakCase
	for _, f := range []struct {
		res, auth netip.Addr
		subnet    netip.Prefix
	}{
		{res4, auth4, netip.MustParsePrefix("203.0.113.0/24")},
		{res6, auth6, netip.MustParsePrefix("2001:db8:beef:ca00::/56")},
	} {
		fam := byte(1)
		if f.subnet.Addr().Is6() {
			fam = 2
		}
		addr := f.subnet.Addr().AsSlice()[:(f.subnet.Bits()+7)/8]
		ecs := append([]byte{0, 8, 0, byte(4 + len(addr)), 0, fam, byte(f.subnet.Bits()), 0}, addr...)
		// An OPT RR (owner ".", type 41, class 1232, TTL 0) with the given RDATA and RDLENGTH.
		opt := func(rdlen int, rdata []byte) []byte {
			b := []byte{0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, byte(rdlen >> 8), byte(rdlen)}
			return append(b, rdata...)
		}
		base := func(id uint16, resp bool) []byte {
			return msg(t, id, "ecs.example.", dns.TypeA, resp, false, netip.Prefix{})
		}
		withCounts := func(m []byte, an, ar uint16) []byte {
			m = append([]byte{}, m...)
			binary.BigEndian.PutUint16(m[6:], an)
			binary.BigEndian.PutUint16(m[10:], ar)
			return m
		}
		pair := func(id uint16, resp []byte) [][]byte {
			return [][]byte{udp(f.res, 40000+id, f.auth, 53, base(id, false)), udp(f.auth, 53, f.res, 40000+id, resp)}
		}
		name := f.subnet.String() + ": "
		// OPT in the answer section whose ECS option runs past its RDLENGTH.
		over := append(withCounts(base(41, true), 1, 0), opt(len(ecs)-2, ecs)...)
		cs = append(cs, leakCase{name + "OPT overrunning its RDLENGTH in the answer section", pair(41, over), addr, 1})
		// OPT+ECS after the counted records.
		trail := append(withCounts(base(42, true), 0, 0), opt(len(ecs), ecs)...)
		cs = append(cs, leakCase{name + "OPT+ECS trailing the counted records", pair(42, trail), addr, 1})
		// The same in the resolver's own query.
		cs = append(cs, leakCase{name + "OPT+ECS trailing the query", [][]byte{
			udp(f.res, 40043, f.auth, 53, append(base(43, false), opt(len(ecs), ecs)...)),
			udp(f.auth, 53, f.res, 40043, base(43, true))}, addr, 1})
		// ECS option shorter than its address: the address spills into the next, unknown option.
		short := append([]byte{0, 8, 0, 4, 0, fam, byte(f.subnet.Bits()), 0, 0xfd, 0xe9, 0, byte(len(addr))}, addr...)
		spill := append(withCounts(base(44, true), 0, 1), opt(len(short), short)...)
		cs = append(cs, leakCase{name + "ECS shorter than its address, spilling into the next option", pair(44, spill), addr, 1})
		// A well-formed OPT with a private option carrying the address (as Umbrella's 20292 does).
		priv := append([]byte{0x4f, 0x44, 0, byte(len(addr))}, addr...)
		cs = append(cs, leakCase{name + "private EDNS option carrying the address", pair(47, append(withCounts(base(47, true), 0, 1), opt(len(priv), priv)...)), addr, 1})
		// The resolver's query with ECS, quoted whole by an ICMP error.
		eq := udp(f.res, 40046, f.auth, 53, msg(t, 46, "ecs.example.", dns.TypeA, false, false, f.subnet))
		cs = append(cs, leakCase{name + "ECS in the query an ICMP error quotes", [][]byte{eq, icmpUnreach(f.auth, f.res, eq)}, addr, 1})
		// Trailing OPT+ECS in a fragmented response: the scrub must still reach every fragment.
		m := new(dns.Msg)
		m.SetQuestion("frag.example.", dns.TypeTXT)
		m.Id, m.Response, m.RecursionDesired = 45, true, false
		for i := 0; i < 4; i++ {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: "frag.example.", Rrtype: dns.TypeTXT, Class: 1, Ttl: 60},
				Txt: []string{string(bytes.Repeat([]byte{'a' + byte(i)}, 200))}})
		}
		fm, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		// Put the ECS address across the 1024-octet fragment boundary.
		pad := 1024 - 8 - len(fm) - 11 - 8
		fm = append(fm, make([]byte, pad)...)
		fm = append(fm, opt(len(ecs), ecs)...)
		q := udp(f.res, 40045, f.auth, 53, msg(t, 45, "frag.example.", dns.TypeTXT, false, false, netip.Prefix{}))
		cs = append(cs, leakCase{name + "trailing OPT+ECS across IP fragments",
			append([][]byte{q}, fragment(t, udp(f.auth, 53, f.res, 40045, fm), 1024)...), addr, 1})
		// A well-formed ECS across IP fragments keeps working.
		m.Extra = nil
		m.SetEdns0(1232, false)
		m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_SUBNET{Code: 8, Family: uint16(fam), SourceNetmask: uint8(f.subnet.Bits()), Address: f.subnet.Addr().AsSlice()})
		wm, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		cut := (len(wm) - len(addr) + 8 + 2) &^ 7 // inside the address
		cs = append(cs, leakCase{name + "well-formed ECS across IP fragments",
			append([][]byte{q}, fragment(t, udp(f.auth, 53, f.res, 40045, wm), cut)...), addr, 1})
	}
	return cs
}

func TestECSOutsideWellFormedOPT(t *testing.T) {
	leaks := 0
	cs := ednsCases(t)
	for _, c := range cs {
		if runLeakCase(t, c) {
			leaks++
			t.Errorf("%s: ECS address % x reached a record", c.name, c.secret)
		}
	}
	t.Logf("%d of %d EDNS cases leak", leaks, len(cs))
}

// TestWellFormedEDNSKept: a message whose EDNS data is accounted for keeps its other options
// (a cookie here) and only loses the ECS option's data.
func TestWellFormedEDNSKept(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("keep.example.", dns.TypeA)
	m.Id = 51
	m.SetEdns0(1232, true)
	m.IsEdns0().Option = append(m.IsEdns0().Option,
		&dns.EDNS0_SUBNET{Code: 8, Family: 1, SourceNetmask: 24, Address: []byte{203, 0, 113, 0}},
		&dns.EDNS0_COOKIE{Code: 10, Cookie: "0102030405060708"})
	q, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, Config{RD: -1})
	h.p.IPPacket(t0, udp(res4, 40000, auth4, 53, q))
	h.p.Flush()
	if len(h.recs) != 1 {
		t.Fatalf("%d records", len(h.recs))
	}
	if !h.contains([]byte{1, 2, 3, 4, 5, 6, 7, 8}) || h.contains([]byte{203, 0, 113}) {
		t.Errorf("cookie must stay, ECS must go")
	}
	if s := h.p.Stats(); s.Privacy.EDNSZeroed != 0 || s.Privacy.ECSScrubbed != 1 {
		t.Errorf("EDNSZeroed %d ECSScrubbed %d, want 0 and 1", s.Privacy.EDNSZeroed, s.Privacy.ECSScrubbed)
	}
}

package pipeline

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sie-europe/dnssensor/internal/pktbuild"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
)

// hostileCase feeds one class of client traffic that a tap beside a resolver sees. No record may
// ever carry the client's address, whatever the configuration.
type hostileCase struct {
	name string
	feed func(t *testing.T, h *harness, client, res, auth netip.Addr)
	// unsolicitedOnly: a response from port 53 to a resolver's ephemeral port by an address never
	// seen as a client cannot be told from a late authority; only unsolicited records being off
	// (the default) keeps it out.
	unsolicitedOnly bool
	// holdOnly: with unsolicited records on, the client shows itself only after its forged
	// response, so only the hold window keeps it out.
	holdOnly bool
}

func tcpSeg(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, seq uint32, m []byte) []byte {
	return pktbuild.AppendTCP(nil, netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport), seq, m)
}

// Messages of the hostile cases carry RD=0, so the default -rd 0 cannot hide a leak.
func q0(t *testing.T, id uint16, name string) []byte {
	return msg(t, id, name, dns.TypeA, false, false, netip.Prefix{})
}

func r1(t *testing.T, id uint16, name string) []byte {
	return msg(t, id, name, dns.TypeA, true, false, netip.Prefix{})
}

var hostileCases = []hostileCase{
	{"icmp quoting the resolver's response to client port 5353", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, udp(c, 5353, res, 53, q0(t, 1, "laptop.example.")))
		resp := udp(res, 53, c, 5353, r1(t, 1, "laptop.example."))
		h.p.IPPacket(t0+1e6, resp)
		h.p.IPPacket(t0+2e6, icmpUnreach(c, res, resp))
	}, false, false},
	{"icmp quoting the resolver's response to client port 53", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		resp := udp(res, 53, c, 53, r1(t, 2, "laptop.example."))
		h.p.IPPacket(t0, resp)
		h.p.IPPacket(t0+1e6, icmpUnreach(c, res, resp))
	}, false, false},
	{"icmp quoting a QR=1 message from a resolver port to client port 53", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, icmpUnreach(c, res, udp(res, 40000, c, 53, r1(t, 3, "laptop.example."))))
	}, false, false},
	{"icmp quoting a query the resolver never sent", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, icmpUnreach(c, res, udp(res, 40000, c, 53, q0(t, 4, "laptop.example."))))
	}, false, false},
	{"client tcp to resolver:53 with a forged QR=1 message", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, tcpSeg(c, 40000, res, 53, 1000, q0(t, 5, "laptop.example.")))
		h.p.IPPacket(t0+1e6, tcpSeg(res, 53, c, 40000, 5000, r1(t, 5, "laptop.example.")))
		h.p.IPPacket(t0+2e6, tcpSeg(c, 40000, res, 53, 1000+2+uint32(len(q0(t, 5, "laptop.example."))), r1(t, 6, "forged.example.")))
	}, false, false},
	{"client tcp from port 53 with a forged QR=1 message", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, tcpSeg(c, 53, res, 53, 1000, r1(t, 7, "forged.example.")))
	}, false, false},
	{"client udp QR=1 to resolver:53", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, udp(c, 40000, res, 53, r1(t, 8, "forged.example.")))
	}, false, false},
	{"client udp QR=1 from port 53 to resolver:53", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, udp(c, 53, res, 53, r1(t, 9, "forged.example.")))
	}, false, false},
	{"resolver:53 sends QR=0 to a client", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, udp(res, 53, c, 40000, q0(t, 10, "laptop.example.")))
	}, false, false},
	{"client QR=1 from port 53 to a resolver ephemeral port, no query", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, udp(c, 53, res, 40000, r1(t, 11, "forged.example.")))
	}, true, false},
	{"known client QR=1 from port 53 to a resolver ephemeral port", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, udp(c, 40000, res, 53, msg(t, 13, "laptop.example.", dns.TypeA, false, true, netip.Prefix{})))
		h.p.IPPacket(t0+1e6, udp(c, 53, res, 40000, r1(t, 14, "forged.example.")))
	}, false, false},
	{"client QR=1 from port 53 to a resolver ephemeral port, then a query from it", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, udp(c, 53, res, 40000, r1(t, 15, "forged.example.")))
		h.p.IPPacket(t0+100e6, tcpSeg(c, 40001, res, 53, 1, msg(t, 16, "laptop.example.", dns.TypeA, false, true, netip.Prefix{})))
	}, false, true},
	{"mdns unicast reply to resolver:5353", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		group := netip.MustParseAddr("224.0.0.251")
		if res.Is6() {
			group = netip.MustParseAddr("ff02::fb")
		}
		h.p.IPPacket(t0, udp(res, 5353, group, 5353, q0(t, 0, "laptop.local.")))
		h.p.IPPacket(t0+1e6, udp(c, 5353, res, 5353, r1(t, 0, "laptop.local.")))
	}, false, false},
	{"mdns unicast query and reply", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, udp(res, 5353, c, 5353, q0(t, 12, "laptop.local.")))
		h.p.IPPacket(t0+1e6, udp(c, 5353, res, 5353, r1(t, 12, "laptop.local.")))
	}, false, false},
}

// TestHostileClientTrafficNeverRecorded is the privacy corpus for client traffic dressed up as
// the resolver's own: every class, both families, with and without -rd any and -zero-resolver,
// with unsolicited records off (the default) or on, with and without the hold.
// A case leaks when any record, in any field or stored packet byte, carries the client's address.
func TestHostileClientTrafficNeverRecorded(t *testing.T) {
	leaks, total := 0, 0
	for _, c := range hostileCases {
		for _, fam := range []struct{ client, res, auth netip.Addr }{{client4, res4, auth4}, {client6, res6, auth6}} {
			for _, mode := range []struct {
				unsol bool
				hold  time.Duration
			}{{false, 0}, {false, 500 * time.Millisecond}, {true, 0}, {true, 500 * time.Millisecond}} {
				if mode.unsol && (c.unsolicitedOnly || c.holdOnly && mode.hold == 0) {
					continue
				}
				for _, rd := range []int{-1, 0} {
					for _, zero := range []bool{false, true} {
						total++
						h := newHarness(t, Config{RD: rd, ZeroResolver: zero, Unsolicited: mode.unsol, Hold: mode.hold})
						c.feed(t, h, fam.client, fam.res, fam.auth)
						h.p.Flush()
						leaked := h.contains(fam.client.AsSlice())
						for _, r := range h.recs {
							if r.QueryIP == fam.client || r.ResponseIP == fam.client {
								leaked = true
							}
						}
						if leaked {
							leaks++
							t.Errorf("%s (%v, rd %d, zero %v, %+v): the client's address is in a record: %v", c.name, fam.client, rd, zero, mode, types(h.recs))
						}
					}
				}
			}
		}
	}
	t.Logf("%d of %d hostile cases leak a client address", leaks, total)
}

func types(recs []*dnsqr.Record) []dnsqr.Type {
	var out []dnsqr.Type
	for _, r := range recs {
		out = append(out, r.Type)
	}
	return out
}

// TestClientTCPNeverReassembled: client connections to the resolver's port 53 are refused before
// the reassembler allocates anything, whichever side sends; only the resolver's own connection
// toward an authority's port 53 goes in.
func TestClientTCPNeverReassembled(t *testing.T) {
	for _, fam := range []struct{ client, res, auth netip.Addr }{{client4, res4, auth4}, {client6, res6, auth6}} {
		h := newHarness(t, Config{RD: -1})
		n := 0
		for i := 0; i < 200; i++ {
			port := uint16(30000 + i)
			h.p.IPPacket(t0+int64(n)*1e6, tcpSeg(fam.client, port, fam.res, 53, 1, q0(t, uint16(i), "laptop.example.")))
			h.p.IPPacket(t0+int64(n+1)*1e6, tcpSeg(fam.res, 53, fam.client, port, 1, r1(t, uint16(i), "laptop.example.")))
			n += 2
		}
		s := h.p.Stats()
		if s.TCP.Segments != 0 || s.MemTCP != 0 || s.NotResolver != uint64(n) {
			t.Errorf("%v: client TCP reached the reassembler: segments %d mem %d not_resolver %d of %d",
				fam.client, s.TCP.Segments, s.MemTCP, s.NotResolver, n)
		}
		// The resolver's own connection still pairs.
		h.p.IPPacket(t0+1e9, tcpSeg(fam.res, 41000, fam.auth, 53, 1, q0(t, 77, "tcp.example.")))
		h.p.IPPacket(t0+1e9+1e6, tcpSeg(fam.auth, 53, fam.res, 41000, 1, r1(t, 77, "tcp.example.")))
		h.p.Flush()
		if len(h.recs) != 1 || h.recs[0].Type != dnsqr.TCP || len(h.recs[0].QueryPackets) != 1 || len(h.recs[0].ResponsePackets) != 1 {
			t.Fatalf("%v: resolver TCP transaction: %v", fam.res, types(h.recs))
		}
		// A QR=1 message the resolver's side sends on its own connection is no answer.
		h.p.IPPacket(t0+2e9, tcpSeg(fam.res, 41001, fam.auth, 53, 1, r1(t, 78, "forged.example.")))
		h.p.Flush()
		if len(h.recs) != 1 {
			t.Errorf("%v: a QR=1 message toward port 53 became a record", fam.res)
		}
	}
}

// TestUnsolicitedHeldForLateQuery: a response whose query arrives up to the hold window later
// (two tap ports read independently) still pairs; after the window it is unsolicited: dropped
// and counted by default, a record with Unsolicited.
func TestUnsolicitedHeldForLateQuery(t *testing.T) {
	for _, fam := range []struct{ res, auth netip.Addr }{{res4, auth4}, {res6, auth6}} {
		for _, unsol := range []bool{false, true} {
			h := newHarness(t, Config{RD: -1, Hold: 500 * time.Millisecond, Unsolicited: unsol})
			// late by 300 ms: pairs
			h.p.IPPacket(t0, udp(fam.auth, 53, fam.res, 40000, r1(t, 1, "late.example.")))
			h.p.IPPacket(t0+300e6, udp(fam.res, 40000, fam.auth, 53, q0(t, 1, "late.example.")))
			if len(h.recs) != 1 || h.recs[0].Type != dnsqr.UDPQueryResponse {
				t.Fatalf("%v: late query did not pair: %v", fam.res, types(h.recs))
			}
			r := h.recs[0]
			if len(r.QueryPackets) != 1 || len(r.ResponsePackets) != 1 || r.QueryTimes[0] != t0+300e6 || r.ResponseTimes[0] != t0 ||
				dnsqr.NameString(r.Qname) != "late.example." || r.QueryPort != 40000 || r.ResponseIP != fam.auth {
				t.Errorf("%v: late pair %+v", fam.res, r)
			}
			// late by 700 ms: the response is unsolicited, the query unanswered
			h.p.IPPacket(t0+1e9, udp(fam.auth, 53, fam.res, 40001, r1(t, 2, "later.example.")))
			h.p.IPPacket(t0+1e9+700e6, udp(fam.res, 40001, fam.auth, 53, q0(t, 2, "later.example.")))
			// never asked, still held at the end of input
			h.p.IPPacket(t0+2e9, udp(fam.auth, 53, fam.res, 40002, r1(t, 3, "never.example.")))
			h.p.Flush()
			want := []dnsqr.Type{dnsqr.UDPQueryResponse, dnsqr.UDPUnansweredQuery}
			if unsol {
				want = []dnsqr.Type{dnsqr.UDPQueryResponse, dnsqr.UDPUnsolicitedResponse, dnsqr.UDPUnsolicitedResponse, dnsqr.UDPUnansweredQuery}
			}
			if got := types(h.recs); len(got) != len(want) || fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("%v unsolicited=%v: records %v, want %v", fam.res, unsol, got, want)
			}
			s := h.p.Stats()
			wantDropped := uint64(2)
			if unsol {
				wantDropped = 0
			}
			if s.Held != 3 || s.HeldPaired != 1 || s.UnsolicitedDropped != wantDropped {
				t.Errorf("%v unsolicited=%v: held %d paired %d dropped %d", fam.res, unsol, s.Held, s.HeldPaired, s.UnsolicitedDropped)
			}
		}
	}
}

// TestUnsolicitedOffByDefault: without a hold, a response that matches no query is dropped and
// counted, unless unsolicited records are asked for (then at once, as the C reference does).
func TestUnsolicitedOffByDefault(t *testing.T) {
	for _, unsol := range []bool{false, true} {
		h := newHarness(t, Config{RD: -1, Unsolicited: unsol})
		h.p.IPPacket(t0, udp(auth6, 53, res6, 40000, r1(t, 1, "u.example.")))
		h.p.IPPacket(t0+1e6, tcpSeg(auth4, 53, res4, 40000, 1, r1(t, 2, "u.example.")))
		if unsol {
			if got := types(h.recs); fmt.Sprint(got) != fmt.Sprint([]dnsqr.Type{dnsqr.UDPUnsolicitedResponse, dnsqr.TCP}) {
				t.Errorf("with Unsolicited: %v", got)
			}
			continue
		}
		if len(h.recs) != 0 || h.p.Stats().UnsolicitedDropped != 2 {
			t.Errorf("default: %d records, unsolicited_dropped %d", len(h.recs), h.p.Stats().UnsolicitedDropped)
		}
	}
}

// TestHoldBounded: held responses are bounded in octets; the oldest is decided early, counted.
func TestHoldBounded(t *testing.T) {
	h := newHarness(t, Config{RD: -1, Hold: time.Second, HoldMaxBytes: 1000})
	for i := 0; i < 50; i++ {
		h.p.IPPacket(t0+int64(i), udp(auth4, 53, res4, uint16(40000+i), r1(t, uint16(i), "flood.example.")))
	}
	s := h.p.Stats()
	if s.HoldEvicted == 0 || s.UnsolicitedDropped != s.HoldEvicted || h.p.heldB > 1000 || h.p.held.n == 0 {
		t.Errorf("evicted %d dropped %d held %d octets in %d", s.HoldEvicted, s.UnsolicitedDropped, h.p.heldB, h.p.held.n)
	}
	// The newest is still held: its query pairs.
	h.p.IPPacket(t0+100, udp(res4, 40049, auth4, 53, q0(t, 49, "flood.example.")))
	if len(h.recs) != 1 || h.recs[0].Type != dnsqr.UDPQueryResponse {
		t.Errorf("newest held response did not pair: %v", types(h.recs))
	}
}

// TestMDNSOptIn: port 5353 is dropped and counted unless MDNS is set.
func TestMDNSOptIn(t *testing.T) {
	for _, on := range []bool{false, true} {
		h := newHarness(t, Config{RD: -1, MDNS: on})
		h.p.IPPacket(t0, udp(res4, 5353, auth4, 5353, q0(t, 5, "printer.local.")))
		h.p.IPPacket(t0+1e6, udp(auth4, 5353, res4, 5353, r1(t, 5, "printer.local.")))
		h.p.Flush()
		s := h.p.Stats()
		if on && (len(h.recs) != 1 || h.recs[0].Type != dnsqr.UDPQueryResponse) {
			t.Errorf("-mdns: %v", types(h.recs))
		}
		if !on && (len(h.recs) != 0 || s.MDNSDropped != 2) {
			t.Errorf("default: %d records, mdns_dropped %d", len(h.recs), s.MDNSDropped)
		}
	}
}

// TestICMPOnlyForPendingQueries: an ICMP error about a query that is not pending, or quoted too
// short to tell, makes no record and is counted.
func TestICMPOnlyForPendingQueries(t *testing.T) {
	h := newHarness(t, Config{RD: -1})
	q := udp(res4, 40000, auth4, 53, q0(t, 9, "gone.example."))
	h.p.IPPacket(t0, icmpUnreach(auth4, res4, q))
	h.p.IPPacket(t0+1e6, icmpUnreach(auth4, res4, q[:28]))
	h.p.Flush()
	if s := h.p.Stats(); len(h.recs) != 0 || s.ICMPUnmatched != 2 {
		t.Errorf("%d records, icmp_unmatched %d", len(h.recs), s.ICMPUnmatched)
	}
}

func TestWideResolverPrefixRefused(t *testing.T) {
	for _, tc := range []struct {
		p    string
		auth bool
		ok   bool
	}{
		{"0.0.0.0/0", false, false}, {"198.51.0.0/15", false, false}, {"198.51.0.0/16", false, true},
		{"::/0", false, false}, {"2001:db8::/31", false, false}, {"2001:db8::/32", false, true},
		{"192.0.0.0/8", true, false},
	} {
		cfg := Config{Resolvers: []netip.Prefix{netip.MustParsePrefix(tc.p)}}
		if tc.auth {
			cfg = Config{Authorities: cfg.Resolvers}
		}
		err := cfg.Validate()
		if (err == nil) != tc.ok || (err != nil && !strings.Contains(err.Error(), "allow-wide-resolver")) {
			t.Errorf("%s: %v", tc.p, err)
		}
		cfg.AllowWideResolver = true
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s with AllowWideResolver: %v", tc.p, err)
		}
	}
}

// TestHoldKeepsCReferenceOrder: with unsolicited records kept, holding responses changes neither
// the records nor their order from deciding at once (the C reference), byte for byte, as long as
// no late query pairs; a late pair takes the held response's place.
func TestHoldKeepsCReferenceOrder(t *testing.T) {
	feed := func(h *harness) {
		h.p.IPPacket(t0, udp(auth4, 53, res4, 40000, r1(t, 1, "u1.example.")))
		h.p.IPPacket(t0+1e6, udp(res4, 40001, auth4, 53, q0(t, 2, "p2.example.")))
		h.p.IPPacket(t0+2e6, udp(auth4, 53, res4, 40001, r1(t, 2, "p2.example.")))
		h.p.IPPacket(t0+3e6, udp(auth6, 53, res6, 40002, r1(t, 3, "u3.example.")))
		h.p.IPPacket(t0+4e6, udp(res6, 40003, auth6, 53, q0(t, 4, "n4.example.")))
		q5 := udp(res4, 40005, auth4, 53, q0(t, 5, "i5.example."))
		h.p.IPPacket(t0+5e6, q5)
		h.p.IPPacket(t0+6e6, icmpUnreach(auth4, res4, q5))
		h.p.IPPacket(t0+2e9, udp(auth4, 53, res4, 40006, r1(t, 6, "u6.example.")))
		h.p.IPPacket(t0+2e9+1e6, udp(res4, 40007, auth4, 53, q0(t, 7, "p7.example.")))
		h.p.IPPacket(t0+2e9+2e6, udp(auth4, 53, res4, 40007, r1(t, 7, "p7.example.")))
		h.p.Flush() // u6 is still held here
	}
	now := newHarness(t, Config{RD: -1, Unsolicited: true})
	feed(now)
	held := newHarness(t, Config{RD: -1, Unsolicited: true, Hold: 500 * time.Millisecond})
	feed(held)
	if len(now.raw) != 7 || len(held.raw) != len(now.raw) {
		t.Fatalf("%d records at once, %d held: %v / %v", len(now.raw), len(held.raw), types(now.recs), types(held.recs))
	}
	for i := range now.raw {
		if string(now.raw[i]) != string(held.raw[i]) {
			t.Errorf("record %d differs: at once %v id %d, held %v id %d", i, now.recs[i].Type, now.recs[i].ID, held.recs[i].Type, held.recs[i].ID)
		}
	}
	// A late query pairs in the held response's place, before the pair that followed it.
	h := newHarness(t, Config{RD: -1, Unsolicited: true, Hold: 500 * time.Millisecond})
	h.p.IPPacket(t0, udp(auth4, 53, res4, 40000, r1(t, 1, "late.example.")))
	h.p.IPPacket(t0+1e6, udp(res4, 40001, auth4, 53, q0(t, 2, "p2.example.")))
	h.p.IPPacket(t0+2e6, udp(auth4, 53, res4, 40001, r1(t, 2, "p2.example.")))
	if len(h.recs) != 0 || h.p.order.bytes == 0 {
		t.Fatalf("a record passed the undecided held response: %v", types(h.recs))
	}
	h.p.IPPacket(t0+3e6, udp(res4, 40000, auth4, 53, q0(t, 1, "late.example.")))
	if len(h.recs) != 2 || h.recs[0].ID != 1 || h.recs[1].ID != 2 || h.recs[0].Type != dnsqr.UDPQueryResponse {
		t.Errorf("got %v, want the late pair then the other", types(h.recs))
	}
	if h.p.order.bytes != 0 || !h.p.order.empty() {
		t.Errorf("queue not drained: %d octets", h.p.order.bytes)
	}
}

// TestHoldQueueBounded: records waiting behind a held response are bounded too.
func TestHoldQueueBounded(t *testing.T) {
	h := newHarness(t, Config{RD: -1, Unsolicited: true, Hold: 5 * time.Second, HoldMaxBytes: 4000})
	h.p.IPPacket(t0, udp(auth4, 53, res4, 40000, r1(t, 1, "u.example.")))
	for i := 0; i < 100; i++ {
		h.p.IPPacket(t0+int64(i+1)*1e6, udp(res4, uint16(41000+i), auth4, 53, q0(t, uint16(i), "q.example.")))
		h.p.IPPacket(t0+int64(i+1)*1e6+1, udp(auth4, 53, res4, uint16(41000+i), r1(t, uint16(i), "q.example.")))
	}
	s := h.p.Stats()
	if len(h.recs) < 90 || h.recs[0].Type != dnsqr.UDPUnsolicitedResponse || s.HoldEvicted != 1 || h.p.order.bytes > 4000 {
		t.Errorf("%d records (first %v), hold_evicted %d, queued %d octets", len(h.recs), types(h.recs[:1]), s.HoldEvicted, h.p.order.bytes)
	}
}

// TestIdleDecidesHeld: a quiet live input still decides held responses on the capture clock.
func TestIdleDecidesHeld(t *testing.T) {
	h := newHarness(t, Config{RD: -1, Unsolicited: true, Hold: 500 * time.Millisecond})
	h.p.IPPacket(t0, udp(auth4, 53, res4, 40000, r1(t, 1, "u.example.")))
	h.p.Idle(t0 + 400e6)
	if len(h.recs) != 0 {
		t.Fatalf("decided before the hold window ended")
	}
	h.p.Idle(t0 + 600e6)
	if len(h.recs) != 1 || h.recs[0].Type != dnsqr.UDPUnsolicitedResponse {
		t.Errorf("after the window: %v", types(h.recs))
	}
}

// TestResponsesOnlyModeRefusesKnownClients: -qr 1 emits responses without a query, so the
// remembered clients apply there too.
func TestResponsesOnlyModeRefusesKnownClients(t *testing.T) {
	h := newHarness(t, Config{RD: -1, QR: QRResponsesOnly})
	h.p.IPPacket(t0, udp(client6, 40000, res6, 53, q0(t, 1, "laptop.example.")))
	h.p.IPPacket(t0+1e6, udp(client6, 53, res6, 40000, r1(t, 2, "forged.example.")))
	h.p.IPPacket(t0+2e6, udp(auth6, 53, res6, 40001, r1(t, 3, "real.example.")))
	h.p.Flush()
	if len(h.recs) != 1 || h.recs[0].ResponseIP != auth6 || h.p.Stats().UnsolicitedClient != 1 {
		t.Errorf("got %v, want only the authority's response", types(h.recs))
	}
}

// TestAuthorityModeMirrorsTheRule: in authority mode the authority answers on port 53; its
// queriers' transactions (UDP, TCP, ICMP errors about them) are kept, nothing else.
func TestAuthorityModeMirrorsTheRule(t *testing.T) {
	for _, fam := range []struct{ querier, auth, other netip.Addr }{{res4, auth4, client4}, {res6, auth6, client6}} {
		h := newHarness(t, Config{RD: -1, Authorities: []netip.Prefix{netip.PrefixFrom(fam.auth, fam.auth.BitLen())}})
		// kept: UDP pair, TCP pair, ICMP error about a pending query
		h.p.IPPacket(t0, udp(fam.querier, 40000, fam.auth, 53, q0(t, 1, "a.example.")))
		h.p.IPPacket(t0+1e6, udp(fam.auth, 53, fam.querier, 40000, r1(t, 1, "a.example.")))
		h.p.IPPacket(t0+2e6, tcpSeg(fam.querier, 40001, fam.auth, 53, 1, q0(t, 2, "a.example.")))
		h.p.IPPacket(t0+3e6, tcpSeg(fam.auth, 53, fam.querier, 40001, 1, r1(t, 2, "a.example.")))
		q3 := udp(fam.querier, 40002, fam.auth, 53, q0(t, 3, "a.example."))
		h.p.IPPacket(t0+4e6, q3)
		h.p.IPPacket(t0+5e6, icmpUnreach(fam.other, fam.querier, q3))
		// refused: the authority's own outgoing query, a QR=1 message to the authority's port 53,
		// an ICMP error quoting the authority's answer, mDNS
		h.p.IPPacket(t0+6e6, udp(fam.auth, 40003, fam.other, 53, q0(t, 4, "b.example.")))
		h.p.IPPacket(t0+7e6, udp(fam.other, 40004, fam.auth, 53, r1(t, 5, "b.example.")))
		h.p.IPPacket(t0+8e6, tcpSeg(fam.auth, 40005, fam.other, 53, 1, q0(t, 6, "b.example.")))
		h.p.IPPacket(t0+9e6, icmpUnreach(fam.other, fam.auth, udp(fam.auth, 53, fam.other, 40006, r1(t, 7, "b.example."))))
		h.p.IPPacket(t0+10e6, udp(fam.other, 5353, fam.auth, 5353, q0(t, 8, "b.local.")))
		h.p.Flush()
		want := []dnsqr.Type{dnsqr.UDPQueryResponse, dnsqr.TCP, dnsqr.ICMP}
		if fmt.Sprint(types(h.recs)) != fmt.Sprint(want) {
			t.Errorf("%v: %v, want %v", fam.auth, types(h.recs), want)
		}
		// The ICMP error's sender (a router) is in the ICMP datagram by design; the refused
		// traffic's far address is in no record field.
		for _, r := range h.recs {
			if r.QueryIP == fam.other || r.ResponseIP == fam.other {
				t.Errorf("%v: refused traffic recorded: %v", fam.auth, r.Type)
			}
		}
		if s := h.p.Stats(); s.NotResolver != 4 || s.MDNSDropped != 1 || s.TCP.Segments != 2 {
			t.Errorf("%v: not_resolver %d mdns %d tcp segments %d", fam.auth, s.NotResolver, s.MDNSDropped, s.TCP.Segments)
		}
	}
}

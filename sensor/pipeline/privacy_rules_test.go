package pipeline

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/sie-europe/dnssensor/sensor/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/pktbuild"
)

// hostileCase feeds one class of client traffic that a tap beside a resolver sees. No record may
// ever carry the client's address, whatever the configuration.
type hostileCase struct {
	name string
	feed func(t *testing.T, h *harness, client, res, auth netip.Addr)
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
	}},
	{"icmp quoting the resolver's response to client port 53", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		resp := udp(res, 53, c, 53, r1(t, 2, "laptop.example."))
		h.p.IPPacket(t0, resp)
		h.p.IPPacket(t0+1e6, icmpUnreach(c, res, resp))
	}},
	{"icmp quoting a QR=1 message from a resolver port to client port 53", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, icmpUnreach(c, res, udp(res, 40000, c, 53, r1(t, 3, "laptop.example."))))
	}},
	{"icmp quoting a query the resolver never sent", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, icmpUnreach(c, res, udp(res, 40000, c, 53, q0(t, 4, "laptop.example."))))
	}},
	{"client tcp to resolver:53 with a forged QR=1 message", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, tcpSeg(c, 40000, res, 53, 1000, q0(t, 5, "laptop.example.")))
		h.p.IPPacket(t0+1e6, tcpSeg(res, 53, c, 40000, 5000, r1(t, 5, "laptop.example.")))
		h.p.IPPacket(t0+2e6, tcpSeg(c, 40000, res, 53, 1000+2+uint32(len(q0(t, 5, "laptop.example."))), r1(t, 6, "forged.example.")))
	}},
	{"client tcp from port 53 with a forged QR=1 message", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, tcpSeg(c, 53, res, 53, 1000, r1(t, 7, "forged.example.")))
	}},
	{"client udp QR=1 to resolver:53", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, udp(c, 40000, res, 53, r1(t, 8, "forged.example.")))
	}},
	{"client udp QR=1 from port 53 to resolver:53", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, udp(c, 53, res, 53, r1(t, 9, "forged.example.")))
	}},
	{"resolver:53 sends QR=0 to a client", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, udp(res, 53, c, 40000, q0(t, 10, "laptop.example.")))
	}},
	{"client QR=1 from port 53 to a resolver ephemeral port, no query", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, udp(c, 53, res, 40000, r1(t, 11, "forged.example.")))
	}},
	{"mdns unicast reply to resolver:5353", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		group := netip.MustParseAddr("224.0.0.251")
		if res.Is6() {
			group = netip.MustParseAddr("ff02::fb")
		}
		h.p.IPPacket(t0, udp(res, 5353, group, 5353, q0(t, 0, "laptop.local.")))
		h.p.IPPacket(t0+1e6, udp(c, 5353, res, 5353, r1(t, 0, "laptop.local.")))
	}},
	{"mdns unicast query and reply", func(t *testing.T, h *harness, c, res, _ netip.Addr) {
		h.p.IPPacket(t0, udp(res, 5353, c, 5353, q0(t, 12, "laptop.local.")))
		h.p.IPPacket(t0+1e6, udp(c, 5353, res, 5353, r1(t, 12, "laptop.local.")))
	}},
}

// TestHostileClientTrafficNeverRecorded is the privacy corpus for client traffic dressed up as
// the resolver's own: every class, both families, with and without -rd any and -zero-resolver.
// A case leaks when any record, in any field or stored packet byte, carries the client's address.
func TestHostileClientTrafficNeverRecorded(t *testing.T) {
	leaks, total := 0, 0
	for _, c := range hostileCases {
		for _, fam := range []struct{ client, res, auth netip.Addr }{{client4, res4, auth4}, {client6, res6, auth6}} {
			for _, rd := range []int{-1, 0} {
				for _, zero := range []bool{false, true} {
					total++
					h := newHarness(t, Config{RD: rd, ZeroResolver: zero})
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
						t.Errorf("%s (%v, rd %d, zero %v): the client's address is in a record: %v", c.name, fam.client, rd, zero, types(h.recs))
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

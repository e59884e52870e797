package pipeline

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
)

// FuzzPipeline feeds a sequence of raw IP datagrams (each prefixed by a two-octet length) through
// the whole pipeline with every feature on. It must never panic, and the privacy rule must hold:
// every record's initiator is a resolver, and no zeroed record carries the resolver's address.
func FuzzPipeline(f *testing.F) {
	seed := func(pkts ...[]byte) []byte {
		var b []byte
		for _, p := range pkts {
			b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
			b = append(b, p...)
		}
		return b
	}
	t := &testing.T{}
	q := udp(res4, 40000, auth4, 53, msg(t, 1, "a.example.", dns.TypeA, false, false, netip.MustParsePrefix("203.0.113.0/24")))
	r := udp(auth4, 53, res4, 40000, msg(t, 1, "a.example.", dns.TypeA, true, false, netip.Prefix{}))
	f.Add(seed(q, r))
	f.Add(seed(q, icmpUnreach(auth4, res4, q)))
	f.Add(seed(udp(res6, 40000, auth6, 53, msg(t, 2, "b.example.", dns.TypeAAAA, false, false, netip.Prefix{}))))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, zero := range []bool{false, true} {
			var bad string
			p, err := New(Config{RD: -1, ZeroResolver: zero, StateMax: 64,
				Resolvers: []netip.Prefix{netip.PrefixFrom(res4, 32), netip.PrefixFrom(res6, 128)}},
				func(r *dnsqr.Record) error {
					if b := dnsqr.AppendProto(nil, r); len(b) == 0 {
						bad = "empty record"
					}
					if zero && !r.QueryIP.IsUnspecified() {
						bad = "query_ip not zeroed"
					}
					if !zero && r.QueryIP != res4 && r.QueryIP != res6 {
						bad = "record for a non-resolver initiator " + r.QueryIP.String()
					}
					return nil
				})
			if err != nil {
				t.Fatal(err)
			}
			ts := int64(1e18)
			for b := data; len(b) >= 2; {
				n := int(binary.BigEndian.Uint16(b))
				b = b[2:]
				if n > len(b) {
					n = len(b)
				}
				p.Frame(decode.LinkRaw, ts, b[:n], n)
				ts += 1e9
				b = b[n:]
			}
			p.Flush()
			if bad != "" {
				t.Fatal(bad)
			}
		}
	})
}

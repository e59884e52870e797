package app

import (
	"io"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/pipeline"
)

// TestDnstapResolverPort53: unbound 1.17 logs some IPv6 upstream transactions with port 53 on
// both sides (found in ci/netns-live). The resolver labels them RESOLVER_*, so dnstap input
// keeps them, while the same port pair on a tap is client traffic and stays refused.
func TestDnstapResolverPort53(t *testing.T) {
	res := netip.MustParseAddrPort("[2001:db8:1::2]:53")
	auth := netip.MustParseAddrPort("[2001:db8:2::10]:53")
	q := new(dns.Msg).SetQuestion("www.example.", dns.TypeAAAA)
	q.Id, q.RecursionDesired = 4711, false
	r := new(dns.Msg).SetReply(q)
	qb, _ := q.Pack()
	rb, _ := r.Pack()
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"-dnstap-file", "x.fstrm"}, 1},
		{[]string{"-r", "x.pcap", "-resolver", "2001:db8:1::2"}, 0},
	} {
		o, err := ParseFlags(append(tc.args, "-w", "/dev/null"), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		p, err := pipeline.New(o.Pipeline, func(r *dnsqr.Record) error {
			if r.Type == dnsqr.UDPQueryResponse {
				got++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		p.Message(1700000000e9, false, res, auth, qb)
		p.Message(1700000000e9+1e6, false, auth, res, rb)
		p.Flush()
		if st := p.Stats(); got != tc.want {
			t.Errorf("%q: %d paired records, want %d (%s)", tc.args, got, tc.want, st.String())
		}
	}
}

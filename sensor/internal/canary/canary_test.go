package canary

import (
	"net/netip"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/sensor/internal/pipeline"
)

func prefixes(s ...string) []netip.Prefix {
	var ps []netip.Prefix
	for _, x := range s {
		ps = append(ps, netip.MustParsePrefix(x))
	}
	return ps
}

// TestPassesOnEveryConfiguration: the real pipeline passes under the configurations operators
// use, and every run checks records of the resolver's own canaries (a pipeline that dropped
// everything would not pass).
func TestPassesOnEveryConfiguration(t *testing.T) {
	both := prefixes("192.0.2.53/32", "2001:db8::53/128")
	for _, c := range []struct {
		name string
		cfg  pipeline.Config
		min  int // expected records at least
	}{
		{"default", pipeline.Config{Resolvers: both}, 4},
		{"rd any", pipeline.Config{Resolvers: both, RD: -1}, 4},
		{"rd 1", pipeline.Config{Resolvers: both, RD: 1}, 4},
		{"zero-resolver", pipeline.Config{Resolvers: both, ZeroResolver: true}, 4},
		{"unsolicited", pipeline.Config{Resolvers: both, Unsolicited: true, Hold: 500 * time.Millisecond}, 4},
		{"unsolicited no hold", pipeline.Config{Resolvers: both, Unsolicited: true}, 4},
		{"qr 0", pipeline.Config{Resolvers: both, QR: pipeline.QRQueriesOnly}, 2},
		{"qr 1", pipeline.Config{Resolvers: both, QR: pipeline.QRResponsesOnly}, 2},
		{"mdns", pipeline.Config{Resolvers: both, MDNS: true}, 4},
		{"IPv4 only", pipeline.Config{Resolvers: prefixes("198.51.100.2/32")}, 2},
		{"a /24 of resolvers", pipeline.Config{Resolvers: prefixes("198.51.100.0/24", "2001:db8:1::/48")}, 4},
		{"exclude all but one zone", pipeline.Config{Resolvers: both, QnameExclude: []string{"."}, QnameInclude: []string{"example.net"}}, 4},
		{"authority mode", pipeline.Config{Authorities: both, RD: -1}, 4},
		{"dnstap without -resolver", pipeline.Config{Resolvers: prefixes("0.0.0.0/0", "::/0"), AllowWideResolver: true, DirectionKnown: true, RD: -1}, 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := Run(c.cfg)
			if !r.OK {
				t.Fatalf("failed: %s", r.Summary())
			}
			if r.Expected < c.min || r.Records < r.Expected {
				t.Errorf("records %d, expected %d, want at least %d: %s", r.Records, r.Expected, c.min, r.Summary())
			}
			if r.Packets < 8 || r.ECS == 0 {
				t.Errorf("too few canaries: %s", r.Summary())
			}
			t.Logf("%s; took %v", r.Summary(), r.Took)
		})
	}
}

// TestCanariesCoverTheBrief: client queries and responses of both families, ECS-bearing ones, a
// client ICMP error and a client TCP connection are all among the canaries.
func TestCanariesCoverTheBrief(t *testing.T) {
	r := Run(pipeline.Config{Resolvers: prefixes("192.0.2.53/32", "2001:db8::53/128")})
	// Per family: 4 client UDP (2 with ECS), 2 client TCP (ECS), answer + ICMP error, 4 resolver (ECS).
	if r.Packets != 24 || r.Client != 16 || r.ECS != 16 || r.Headers != 2 {
		t.Errorf("canaries %d, client %d, ECS %d, headers %d; want 24, 16, 16, 2", r.Packets, r.Client, r.ECS, r.Headers)
	}
	if len(r.Skipped) != 0 {
		t.Errorf("skipped: %v", r.Skipped)
	}
}

// TestDropEverythingDoesNotPass: a configuration under which the resolver's own canaries make no
// record fails, naming it, instead of passing on an empty output.
func TestDropEverythingDoesNotPass(t *testing.T) {
	r := Run(pipeline.Config{Resolvers: prefixes("192.0.2.53/32"), QnameExclude: []string{"."}})
	if r.OK || r.Kind != "no_records" {
		t.Fatalf("passed with every name excluded: %s", r.Summary())
	}
	t.Log(r.Summary())
}

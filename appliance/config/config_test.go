package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseGood(t *testing.T) {
	b, err := Parse([]byte(`{"network":{"static":{"address":"198.51.100.10/24","gateway":"198.51.100.1",
		"address6":"2001:db8::10/64","gateway6":"fe80::1","dns":["198.51.100.53","2001:db8::53"],"ntp":["198.51.100.123"]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	sn, err := b.Network.Check()
	if err != nil {
		t.Fatal(err)
	}
	if sn.Addr.String() != "198.51.100.10/24" || sn.GW.String() != "198.51.100.1" || sn.Addr6.String() != "2001:db8::10/64" ||
		sn.GW6.String() != "fe80::1" || len(sn.DNS) != 2 || len(sn.NTP) != 1 {
		t.Errorf("parsed %+v", sn)
	}
	if b, err := Parse([]byte(`{"network":{}}`)); err != nil || b.Network.Static != nil {
		t.Errorf("DHCP configuration: %+v, %v", b, err)
	}
}

// TestParseBad: every mistake is reported with the key it is in and what would be right.
func TestParseBad(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"network":{"static":{"address":"198.51.100.10/24","gateway":"192.0.2.1"}}}`,
			"network.static.gateway: 192.0.2.1 is outside 198.51.100.0/24 (network.static.address 198.51.100.10/24)"},
		{`{"network":{"static":{"address":"198.51.100.10"}}}`,
			"network.static.address: 198.51.100.10 lacks a prefix length (write 198.51.100.10/24, with the network's length)"},
		{`{"network":{"static":{"address":"2001:db8::1/64"}}}`,
			"network.static.address: 2001:db8::1/64 is IPv6; put it in network.static.address6"},
		{`{"network":{"static":{"address":"198.51.100.0/24"}}}`,
			"network.static.address: 198.51.100.0/24 is the network or broadcast address of 198.51.100.0/24; pick a host address"},
		{`{"network":{"static":{"address":"198.51.100.255/24"}}}`,
			"network.static.address: 198.51.100.255/24 is the network or broadcast address"},
		{`{"network":{"static":{"address":"127.0.0.2/8"}}}`,
			"network.static.address: 127.0.0.2/8 is not a unicast IPv4 address a host can use"},
		{`{"network":{"static":{"address":"banana"}}}`,
			`network.static.address: "banana" is not an address with a prefix length (like 198.51.100.10/24)`},
		{`{"network":{"static":{"gateway":"198.51.100.1"}}}`,
			"network.static.gateway: set without network.static.address"},
		{`{"network":{"static":{"address":"198.51.100.10/24","gateway":"198.51.100.10"}}}`,
			"network.static.gateway: 198.51.100.10 is the box's own address"},
		{`{"network":{"static":{"address6":"2001:db8::10/64","gateway6":"2001:db9::1"}}}`,
			"network.static.gateway6: 2001:db9::1 is outside 2001:db8::/64"},
		{`{"network":{"static":{"dns":["198.51.100.53","dns.example"]}}}`,
			`network.static.dns[1]: "dns.example" is not a server's IP address`},
		{`{"network":{"static":{}}}`, "network.static: empty"},
		{`{"network":{"static":{"address":"198.51.100.10/24","gatway":"198.51.100.1"}}}`, `unknown field "gatway"`},
		{`{"network":{"static":{"address":"198.51.100.10","gateway":"192.0.2.1","ntp":["x"]}}}`,
			"network.static.address: 198.51.100.10 lacks a prefix length (write 198.51.100.10/24, with the network's length)\nnetwork.static.ntp[0]:"},
	} {
		_, err := Parse([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%s) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
}

func TestLoadMissing(t *testing.T) {
	b, found, err := Load(filepath.Join(t.TempDir(), "config.json"))
	if err != nil || found || b.Network.Static != nil {
		t.Errorf("Load(missing) = %+v, %v, %v; want DHCP, not found, no error", b, found, err)
	}
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, []byte(`{"network":{"static":{"address":"198.51.100.10/33"}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, found, err := Load(p); !found || err == nil || !strings.Contains(err.Error(), p+": network.static.address") {
		t.Errorf("Load(bad) = %v, %v; want the path and the key", found, err)
	}
}

package source

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"golang.org/x/net/bpf"

	"github.com/sie-europe/dnssensor/internal/pktbuild"
)

func ether(typ uint16, payload []byte) []byte {
	b := make([]byte, 12, 14+len(payload))
	b = binary.BigEndian.AppendUint16(b, typ)
	return append(b, payload...)
}

func ipFrame(src, dst string) []byte {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	typ := uint16(0x0800)
	if s.Addr().Is6() {
		typ = 0x86dd
	}
	return ether(typ, pktbuild.AppendUDP(nil, s, d, make([]byte, 30)))
}

// dnsFrame is a UDP frame whose DNS flags octet is flags (0x80: a response).
func dnsFrame(src, dst string, flags byte) []byte {
	f := ipFrame(src, dst)
	hl := 14 + 20
	if f[12] == 0x86 {
		hl = 14 + 40
	}
	f[hl+8+2] = flags
	return f
}

func tcpFrame(src, dst string) []byte {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	return ether(0x0800, pktbuild.AppendTCP(nil, s, d, 1, make([]byte, 30)))
}

func TestResolverFilter(t *testing.T) {
	prefixes := []netip.Prefix{
		netip.MustParsePrefix("198.51.100.2/32"),
		netip.MustParsePrefix("203.0.113.64/26"),
		netip.MustParsePrefix("2001:db8:1::2/128"),
		netip.MustParsePrefix("2001:db8:5500::/40"),
	}
	raw, err := ResolverFilter(prefixes, 1500)
	if err != nil {
		t.Fatal(err)
	}
	ins, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatal("filter does not disassemble")
	}
	vm, err := bpf.NewVM(ins)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		frame []byte
		want  bool
	}{
		{ipFrame("198.51.100.2:4000", "192.0.2.1:53"), true},
		{ipFrame("192.0.2.1:53", "198.51.100.2:4000"), true},
		{ipFrame("203.0.113.100:4000", "192.0.2.1:53"), true},
		{ipFrame("192.0.2.1:53", "203.0.113.127:4000"), true},
		{dnsFrame("192.0.2.1:53", "203.0.113.128:4000", 0x80), false}, // outside the /26
		{ipFrame("10.53.0.2:4000", "10.53.0.1:53"), true},             // anyone's query to port 53: a resolver candidate
		{dnsFrame("10.53.0.1:53", "10.53.0.2:4000", 0x80), false},     // the answer to it
		{dnsFrame("10.53.0.2:4000", "10.53.0.1:5353", 0), false},      // not port 53
		{tcpFrame("10.53.0.2:4000", "10.53.0.1:53"), false},           // TCP
		{dnsFrame("[fd53::2]:4000", "[fd53::1]:53", 0), true},
		{dnsFrame("[fd53::1]:53", "[fd53::2]:4000", 0x80), false},
		{ipFrame("[2001:db8:1::2]:4000", "[2001:db8:2::1]:53"), true},
		{ipFrame("[2001:db8:2::1]:53", "[2001:db8:1::2]:4000"), true},
		{dnsFrame("[2001:db8:2::1]:53", "[2001:db8:1::3]:4000", 0x80), false},
		{ipFrame("[2001:db8:55ff:1::9]:4000", "[2001:db8:2::1]:53"), true},
		{dnsFrame("[2001:db8:2::1]:53", "[2001:db8:5600::9]:4000", 0x80), false},
		{ipFrame("[fd53::2]:53", "[fd53::1]:4000"), false}, // a query from port 53 to another port: not to 53

		{ether(0x0806, make([]byte, 28)), false},                                    // ARP
		{ether(0x8100, append([]byte{0, 100, 8, 0}, make([]byte, 40)...)), true},    // VLAN not offloaded
		{ether(0x88a8, append([]byte{0, 100, 0x81, 0}, make([]byte, 40)...)), true}, // QinQ
		{ether(0x8847, make([]byte, 44)), true},                                     // MPLS
		{ether(0x88cc, make([]byte, 44)), false},                                    // LLDP
		{ether(0x0800, make([]byte, 10)), false},                                    // runt: the kernel rejects reads past the end
	} {
		n, err := vm.Run(c.frame)
		if err != nil {
			t.Fatalf("% x: %v", c.frame, err)
		}
		if (n > 0) != c.want {
			t.Errorf("frame % x: accepted %d octets, want accept=%v", c.frame[12:], n, c.want)
		}
	}
}

// A list of any length assembles: conditional jumps never have to reach across it.
func TestResolverFilterLongList(t *testing.T) {
	var ps []netip.Prefix
	for i := 0; i < 200; i++ {
		ps = append(ps, netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)), netip.MustParsePrefix(fmt.Sprintf("2001:db8:%x::/48", i)))
	}
	raw, err := ResolverFilter(ps, 65535)
	if err != nil {
		t.Fatal(err)
	}
	ins, _ := bpf.Disassemble(raw)
	vm, err := bpf.NewVM(ins)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := vm.Run(ipFrame("[2001:db8:c7::1]:53", "[2001:db8:ffff::1]:1")); n == 0 {
		t.Error("last IPv6 prefix not matched")
	}
	if n, _ := vm.Run(ipFrame("10.0.199.9:53", "192.0.2.1:1")); n == 0 {
		t.Error("last IPv4 prefix not matched")
	}
	if _, err := ResolverFilter(append(ps, ps...), 65535); err != nil {
		t.Logf("800 prefixes: %v", err)
	}
}

func TestResolverFilterEmptyAcceptsIP(t *testing.T) {
	raw, err := ResolverFilter(nil, 100)
	if err != nil {
		t.Fatal(err)
	}
	ins, _ := bpf.Disassemble(raw)
	vm, _ := bpf.NewVM(ins)
	if n, _ := vm.Run(ipFrame("192.0.2.9:53", "192.0.2.8:1")); n != 100 {
		t.Errorf("filter returned %d, want the snaplen 100", n)
	}
}

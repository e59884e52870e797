package app

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/sensor/internal/conformance"
)

func TestFlagErrorsNameTheSetting(t *testing.T) {
	dir := t.TempDir()
	n := 0
	cfg := func(body string) string {
		n++
		p := filepath.Join(dir, strings.Repeat("c", n)+".json")
		os.WriteFile(p, []byte(body), 0o644)
		return p
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-r", "x.pcap", "-J", "-"}, "-resolver"},
		{[]string{"-r", "x.pcap", "-J", "-", "-resolver", "192.0.2.1,not-an-ip"}, `-resolver: "not-an-ip"`},
		{[]string{"-r", "x.pcap", "-J", "-", "-resolver", ","}, "-resolver: the list is empty"},
		{[]string{"-r", "x.pcap", "-J", "-", "-resolver", "192.0.2.1", "-rd", "2"}, "-rd"},
		{[]string{"-r", "x.pcap", "-J", "-", "-resolver", "192.0.2.1", "-source", "zz"}, "-source"},
		{[]string{"-resolver", "192.0.2.1", "-J", "-"}, "-r: no input"},
		{[]string{"-r", "x", "-resolver", "192.0.2.1"}, "-w/-J"},
		{[]string{"-r", "x", "-J", "-", "-config", cfg(`{"resolvr": "192.0.2.1"}`)}, `unknown key "resolvr"`},
		{[]string{"-r", "x", "-J", "-", "-config", cfg(`{"resolver": "192.0.2.1", "state-max": "lots"}`)}, `key "state-max"`},
		{[]string{"-r", "x", "-J", "-", "-config", cfg(`[1]`)}, "not a JSON object"},
		{[]string{"-r", "x", "-J", "-", "-resolver", "192.0.2.1", "-qname-exclude", "a..b"}, "qname-exclude"},
		{[]string{"-i", "a,b", "-J", "-", "-resolver", "192.0.2.1", "-merge-window", "100ms"}, "-merge-window: 100ms must be at least 130ms"},
	} {
		_, err := ParseFlags(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseFlags(%q) = %v, want an error mentioning %q", tc.args, err, tc.want)
		}
	}
	// Flags override the file; the file fills the rest.
	o, err := ParseFlags([]string{"-r", "x", "-J", "-", "-rd", "1", "-config",
		cfg(`{"resolver": ["192.0.2.1", "2001:db8::/64"], "rd": "any", "zero-resolver": true}`)}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Pipeline.Resolvers) != 2 || o.Pipeline.RD != 1 || !o.Pipeline.ZeroResolver {
		t.Errorf("merged options %+v", o.Pipeline)
	}
}

// TestTruncatedFileKeepsWhatPrecedes: a capture cut mid-record is an error, and every record
// before the damage is still written.
func TestTruncatedFileKeepsWhatPrecedes(t *testing.T) {
	c := conformance.Dir(t)
	data, err := os.ReadFile(filepath.Join(c, "nmsg/nmsg-dnsqr-tests/test1-dnsqr.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(t.TempDir(), "cut.pcap")
	os.WriteFile(cut, data[:len(data)-30], 0o644)
	out := filepath.Join(t.TempDir(), "out.json")
	o, err := ParseFlags([]string{"-r", cut, "-resolver", "203.0.113.195", "-rd", "any", "-J", out}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	err = Run(context.Background(), o, io.Discard, &stderr)
	if err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("Run on a cut file: %v, want a truncation error", err)
	}
	got, _ := os.ReadFile(out)
	// 10 packets, the last cut: 4 pairs plus the last query flushed as unanswered.
	if n := strings.Count(string(got), "\n"); n != 5 {
		t.Errorf("%d records written, want 5; stderr: %s", n, stderr.String())
	}
	if !strings.Contains(stderr.String(), "records=5") {
		t.Errorf("stats line missing or wrong: %s", stderr.String())
	}
}

// TestResolverPrefixes: prefixes wider than /16 (IPv4) or /32 (IPv6) are refused with the way
// out named, unless -allow-wide-resolver; mapped and zoned forms match what packets carry.
func TestResolverPrefixes(t *testing.T) {
	base := []string{"-r", "x.pcap", "-J", "-"}
	for _, tc := range []struct {
		args []string
		want string // error substring; "" for success
	}{
		{[]string{"-resolver", "198.51.100.2/0"}, `-resolver: 198.51.100.2/0 is wider than /16`},
		{[]string{"-resolver", "198.51.100.2,10.0.0.0/8"}, `-allow-wide-resolver`},
		{[]string{"-resolver", "2001:db8::/16"}, `-resolver: 2001:db8::/16 is wider than /32`},
		{[]string{"-resolver", "::ffff:0.0.0.0/96"}, `-resolver: 0.0.0.0/0 is wider than /16`},
		{[]string{"-resolver", "::ffff:0:0/80"}, `IPv4-mapped prefix must be /96 or longer`},
		{[]string{"-authoritative", "192.0.0.0/8"}, `-authoritative: 192.0.0.0/8 is wider than /16`},
		{[]string{"-resolver", "198.51.100.2/0", "-allow-wide-resolver"}, ""},
		{[]string{"-resolver", "198.51.0.0/16,2001:db8::/32"}, ""},
		{[]string{"-resolver", "192.0.2.1", "-unsolicited-hold", "11s"}, "-unsolicited-hold"},
		{[]string{"-resolver", "192.0.2.1", "-unsolicited-hold-bytes", "10"}, "-unsolicited-hold-bytes"},
	} {
		_, err := ParseFlags(append(append([]string(nil), base...), tc.args...), io.Discard)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("ParseFlags(%q) = %v, want %q", tc.args, err, tc.want)
		}
	}
	o, err := ParseFlags(append(base, "-resolver", "::ffff:198.51.100.0/120,fe80::1%eth0,::ffff:192.0.2.1"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"198.51.100.2", "fe80::1", "192.0.2.1"} {
		in := false
		for _, p := range o.Pipeline.Resolvers {
			in = in || p.Contains(netip.MustParseAddr(a))
		}
		if !in {
			t.Errorf("%s not matched by %v", a, o.Pipeline.Resolvers)
		}
	}
	// The config file key works as the flag does.
	p := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(p, []byte(`{"resolver": "10.0.0.0/8", "allow-wide-resolver": true, "unsolicited": true, "mdns": true}`), 0o644)
	o, err = ParseFlags(append(base, "-config", p), io.Discard)
	if err != nil || !o.Pipeline.Unsolicited || !o.Pipeline.MDNS || o.Pipeline.Hold != 500*time.Millisecond {
		t.Errorf("config file: %v %+v", err, o)
	}
}

// Ring blocks are as small as the snaplen allows, so a paused sensor has many to fall behind on.
func TestRingBlocks(t *testing.T) {
	for _, tc := range []struct{ snaplen, mib, size, n int }{
		{65535, 32, 128 << 10, 256},
		{256, 1, 64 << 10, 16},
		{9000, 32, 64 << 10, 512},
		{262144, 1, 512 << 10, 2},
	} {
		if size, n := ringBlocks(tc.snaplen, tc.mib); size != tc.size || n != tc.n {
			t.Errorf("ringBlocks(%d, %d) = %d, %d; want %d, %d", tc.snaplen, tc.mib, size, n, tc.size, tc.n)
		}
	}
}

// TestResolverFromInterface: with -resolver-from-interface the resolver addresses are the capture
// interfaces' own IPv4 and global IPv6 addresses, as /32 and /128, added to -resolver; link-local
// and loopback addresses are not a resolver's; an interface without a usable address is an error
// that names it, and so is the flag without -i.
func TestResolverFromInterface(t *testing.T) {
	defer func(f func(string) ([]net.Addr, error)) { interfaceAddrs = f }(interfaceAddrs)
	addrs := map[string][]net.Addr{
		"up0": {mustCIDR(t, "198.51.100.2/24"), mustCIDR(t, "2001:db8:1::2/64"), mustCIDR(t, "fe80::1/64")},
		"ll0": {mustCIDR(t, "fe80::2/64"), mustCIDR(t, "127.0.0.2/8")},
	}
	interfaceAddrs = func(name string) ([]net.Addr, error) {
		a, ok := addrs[name]
		if !ok {
			return nil, fmt.Errorf("no such interface")
		}
		return a, nil
	}
	o, err := ParseFlags([]string{"-i", "up0", "-J", "-", "-resolver", "192.0.2.53", "-resolver-from-interface"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(o.Pipeline.Resolvers); got != "[192.0.2.53/32 198.51.100.2/32 2001:db8:1::2/128]" {
		t.Errorf("resolvers %s", got)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-i", "ll0", "-J", "-", "-resolver-from-interface"}, "ll0 has no IPv4 or global IPv6 address"},
		{[]string{"-i", "gone0", "-J", "-", "-resolver-from-interface"}, "gone0: no such interface"},
		{[]string{"-r", "x.pcap", "-J", "-", "-resolver-from-interface"}, "no capture interface"},
	} {
		if _, err := ParseFlags(c.args, io.Discard); err == nil || !strings.Contains(err.Error(), "-resolver-from-interface: ") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error with %q", c.args, err, c.want)
		}
	}
}

func mustCIDR(t *testing.T, s string) *net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return n
}

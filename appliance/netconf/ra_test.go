package netconf

import (
	"context"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/appliance/netconf/netnstest"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

// ra builds a router advertisement with the given options appended to the fixed part.
func ra(opts ...[]byte) []byte {
	b := []byte{134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0}
	for _, o := range opts {
		b = append(b, o...)
	}
	return b
}

func rdnssOpt(lifetime uint32, addrs ...string) []byte {
	o := []byte{25, byte(1 + 2*len(addrs)), 0, 0, byte(lifetime >> 24), byte(lifetime >> 16), byte(lifetime >> 8), byte(lifetime)}
	for _, a := range addrs {
		b := netip.MustParseAddr(a).As16()
		o = append(o, b[:]...)
	}
	return o
}

// prefixOpt is a Prefix Information option, skipped by the RDNSS reader.
var prefixOpt = append([]byte{3, 4, 64, 0xc0}, make([]byte, 28)...)

func TestParseRA(t *testing.T) {
	opts, err := parseRA(ra(prefixOpt, rdnssOpt(600, "2001:db8::53", "2001:db8::54")))
	if err != nil {
		t.Fatal(err)
	}
	if len(opts) != 1 || opts[0].lifetime != 600*time.Second || len(opts[0].servers) != 2 || opts[0].servers[1].String() != "2001:db8::54" {
		t.Errorf("parsed %+v", opts)
	}
	for name, b := range map[string][]byte{
		"short":            ra()[:10],
		"not an RA":        append([]byte{133}, ra()[1:]...),
		"zero-length":      ra([]byte{3, 0, 0, 0, 0, 0, 0, 0}),
		"truncated option": ra(rdnssOpt(600, "2001:db8::53")[:20]),
		"RDNSS no server":  ra([]byte{25, 1, 0, 0, 0, 0, 2, 88}),
		"RDNSS odd length": ra(append([]byte{25, 2, 0, 0, 0, 0, 2, 88}, make([]byte, 8)...)),
	} {
		if _, err := parseRA(b); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestRDNSSLifetimes: servers last their announced lifetime; lifetime 0 withdraws one; the set
// is bounded.
func TestRDNSSLifetimes(t *testing.T) {
	var r rdnss
	t0 := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	a, b := netip.MustParseAddr("2001:db8::53"), netip.MustParseAddr("2001:db8::54")
	r.update(t0, []rdnssOption{{lifetime: 60 * time.Second, servers: []netip.Addr{a}}, {lifetime: infinite, servers: []netip.Addr{b}}})
	if got := r.current(t0.Add(59 * time.Second)); !slices.Equal(got, []netip.Addr{a, b}) {
		t.Errorf("at 59 s: %v", got)
	}
	if got := r.current(t0.Add(60 * time.Second)); !slices.Equal(got, []netip.Addr{b}) {
		t.Errorf("at 60 s: %v, want only the infinite one", got)
	}
	r.update(t0, []rdnssOption{{lifetime: 0, servers: []netip.Addr{b}}})
	if got := r.current(t0); len(got) != 0 {
		t.Errorf("after withdrawal: %v", got)
	}
	var many []netip.Addr
	for i := range 100 {
		many = append(many, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i)}))
	}
	r.update(t0, []rdnssOption{{lifetime: infinite, servers: many}})
	if got := r.current(t0); len(got) != 8 {
		t.Errorf("kept %d servers from one advertisement, want the cap of 8", len(got))
	}
}

func FuzzParseRA(f *testing.F) {
	f.Add(ra(prefixOpt, rdnssOpt(600, "2001:db8::53")))
	f.Add(ra([]byte{25, 1, 0, 0}))
	f.Fuzz(func(t *testing.T, b []byte) {
		opts, err := parseRA(b)
		if err != nil {
			return
		}
		for _, o := range opts {
			if len(o.servers)*16 > len(b) {
				t.Fatalf("%d servers from %d octets", len(o.servers), len(b))
			}
		}
	})
}

// TestSLAAC: on an IPv6 management network with radvd, the port gets a SLAAC address and the
// default route from the kernel, and netconfd publishes the DNS server the router announces.
func TestSLAAC(t *testing.T) {
	netnstest.NeedTools(t, "ip", "radvd")
	box := netnstest.Netns(t, "netc-abox")
	rtr := netnstest.Netns(t, "netc-artr")
	netnstest.Veth(t, "netc-amgmt0", box, "netc-artr0", rtr)
	netnstest.Sysctl(t, rtr, "net/ipv6/conf/all/forwarding", "1")
	netnstest.Run(t, "ip", "-n", rtr, "link", "set", "netc-artr0", "up")
	dir := t.TempDir()
	conf := filepath.Join(dir, "radvd.conf")
	writeConfig(t, conf, `interface netc-artr0 {
	AdvSendAdvert on;
	MinRtrAdvInterval 3;
	MaxRtrAdvInterval 4;
	prefix 2001:db8:1::/64 { AdvOnLink on; AdvAutonomous on; };
	RDNSS 2001:db8:1::53 { };
};
`)
	var rlog netnstest.SyncBuffer
	cmd := exec.CommandContext(context.Background(), "ip", "netns", "exec", rtr, "radvd", "--nodaemon", "--config", conf,
		"--pidfile", filepath.Join(dir, "radvd.pid"), "--logmethod", "stderr", "--debug", "1")
	cmd.Stdout, cmd.Stderr = &rlog, &rlog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		t.Logf("radvd:\n%s", rlog.String())
	})

	run := filepath.Join(dir, "run")
	netconfd(t, box, "-mgmt", "netc-amgmt0", "-config", filepath.Join(dir, "absent.json"), "-run-dir", run, "-poll", "100ms")
	testenv.WaitFor(t, "a SLAAC address", func() bool {
		return strings.Contains(netnstest.Run(t, "ip", "-n", box, "-6", "-o", "addr", "show", "dev", "netc-amgmt0", "scope", "global"), "inet6 2001:db8:1:")
	})
	testenv.WaitFor(t, "the IPv6 default route", func() bool {
		return strings.Contains(netnstest.Run(t, "ip", "-n", box, "-6", "route", "show", "default"), "proto ra")
	})
	testenv.WaitFor(t, "the announced DNS server in resolv.conf", func() bool {
		return strings.Contains(readFile(filepath.Join(run, ResolvConfFile)), "nameserver 2001:db8:1::53\n")
	})
}

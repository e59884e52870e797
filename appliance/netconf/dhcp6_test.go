package netconf

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sie-europe/dnssensor/appliance/netconf/netnstest"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

// TestDHCPv6 runs netconfd against dnsmasq as router (advertisements with the M flag and an
// on-link prefix without autonomous addressing, so that SLAAC makes no address) and DHCPv6
// server: netconfd sees the M flag, obtains an address with a DUID-LL made of its MAC (the same
// identity after every boot), applies it as a /128 with the lease's lifetimes, publishes the
// DHCPv6 DNS server beside the DHCPv4 ones, and on SIGTERM releases the lease (dnsmasq logs the
// RELEASE) and removes the address.
func TestDHCPv6(t *testing.T) {
	netnstest.NeedTools(t, "ip", "dnsmasq")
	box := netnstest.Netns(t, "netc-6box")
	srv := netnstest.Netns(t, "netc-6srv")
	netnstest.Veth(t, "netc-6mgmt0", box, "netc-6srv0", srv)
	netnstest.Run(t, "ip", "-n", srv, "addr", "add", "2001:db8:6::1/64", "dev", "netc-6srv0", "nodad")
	netnstest.Run(t, "ip", "-n", srv, "link", "set", "netc-6srv0", "up")
	dir := t.TempDir()
	dlog, stopServer := dnsmasqStoppable(t, srv, "netc-6srv0", filepath.Join(dir, "leases"),
		"--enable-ra", "--ra-param=netc-6srv0,4",
		"--dhcp-range=2001:db8:6::100,2001:db8:6::1ff,64,2m",
		"--dhcp-option=option6:dns-server,[2001:db8:6::53]")

	run := filepath.Join(dir, "run")
	_, stop := netconfd(t, box, "-mgmt", "netc-6mgmt0", "-config", filepath.Join(dir, "absent.json"), "-run-dir", run, "-poll", "200ms")

	addrRE := regexp.MustCompile(`inet6 (2001:db8:6::1[0-9a-f]{2})/128 scope global (dynamic )?`)
	var addr string
	testenv.WaitFor(t, "a DHCPv6 address on netc-6mgmt0", func() bool {
		m := addrRE.FindStringSubmatch(netnstest.Run(t, "ip", "-n", box, "-6", "-o", "addr", "show", "dev", "netc-6mgmt0"))
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	if a := netnstest.Run(t, "ip", "-n", box, "-6", "-o", "addr", "show", "dev", "netc-6mgmt0", "scope", "global"); strings.Count(a, "inet6 ") != 1 || !strings.Contains(a, "valid_lft") || strings.Contains(a, "valid_lft forever") {
		t.Errorf("global addresses on the management port (want only the DHCPv6 one, with a finite lifetime):\n%s", a)
	}
	var lease Addressing
	testenv.WaitFor(t, "lease.json with the DHCPv6 address", func() bool {
		return json.Unmarshal([]byte(readFile(filepath.Join(run, LeaseFile))), &lease) == nil && lease.Addr6.String() == addr+"/128"
	})
	if lease.Source6 != "dhcp6" || lease.Expires6 == "" {
		t.Errorf("lease.json = %+v, want source6 dhcp6 with an expiry", lease)
	}
	testenv.WaitFor(t, "the DHCPv6 DNS server in resolv.conf", func() bool {
		return strings.Contains(readFile(filepath.Join(run, ResolvConfFile)), "nameserver 2001:db8:6::53\n")
	})

	// The identity is the DUID-LL of the port's MAC (type 3, hardware type 1).
	ifi := netnstest.Run(t, "ip", "-n", box, "-o", "link", "show", "dev", "netc-6mgmt0")
	mac := regexp.MustCompile(`link/ether ([0-9a-f:]{17})`).FindStringSubmatch(ifi)
	if mac == nil {
		t.Fatalf("no MAC in %q", ifi)
	}
	hw, _ := net.ParseMAC(mac[1])
	duid := "00:03:00:01"
	for _, b := range hw {
		duid += fmt.Sprintf(":%02x", b)
	}
	if l := readFile(filepath.Join(dir, "leases")); !strings.Contains(l, addr) || !strings.Contains(l, duid) {
		t.Errorf("dnsmasq's lease file does not hold %s for client %s:\n%s", addr, duid, l)
	}

	if err := stop(); err != nil {
		t.Fatalf("netconfd exited with %v", err)
	}
	if !strings.Contains(dlog.String(), "DHCPRELEASE") {
		t.Errorf("dnsmasq saw no RELEASE:\n%s", dlog.String())
	}
	if a := netnstest.Run(t, "ip", "-n", box, "-6", "-o", "addr", "show", "dev", "netc-6mgmt0"); strings.Contains(a, addr) {
		t.Errorf("the released address is still there:\n%s", a)
	}
	stopServer()
}

package netconf

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/appliance/netconf/netnstest"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

// TestDHCPv4Lease follows a DHCPv4 lease from Kea through its life, as TestDHCPv6Lease does for
// DHCPv6 (dnsmasq, which TestDHCPv4 uses, leases for 2 minutes at the least): bound, renewed at T1
// (lease.json's expiry moves on, the address stays), kept across a restart of the server, and,
// with the server gone for good, removed with its default route when it expires, not before.
func TestDHCPv4Lease(t *testing.T) {
	netnstest.NeedTools(t, "ip", "kea-dhcp4")
	box := netnstest.Netns(t, "netc-k4box")
	srv := netnstest.Netns(t, "netc-k4srv")
	netnstest.Veth(t, "netc-k4mgmt0", box, "netc-k4srv0", srv)
	netnstest.Run(t, "ip", "-n", srv, "addr", "add", "192.0.2.1/24", "dev", "netc-k4srv0")
	netnstest.Run(t, "ip", "-n", srv, "link", "set", "netc-k4srv0", "up")
	dir := t.TempDir()
	conf := `{"Dhcp4": {
  "interfaces-config": {"interfaces": ["netc-k4srv0"]},
  "lease-database": {"type": "memfile", "persist": true, "name": "` + filepath.Join(dir, "leases4.csv") + `", "lfc-interval": 0},
  "renew-timer": ` + strconv.Itoa(keaT1) + `, "rebind-timer": ` + strconv.Itoa(keaT2) + `, "valid-lifetime": ` + strconv.Itoa(keaValid) + `,
  "subnet4": [{"id": 1, "subnet": "192.0.2.0/24", "interface": "netc-k4srv0",
    "pools": [{"pool": "192.0.2.100-192.0.2.150"}],
    "option-data": [{"name": "routers", "data": "192.0.2.1"}, {"name": "domain-name-servers", "data": "192.0.2.53"}]}],
  "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "stdout"}], "severity": "INFO"}]
}}`
	run := filepath.Join(dir, "run")
	netconfd(t, box, "-mgmt", "netc-k4mgmt0", "-config", filepath.Join(dir, "absent.json"), "-run-dir", run, "-poll", "200ms")
	// Kea opens its socket only on a running interface: once netconfd has brought the box's end up.
	testenv.WaitFor(t, "carrier on the server's end", func() bool {
		return strings.Contains(netnstest.Run(t, "ip", "-n", srv, "-o", "link", "show", "dev", "netc-k4srv0"), "LOWER_UP")
	})
	_, stopKea := keaServer(t, srv, "kea-dhcp4", "netc-k4srv0", dir, conf)

	addrRE := regexp.MustCompile(`inet (192\.0\.2\.1[0-5][0-9])/24`)
	present := func() string {
		m := addrRE.FindStringSubmatch(netnstest.Run(t, "ip", "-n", box, "-4", "-o", "addr", "show", "dev", "netc-k4mgmt0"))
		if m == nil {
			return ""
		}
		return m[1]
	}
	route := func() string { return netnstest.Run(t, "ip", "-n", box, "-4", "route", "show", "default") }
	var addr string
	testenv.WaitFor(t, "a DHCPv4 address from Kea on netc-k4mgmt0", func() bool {
		addr = present()
		return addr != ""
	})
	testenv.WaitFor(t, "the default route via 192.0.2.1", func() bool {
		return strings.Contains(route(), "default via 192.0.2.1 dev netc-k4mgmt0")
	})
	lease := func() Addressing {
		var a Addressing
		_ = json.Unmarshal([]byte(readFile(filepath.Join(run, LeaseFile))), &a)
		return a
	}
	expires := func() time.Time {
		e, _ := time.Parse(time.RFC3339, lease().Expires)
		return e
	}
	testenv.WaitFor(t, "lease.json with Kea's lease", func() bool {
		l := lease()
		return l.Addr.String() == addr+"/24" && l.Source == "dhcp4" && l.Expires != ""
	})

	// Renewal at T1 (2 s): the expiry moves on, the address stays.
	first := expires()
	testenv.WaitFor(t, "a renewal at T1 (lease.json's expiry moves on)", func() bool { return expires().After(first) })
	if a := present(); a != addr {
		t.Fatalf("after the renewal the address is %q, want %s", a, addr)
	}

	// Server restart on the same lease file: the client reaches the new process at its next
	// renewal; the address never changes or lapses.
	stopKea()
	before := expires()
	_, stopKea = keaServer(t, srv, "kea-dhcp4", "netc-k4srv0", dir, conf)
	testenv.WaitFor(t, "a renewal by the restarted server", func() bool { return expires().After(before) })
	if a := present(); a != addr {
		t.Fatalf("after the server's restart the address is %q, want %s (kept)", a, addr)
	}

	// Server gone: no more renewals; at expiry, not before, the address and the default route go.
	stopKea()
	gone := time.Now()
	end := expires()
	if !end.After(gone) {
		t.Fatalf("lease.json's expiry %v is not after the server's stop %v", end, gone)
	}
	deadline := end.Add(testenv.Patience)
	for present() != "" {
		if time.Now().After(deadline) {
			t.Fatalf("the address %s is still there %v after the lease expired (%v)", addr, testenv.Patience, end)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// lease.json's expiry is in whole seconds, rounded down.
	if removed := time.Now(); removed.Before(end) {
		t.Errorf("the address went at %v, before the lease's expiry %v", removed, end)
	}
	if r := route(); strings.Contains(r, "192.0.2.1") {
		t.Errorf("the expired lease's default route is still there: %s", r)
	}
	testenv.WaitFor(t, "lease.json without the expired address", func() bool {
		l := lease()
		return !l.Addr.IsValid() && l.Expires == ""
	})
}

package netconf

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/appliance/netconf/netnstest"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

// Kea's lease times for TestDHCPv6Lease: dnsmasq's shortest lease (2 minutes) is too long to watch
// a lease run out, Kea takes any. The valid lifetime leaves a restarted server (a second or two,
// more on a loaded machine) time to answer before the address lapses.
const (
	keaT1, keaT2        = 2, 4   // s
	keaPref, keaValid   = 16, 20 // s
	keaSubnet, keaRange = "2001:db8:7::/64", "2001:db8:7::100-2001:db8:7::1ff"
)

// kea runs Debian's kea-dhcp6 in ns on iface, its leases kept in dir (memfile, persisted: a
// restarted server knows the leases it gave), logging to a buffer. stop ends it; the test's end
// does too.
func kea(t *testing.T, ns, iface, dir string) (log *netnstest.SyncBuffer, stop func()) {
	t.Helper()
	return keaServer(t, ns, "kea-dhcp6", iface, dir, `{"Dhcp6": {
  "interfaces-config": {"interfaces": ["`+iface+`"]},
  "lease-database": {"type": "memfile", "persist": true, "name": "`+filepath.Join(dir, "leases6.csv")+`", "lfc-interval": 0},
  "server-id": {"type": "LL", "persist": false},
  "renew-timer": `+strconv.Itoa(keaT1)+`, "rebind-timer": `+strconv.Itoa(keaT2)+`,
  "preferred-lifetime": `+strconv.Itoa(keaPref)+`, "valid-lifetime": `+strconv.Itoa(keaValid)+`,
  "subnet6": [{"id": 1, "subnet": "`+keaSubnet+`", "interface": "`+iface+`",
    "pools": [{"pool": "`+keaRange+`"}],
    "option-data": [{"name": "dns-servers", "data": "2001:db8:7::53"}]}],
  "loggers": [{"name": "kea-dhcp6", "output_options": [{"output": "stdout"}], "severity": "INFO"}]
}}`)
}

// keaServer runs Kea's prog (kea-dhcp4 or kea-dhcp6) in ns with the configuration conf, until
// stop or the test's end, and waits until it serves iface.
func keaServer(t *testing.T, ns, prog, iface, dir, conf string) (log *netnstest.SyncBuffer, stop func()) {
	t.Helper()
	path := filepath.Join(dir, prog+".conf")
	writeConfig(t, path, conf)
	log = &netnstest.SyncBuffer{}
	cmd := exec.Command("ip", "netns", "exec", ns, prog, "-c", path)
	// Kea's pid and lock files, which default to /run: one per test, beside its configuration.
	cmd.Env = append(cmd.Environ(), "KEA_PIDFILE_DIR="+dir, "KEA_LOCKFILE_DIR="+dir)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}
	}
	t.Cleanup(func() {
		stop()
		t.Logf("%s:\n%s", prog, log.String())
	})
	// DHCP4_STARTED / DHCP6_STARTED: the sockets are open and the configuration is in force.
	started := strings.ToUpper(strings.TrimPrefix(prog, "kea-")) + "_STARTED"
	testenv.WaitFor(t, prog+" to start", func() bool { return strings.Contains(log.String(), started) })
	if strings.Contains(log.String(), "DHCPSRV_NO_SOCKETS_OPEN") {
		t.Fatalf("%s opened no socket on %s", prog, iface)
	}
	return log, stop
}

// TestDHCPv6Lease follows a DHCPv6 lease from Kea through its life: bound (the /128 with the
// lease's lifetimes), renewed at T1 (lease.json's expiry moves on, the address stays), kept across
// a restart of the server (the restarted server, which persisted its leases, extends the same
// address), and, with the server gone for good, removed when it expires, not before.
func TestDHCPv6Lease(t *testing.T) {
	netnstest.NeedTools(t, "ip", "radvd", "kea-dhcp6")
	box := netnstest.Netns(t, "netc-kbox")
	rtr := netnstest.Netns(t, "netc-krtr")
	netnstest.Veth(t, "netc-kmgmt0", box, "netc-krtr0", rtr)
	// No DAD on the server's side: Kea and radvd want the link-local address usable at once.
	netnstest.Sysctl(t, rtr, "net/ipv6/conf/netc-krtr0/accept_dad", "0")
	netnstest.Sysctl(t, rtr, "net/ipv6/conf/all/forwarding", "1")
	netnstest.Run(t, "ip", "-n", rtr, "addr", "add", "2001:db8:7::1/64", "dev", "netc-krtr0", "nodad")
	netnstest.Run(t, "ip", "-n", rtr, "link", "set", "netc-krtr0", "up")
	dir := t.TempDir()

	// The router says addresses are managed (M) and gives the on-link prefix without SLAAC.
	rconf := filepath.Join(dir, "radvd.conf")
	writeConfig(t, rconf, `interface netc-krtr0 {
	AdvSendAdvert on;
	AdvManagedFlag on;
	MinRtrAdvInterval 3;
	MaxRtrAdvInterval 4;
	prefix `+keaSubnet+` { AdvOnLink on; AdvAutonomous off; };
};
`)
	var rlog netnstest.SyncBuffer
	radvd := exec.Command("ip", "netns", "exec", rtr, "radvd", "--nodaemon", "--config", rconf,
		"--pidfile", filepath.Join(dir, "radvd.pid"), "--logmethod", "stderr")
	radvd.Stdout, radvd.Stderr = &rlog, &rlog
	if err := radvd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = radvd.Process.Signal(syscall.SIGTERM)
		_ = radvd.Wait()
		t.Logf("radvd:\n%s", rlog.String())
	})
	run := filepath.Join(dir, "run")
	netconfd(t, box, "-mgmt", "netc-kmgmt0", "-config", filepath.Join(dir, "absent.json"), "-run-dir", run, "-poll", "200ms")
	// Kea opens its socket only on a running interface: once netconfd has brought the box's end up.
	testenv.WaitFor(t, "carrier on the router's end", func() bool {
		return strings.Contains(netnstest.Run(t, "ip", "-n", rtr, "-o", "link", "show", "dev", "netc-krtr0"), "LOWER_UP")
	})
	klog, stopKea := kea(t, rtr, "netc-krtr0", dir)

	addrRE := regexp.MustCompile(`inet6 (2001:db8:7::1[0-9a-f]{2})/128 scope global (dynamic )?.*valid_lft (\d+)sec`)
	present := func() (addr string, ok bool) {
		m := addrRE.FindStringSubmatch(netnstest.Run(t, "ip", "-n", box, "-6", "-o", "addr", "show", "dev", "netc-kmgmt0"))
		if m == nil {
			return "", false
		}
		return m[1], true
	}
	var addr string
	testenv.WaitFor(t, "a DHCPv6 address from Kea on netc-kmgmt0", func() bool {
		addr, _ = present()
		return addr != ""
	})
	if a := netnstest.Run(t, "ip", "-n", box, "-6", "-o", "addr", "show", "dev", "netc-kmgmt0", "scope", "global"); !strings.Contains(a, "valid_lft") || strings.Contains(a, "valid_lft forever") || !strings.Contains(a, "preferred_lft") {
		t.Errorf("the DHCPv6 address must carry the lease's finite lifetimes:\n%s", a)
	}
	lease := func() Addressing {
		var a Addressing
		_ = json.Unmarshal([]byte(readFile(filepath.Join(run, LeaseFile))), &a)
		return a
	}
	expires := func() time.Time {
		e, _ := time.Parse(time.RFC3339, lease().Expires6)
		return e
	}
	testenv.WaitFor(t, "lease.json with Kea's lease", func() bool {
		l := lease()
		return l.Addr6.String() == addr+"/128" && l.Source6 == "dhcp6" && l.Expires6 != ""
	})
	testenv.WaitFor(t, "Kea's DNS server in resolv.conf", func() bool {
		return strings.Contains(readFile(filepath.Join(run, ResolvConfFile)), "nameserver 2001:db8:7::53\n")
	})

	// Renewal at T1 (2 s): Kea extends the lease (its log says RENEW), lease.json's expiry moves
	// on, and the address stays the same.
	first := expires()
	testenv.WaitFor(t, "a renewal at T1 (lease.json's expiry moves on)", func() bool { return expires().After(first) })
	testenv.WaitFor(t, "Kea to log the renewal", func() bool { return strings.Contains(klog.String(), "DHCP6_LEASE_RENEW") })
	if a, ok := present(); !ok || a != addr {
		t.Fatalf("after the renewal the address is %q, want %s", a, addr)
	}

	// Server restart: Kea stops and starts again on the same lease file. The client, renewing
	// every T1, reaches the new process; the address never changes or lapses.
	stopKea()
	before := expires()
	klog, stopKea = kea(t, rtr, "netc-krtr0", dir)
	testenv.WaitFor(t, "a renewal by the restarted server", func() bool {
		return strings.Contains(klog.String(), "DHCP6_LEASE_RENEW") && expires().After(before)
	})
	if a, ok := present(); !ok || a != addr {
		t.Fatalf("after the server's restart the address is %q, want %s (kept)", a, addr)
	}

	// Server gone: no more renewals; the address is removed when the lease expires, not before.
	stopKea()
	gone := time.Now()
	end := expires()
	if !end.After(gone) {
		t.Fatalf("lease.json's expiry %v is not after the server's stop %v", end, gone)
	}
	deadline := end.Add(testenv.Patience)
	for {
		if _, ok := present(); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the address %s is still there %v after the lease expired (%v)", addr, testenv.Patience, end)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// lease.json's expiry is in whole seconds, rounded down.
	if removed := time.Now(); removed.Before(end) {
		t.Errorf("the address went at %v, before the lease's expiry %v", removed, end)
	}
	testenv.WaitFor(t, "lease.json without the expired address", func() bool {
		l := lease()
		return !l.Addr6.IsValid() && l.Expires6 == ""
	})
	if a := netnstest.Run(t, "ip", "-n", box, "-6", "-o", "addr", "show", "dev", "netc-kmgmt0", "scope", "global"); strings.Contains(a, addr) {
		t.Errorf("the expired address is still there:\n%s", a)
	}
}

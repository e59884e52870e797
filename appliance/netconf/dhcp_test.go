package netconf

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/appliance/netconf/netnstest"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

func init() {
	// netconfd itself, inside the box's namespace; NETC_ARGS holds its arguments, one per line.
	children["netconfd"] = func() (any, error) {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		// Never the host's /tmp/resolv.conf: a test that wants the copy names a path of its own.
		args := append([]string{"-resolv-conf", ""}, strings.Split(os.Getenv("NETC_ARGS"), "\n")...)
		if d, err := time.ParseDuration(os.Getenv("NETC_TAPS_AFTER")); err == nil {
			tapsAfter = d
		}
		if code := Main(ctx, args, os.Stdout, os.Stderr); code != 0 {
			os.Exit(code)
		}
		return nil, nil
	}
}

// dnsmasq runs Debian's dnsmasq as the DHCPv4 server on iface in ns, logging to a buffer, with its
// lease file at leases. It is stopped at the end of the test.
func dnsmasq(t *testing.T, ns, iface, leases string, args ...string) *netnstest.SyncBuffer {
	log, _ := dnsmasqStoppable(t, ns, iface, leases, args...)
	return log
}

// dnsmasqStoppable is dnsmasq with a function that stops it earlier.
func dnsmasqStoppable(t *testing.T, ns, iface, leases string, args ...string) (*netnstest.SyncBuffer, func()) {
	t.Helper()
	var log netnstest.SyncBuffer
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "dnsmasq", "--no-daemon", "--conf-file=/dev/null",
		"--port=0", "--interface=" + iface, "--bind-interfaces", "--user=root", "--pid-file=",
		"--dhcp-leasefile=" + leases, "--log-dhcp", "--log-facility=-"}, args...)...)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
			t.Logf("dnsmasq:\n%s", log.String())
		}
	}
	t.Cleanup(stop)
	testenv.WaitFor(t, "dnsmasq to start", func() bool { return strings.Contains(log.String(), "IP range") })
	return &log, stop
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// TestDHCPv4 runs netconfd against dnsmasq: it obtains a lease (sending its host name), applies
// the address and the default route, publishes the DNS and NTP servers, renews at T1 from its
// address, and on SIGTERM releases
// the lease (dnsmasq forgets it) and removes the address.
func TestDHCPv4(t *testing.T) {
	netnstest.NeedTools(t, "ip", "dnsmasq")
	box := netnstest.Netns(t, "netc-dbox")
	srv := netnstest.Netns(t, "netc-dsrv")
	netnstest.Veth(t, "netc-mgmt0", box, "netc-srv0", srv)
	netnstest.Run(t, "ip", "-n", srv, "addr", "add", "192.0.2.1/24", "dev", "netc-srv0")
	netnstest.Run(t, "ip", "-n", srv, "link", "set", "netc-srv0", "up")
	dir := t.TempDir()
	leases := filepath.Join(dir, "leases")
	dlog := dnsmasq(t, srv, "netc-srv0", leases,
		"--dhcp-range=192.0.2.50,192.0.2.60,255.255.255.0,2m",
		"--dhcp-option=option:router,192.0.2.1",
		"--dhcp-option=option:dns-server,192.0.2.53,192.0.2.54",
		"--dhcp-option=option:ntp-server,192.0.2.123",
		// dnsmasq's shortest lease is 2 minutes; T1 and T2 given explicitly bring the renewal
		// into the test's time.
		"--dhcp-option=option:T1,4", "--dhcp-option=option:T2,100")

	run := filepath.Join(dir, "run")
	var out netnstest.SyncBuffer
	cmd := netnstest.StartChild(t, box, "netconfd", &out,
		"NETC_ARGS="+strings.Join([]string{"-mgmt", "netc-mgmt0", "-config", filepath.Join(dir, "absent.json"), "-run-dir", run, "-resolv-conf", filepath.Join(dir, "tmp-resolv.conf"), "-hostname", "netc-sensor", "-poll", "100ms"}, "\n"))
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		t.Logf("netconfd:\n%s", out.String())
	})

	addrRE := regexp.MustCompile(`inet (192\.0\.2\.(5[0-9]|60))/24`)
	var addr string
	testenv.WaitFor(t, "a leased address on netc-mgmt0", func() bool {
		m := addrRE.FindStringSubmatch(netnstest.Run(t, "ip", "-n", box, "-4", "-o", "addr", "show", "dev", "netc-mgmt0"))
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	testenv.WaitFor(t, "the default route via 192.0.2.1", func() bool {
		return strings.Contains(netnstest.Run(t, "ip", "-n", box, "route", "show", "default"), "default via 192.0.2.1 dev netc-mgmt0 proto dhcp")
	})
	// lease.json is written last of the three files: once it shows the lease, so do the others.
	var lease Addressing
	testenv.WaitFor(t, "lease.json with the lease", func() bool {
		return json.Unmarshal([]byte(readFile(filepath.Join(run, LeaseFile))), &lease) == nil && lease.Addr.String() == addr+"/24"
	})
	// Renewing, if the machine is slow enough for T1 (4 s) to have come.
	if (lease.State != "bound" && lease.State != "renewing") || lease.Router.String() != "192.0.2.1" || lease.Server.String() != "192.0.2.1" {
		t.Errorf("lease.json = %+v, want %s/24 via 192.0.2.1, bound", lease, addr)
	}
	if rc := readFile(filepath.Join(run, ResolvConfFile)); rc != "# written by netconfd (dhcp4)\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n" {
		t.Errorf("resolv.conf:\n%s", rc)
	} else if cp := readFile(filepath.Join(dir, "tmp-resolv.conf")); cp != rc {
		t.Errorf("-resolv-conf copy:\n%s\nwant:\n%s", cp, rc)
	}
	var ntp Servers
	if err := json.Unmarshal([]byte(readFile(filepath.Join(run, NTPFile))), &ntp); err != nil {
		t.Fatalf("ntp.json: %v", err)
	}
	if ntp.Source != "dhcp4" || len(ntp.Servers) != 1 || ntp.Servers[0].String() != "192.0.2.123" {
		t.Errorf("ntp.json = %+v, want 192.0.2.123 from dhcp4", ntp)
	}
	if l := readFile(leases); !strings.Contains(l, " "+addr+" netc-sensor ") {
		t.Errorf("dnsmasq's leases lack %s for host netc-sensor:\n%s", addr, l)
	}
	testenv.WaitFor(t, "links.json", func() bool {
		var links []Link
		return json.Unmarshal([]byte(readFile(filepath.Join(run, LinksFile))), &links) == nil &&
			len(links) == 1 && links[0].Name == "netc-mgmt0" && links[0].Carrier
	})

	// Renewal at T1 (4 s): a REQUEST unicast from the leased address, ACKed, nothing changes.
	testenv.WaitFor(t, "a renewal at T1", func() bool {
		return strings.Count(dlog.String(), "DHCPACK(netc-srv0) "+addr) >= 2
	})
	if a := netnstest.Run(t, "ip", "-n", box, "-4", "-o", "addr", "show", "dev", "netc-mgmt0"); !strings.Contains(a, addr+"/24") {
		t.Errorf("address gone after the renewal: %s", a)
	}
	testenv.WaitFor(t, "lease.json's expiry to move on with the renewal", func() bool {
		var a Addressing
		return json.Unmarshal([]byte(readFile(filepath.Join(run, LeaseFile))), &a) == nil && a.Expires != "" && a.Expires > lease.Expires
	})

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err != nil {
		t.Fatalf("netconfd after SIGTERM: %v", err)
	}
	if a := netnstest.Run(t, "ip", "-n", box, "-4", "-o", "addr", "show", "dev", "netc-mgmt0"); strings.Contains(a, addr) {
		t.Errorf("address still there after shutdown: %s", a)
	}
	testenv.WaitFor(t, "dnsmasq to see the release", func() bool {
		return strings.Contains(dlog.String(), "DHCPRELEASE(netc-srv0) "+addr)
	})
	testenv.WaitFor(t, "dnsmasq to forget the lease", func() bool { return !strings.Contains(readFile(leases), addr) })
	if rc := readFile(filepath.Join(run, ResolvConfFile)); strings.Contains(rc, "nameserver") {
		t.Errorf("resolv.conf still names servers after the lease was released:\n%s", rc)
	}
}

// TestStaticOverridesDHCP: a bad static configuration written while a DHCP lease is held is
// refused and the lease stays; a good one releases the lease (dnsmasq sees it) and takes over;
// removing it brings DHCP back, without a restart.
func TestStaticOverridesDHCP(t *testing.T) {
	netnstest.NeedTools(t, "ip", "dnsmasq")
	box := netnstest.Netns(t, "netc-obox")
	srv := netnstest.Netns(t, "netc-osrv")
	netnstest.Veth(t, "netc-omgmt0", box, "netc-osrv0", srv)
	netnstest.Run(t, "ip", "-n", srv, "addr", "add", "192.0.2.1/24", "dev", "netc-osrv0")
	netnstest.Run(t, "ip", "-n", srv, "link", "set", "netc-osrv0", "up")
	dir := t.TempDir()
	leases := filepath.Join(dir, "leases")
	dlog := dnsmasq(t, srv, "netc-osrv0", leases,
		"--dhcp-range=192.0.2.50,192.0.2.60,255.255.255.0,2m",
		"--dhcp-option=option:router,192.0.2.1",
		"--dhcp-option=option:dns-server,192.0.2.53")
	cfg, run := filepath.Join(dir, "config.json"), filepath.Join(dir, "run")
	_, stop := netconfd(t, box, "-mgmt", "netc-omgmt0", "-config", cfg, "-run-dir", run, "-poll", "100ms")

	addrs := func() string {
		return netnstest.Run(t, "ip", "-n", box, "-4", "-o", "addr", "show", "dev", "netc-omgmt0")
	}
	addrRE := regexp.MustCompile(`inet (192\.0\.2\.(5[0-9]|60))/24`)
	var leased string
	testenv.WaitFor(t, "a leased address", func() bool {
		m := addrRE.FindStringSubmatch(addrs())
		if m != nil {
			leased = m[1]
		}
		return m != nil
	})

	// A bad static configuration is refused and DHCP stays in force.
	writeConfig(t, cfg, `{"network":{"static":{"address":"192.0.2.200/24","gateway":"198.51.100.1"}}}`)
	testenv.WaitFor(t, "the refusal in lease.json, beside the lease", func() bool {
		var a Addressing
		return json.Unmarshal([]byte(readFile(filepath.Join(run, LeaseFile))), &a) == nil && a.Source == "dhcp4" &&
			a.Addr.String() == leased+"/24" && strings.Contains(a.ConfigError, "network.static.gateway: 198.51.100.1 is outside 192.0.2.0/24")
	})
	if a := addrs(); !strings.Contains(a, "inet "+leased+"/24") || strings.Contains(a, "192.0.2.200") {
		t.Errorf("a refused configuration changed the addresses: %s", a)
	}
	if strings.Contains(dlog.String(), "DHCPRELEASE") {
		t.Errorf("a refused configuration released the lease")
	}

	writeConfig(t, cfg, `{"network":{"static":{"address":"192.0.2.200/24","gateway":"192.0.2.1","dns":["192.0.2.153"]}}}`)
	testenv.WaitFor(t, "dnsmasq to see the release", func() bool {
		return strings.Contains(dlog.String(), "DHCPRELEASE(netc-osrv0) "+leased)
	})
	testenv.WaitFor(t, "the static address alone", func() bool {
		a := addrs()
		return strings.Contains(a, "inet 192.0.2.200/24") && !strings.Contains(a, leased+"/")
	})
	testenv.WaitFor(t, "resolv.conf from the static configuration", func() bool {
		return readFile(filepath.Join(run, ResolvConfFile)) == "# written by netconfd (static)\nnameserver 192.0.2.153\n"
	})
	if r := netnstest.Run(t, "ip", "-n", box, "route", "show", "default"); !strings.Contains(r, "default via 192.0.2.1 dev netc-omgmt0 proto static") {
		t.Errorf("default route = %q, want the static one", r)
	}

	if err := os.Remove(cfg); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "DHCP back and the static address gone", func() bool {
		a := addrs()
		return addrRE.MatchString(a) && !strings.Contains(a, "192.0.2.200")
	})
	testenv.WaitFor(t, "resolv.conf from DHCP", func() bool {
		return readFile(filepath.Join(run, ResolvConfFile)) == "# written by netconfd (dhcp4)\nnameserver 192.0.2.53\n"
	})
	if err := stop(); err != nil {
		t.Fatalf("netconfd after SIGTERM: %v", err)
	}
}

// TestDHCPv4NAK: the DHCP server restarts with another address range and no memory of the lease;
// at T1 it refuses the renewal (DHCPNAK), and netconfd drops the address at once and takes a new
// lease from the new range.
func TestDHCPv4NAK(t *testing.T) {
	netnstest.NeedTools(t, "ip", "dnsmasq")
	box := netnstest.Netns(t, "netc-nbox")
	srv := netnstest.Netns(t, "netc-nsrv")
	netnstest.Veth(t, "netc-nmgmt0", box, "netc-nsrv0", srv)
	netnstest.Run(t, "ip", "-n", srv, "addr", "add", "192.0.2.1/24", "dev", "netc-nsrv0")
	netnstest.Run(t, "ip", "-n", srv, "link", "set", "netc-nsrv0", "up")
	dir := t.TempDir()
	_, stopFirst := dnsmasqStoppable(t, srv, "netc-nsrv0", filepath.Join(dir, "leases1"),
		"--dhcp-range=192.0.2.50,192.0.2.60,255.255.255.0,2m", "--dhcp-option=option:T1,4", "--dhcp-option=option:T2,100")
	_, _ = netconfd(t, box, "-mgmt", "netc-nmgmt0", "-config", filepath.Join(dir, "absent.json"), "-run-dir", filepath.Join(dir, "run"), "-poll", "100ms")
	addrs := func() string {
		return netnstest.Run(t, "ip", "-n", box, "-4", "-o", "addr", "show", "dev", "netc-nmgmt0")
	}
	first := regexp.MustCompile(`inet 192\.0\.2\.(5[0-9]|60)/24`)
	testenv.WaitFor(t, "a lease from the first range", func() bool { return first.MatchString(addrs()) })

	stopFirst()
	dlog := dnsmasq(t, srv, "netc-nsrv0", filepath.Join(dir, "leases2"), "--dhcp-authoritative",
		"--dhcp-range=192.0.2.70,192.0.2.80,255.255.255.0,2m", "--dhcp-option=option:T1,4", "--dhcp-option=option:T2,100")
	second := regexp.MustCompile(`inet 192\.0\.2\.(7[0-9]|80)/24`)
	testenv.WaitFor(t, "a lease from the second range, alone", func() bool {
		a := addrs()
		return second.MatchString(a) && !first.MatchString(a)
	})
	if !strings.Contains(dlog.String(), "DHCPNAK(netc-nsrv0)") {
		t.Errorf("the new lease came without a NAK: the test did not test NAK handling")
	}
}

// TestManagementFirst: at start the management port comes up and gets its DHCP address before
// the tap ports are set up (their offloads, jumbo MTU and link up took 1.7 s of a QEMU guest's
// boot ahead of the management port; the box's first answer waits for the address). The kernel's
// own record of the order, `ip monitor`, shows the address before the tap port's link up.
func TestManagementFirst(t *testing.T) {
	netnstest.NeedTools(t, "ip", "dnsmasq")
	box := netnstest.Netns(t, "netc-fbox")
	srv := netnstest.Netns(t, "netc-fsrv")
	netnstest.Veth(t, "netc-fmgmt0", box, "netc-fsrv0", srv)
	netnstest.Veth(t, "netc-ftap0", box, "netc-fspan0", srv)
	netnstest.Run(t, "ip", "-n", srv, "addr", "add", "192.0.2.1/24", "dev", "netc-fsrv0")
	netnstest.Run(t, "ip", "-n", srv, "link", "set", "netc-fsrv0", "up")
	netnstest.Run(t, "ip", "-n", srv, "link", "set", "netc-fspan0", "up")
	dir := t.TempDir()
	// --no-ping: offered at once, as QEMU's and most routers' servers do (dnsmasq otherwise
	// probes the address for 3 s first).
	dnsmasq(t, srv, "netc-fsrv0", filepath.Join(dir, "leases"), "--no-ping",
		"--dhcp-range=192.0.2.50,192.0.2.60,255.255.255.0,2m")

	var mon netnstest.SyncBuffer
	m := exec.Command("ip", "-n", box, "-oneline", "monitor", "link", "address")
	m.Stdout, m.Stderr = &mon, &mon
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Process.Kill(); _ = m.Wait() })
	// A marker change: once the monitor reports it, it reports everything after. Made again
	// until seen: a change made before ip monitor has bound its netlink socket is never
	// reported (at load 20 the first one was missed, and the test waited out its minute).
	marker, last := false, time.Time{}
	testenv.WaitFor(t, "ip monitor to listen", func() bool {
		if strings.Contains(mon.String(), "127.0.0.2") {
			return true
		}
		if time.Since(last) > 200*time.Millisecond {
			op := map[bool]string{false: "add", true: "del"}[marker]
			netnstest.Run(t, "ip", "-n", box, "addr", op, "127.0.0.2/8", "dev", "lo")
			marker, last = !marker, time.Now()
		}
		return false
	})

	// The bound on the wait is the test's patience: a DHCP exchange on a loaded machine may take
	// longer than the daemon's 2 s, which would order the steps the other way by design.
	var out netnstest.SyncBuffer
	cmd := netnstest.StartChild(t, box, "netconfd", &out, "NETC_TAPS_AFTER="+testenv.Patience.String(),
		"NETC_ARGS="+strings.Join([]string{"-mgmt", "netc-fmgmt0", "-tap", "netc-ftap0", "-config", filepath.Join(dir, "absent.json"),
			"-run-dir", filepath.Join(dir, "run"), "-poll", "200ms"}, "\n"))
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		t.Logf("netconfd:\n%s", out.String())
	})
	addrRE := regexp.MustCompile(`netc-fmgmt0\s+inet 192\.0\.2\.`)
	tapUpRE := regexp.MustCompile(`netc-ftap0[@:][^<]*<[^>]*\bUP\b`)
	testenv.WaitFor(t, "the address and the tap port up, in the monitor", func() bool {
		s := mon.String()
		return addrRE.MatchString(s) && tapUpRE.MatchString(s)
	})
	s := mon.String()
	if a, u := addrRE.FindStringIndex(s)[0], tapUpRE.FindStringIndex(s)[0]; u < a {
		t.Errorf("the tap port came up before the management port had its address:\n%s", s)
	}
}

package netconf

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sie-europe/dnssensor/appliance/netconf/netnstest"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

// netconfd runs netconfd in ns with args and stops it (SIGTERM) at the end of the test. stop
// sends SIGTERM and returns how it exited.
func netconfd(t *testing.T, ns string, args ...string) (out *netnstest.SyncBuffer, stop func() error) {
	t.Helper()
	out = &netnstest.SyncBuffer{}
	cmd := netnstest.StartChild(t, ns, "netconfd", out, "NETC_ARGS="+strings.Join(args, "\n"))
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var res error
	stopped := false
	stop = func() error {
		if !stopped {
			stopped = true
			_ = cmd.Process.Signal(syscall.SIGTERM)
			res = <-exited
		}
		return res
	}
	t.Cleanup(func() {
		_ = stop()
		t.Logf("netconfd:\n%s", out.String())
	})
	return out, stop
}

func writeConfig(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// netState is what the kernel says about the management port, as iproute2 prints it, once
// duplicate address detection has finished (the kernel's own progress, not a change by
// netconfd, would otherwise show in a comparison).
func netState(t *testing.T, ns, iface string) string {
	t.Helper()
	testenv.WaitFor(t, "duplicate address detection to finish on "+iface, func() bool {
		return strings.TrimSpace(netnstest.Run(t, "ip", "-n", ns, "-6", "-o", "addr", "show", "dev", iface, "tentative")) == ""
	})
	return netnstest.Run(t, "ip", "-n", ns, "-o", "addr", "show", "dev", iface) +
		netnstest.Run(t, "ip", "-n", ns, "route", "show", "table", "all", "dev", iface) +
		netnstest.Run(t, "ip", "-n", ns, "-6", "route", "show", "table", "all", "dev", iface)
}

// TestStatic: a static configuration is applied (v4 and v6 address and default route, DNS and
// NTP published); applying it again (netconfd restarted) changes nothing in the kernel; a bad
// configuration is refused with a message naming the key and the addressing in force stays; a
// corrected one is applied without a restart, removing what it no longer has.
func TestStatic(t *testing.T) {
	netnstest.NeedTools(t, "ip")
	box := netnstest.Netns(t, "netc-sbox")
	peer := netnstest.Netns(t, "netc-speer")
	netnstest.Veth(t, "netc-smgmt0", box, "netc-speer0", peer)
	netnstest.Run(t, "ip", "-n", peer, "link", "set", "netc-speer0", "up")
	dir := t.TempDir()
	cfg, run := filepath.Join(dir, "config.json"), filepath.Join(dir, "run")
	writeConfig(t, cfg, `{"network":{"static":{"address":"198.51.100.10/24","gateway":"198.51.100.1",
		"address6":"2001:db8::10/64","gateway6":"2001:db8::1","dns":["198.51.100.53"],"ntp":["198.51.100.123","2001:db8::123"]}}}`)
	args := []string{"-mgmt", "netc-smgmt0", "-config", cfg, "-run-dir", run, "-poll", "100ms"}
	_, stop := netconfd(t, box, args...)

	has := func(what string, cmd ...string) func() bool {
		return func() bool {
			return strings.Contains(netnstest.Run(t, "ip", append([]string{"-n", box}, cmd...)...), what)
		}
	}
	testenv.WaitFor(t, "198.51.100.10/24", has("inet 198.51.100.10/24", "-o", "addr", "show", "dev", "netc-smgmt0"))
	testenv.WaitFor(t, "2001:db8::10/64", has("inet6 2001:db8::10/64", "-o", "addr", "show", "dev", "netc-smgmt0"))
	testenv.WaitFor(t, "the IPv4 default route", has("default via 198.51.100.1 dev netc-smgmt0 proto static", "route", "show", "default"))
	testenv.WaitFor(t, "the IPv6 default route", has("default via 2001:db8::1 dev netc-smgmt0 proto static", "-6", "route", "show", "default"))
	testenv.WaitFor(t, "resolv.conf", func() bool {
		return readFile(filepath.Join(run, ResolvConfFile)) == "# written by netconfd (static)\nnameserver 198.51.100.53\n"
	})
	var ntp Servers
	if err := json.Unmarshal([]byte(readFile(filepath.Join(run, NTPFile))), &ntp); err != nil || ntp.Source != "static" || len(ntp.Servers) != 2 {
		t.Errorf("ntp.json = %+v, %v; want the two static servers", ntp, err)
	}

	// Idempotent: netconfd stops (a static address stays) and starts again; the kernel's state
	// is the same before and after.
	if err := stop(); err != nil {
		t.Fatalf("netconfd after SIGTERM: %v", err)
	}
	before := netState(t, box, "netc-smgmt0")
	out, stop := netconfd(t, box, args...)
	testenv.WaitFor(t, "the configuration to be applied again", func() bool { return strings.Contains(out.String(), "configuration applied") })
	if after := netState(t, box, "netc-smgmt0"); after != before {
		t.Errorf("applying the same configuration again changed the kernel's state:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// A bad configuration is refused, with the key named; nothing changes.
	writeConfig(t, cfg, `{"network":{"static":{"address":"198.51.100.20/24","gateway":"192.0.2.1"}}}`)
	testenv.WaitFor(t, "the refusal in lease.json", func() bool {
		var a Addressing
		return json.Unmarshal([]byte(readFile(filepath.Join(run, LeaseFile))), &a) == nil &&
			strings.Contains(a.ConfigError, "network.static.gateway: 192.0.2.1 is outside 198.51.100.0/24")
	})
	if after := netState(t, box, "netc-smgmt0"); after != before {
		t.Errorf("a refused configuration changed the kernel's state:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// Corrected: applied without a restart; the old address and the IPv6 configuration go.
	writeConfig(t, cfg, `{"network":{"static":{"address":"198.51.100.20/24","gateway":"198.51.100.1"}}}`)
	testenv.WaitFor(t, "198.51.100.20/24", has("inet 198.51.100.20/24", "-o", "addr", "show", "dev", "netc-smgmt0"))
	testenv.WaitFor(t, "the refusal to be cleared", func() bool {
		var a Addressing
		return json.Unmarshal([]byte(readFile(filepath.Join(run, LeaseFile))), &a) == nil && a.ConfigError == "" && a.Addr.String() == "198.51.100.20/24"
	})
	st := netState(t, box, "netc-smgmt0")
	for _, gone := range []string{"198.51.100.10/24", "2001:db8::10/64", "via 2001:db8::1"} {
		if strings.Contains(st, gone) {
			t.Errorf("%s still configured:\n%s", gone, st)
		}
	}
	if !strings.Contains(st, "default via 198.51.100.1") {
		t.Errorf("IPv4 default route lost:\n%s", st)
	}
	if rc := readFile(filepath.Join(run, ResolvConfFile)); strings.Contains(rc, "nameserver") {
		t.Errorf("resolv.conf still names the removed static DNS server:\n%s", rc)
	}
	if err := stop(); err != nil {
		t.Fatalf("netconfd after SIGTERM: %v", err)
	}
}

package status

import (
	"context"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sie-europe/dnssensor/appliance/netconf/netnstest"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

func TestMain(m *testing.M) {
	netnstest.RunChild(map[string]func() (any, error){
		// statusd itself, inside a test's namespace, with the flags in STATUSD_ARGS.
		"statusd": func() (any, error) {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			os.Exit(Main(ctx, strings.Split(os.Getenv("STATUSD_ARGS"), "\n"), os.Stdout, os.Stderr))
			return nil, nil
		},
	})
	os.Exit(m.Run())
}

func TestParseListenIface(t *testing.T) {
	for _, bad := range []string{"", "eth0", "eth0:", ":8080", "eth0:0", "eth0:65536", "eth0:http", "eth 0:80", "a-very-long-interface-name:80"} {
		if _, _, err := ParseListenIface(bad); err == nil || !strings.Contains(err.Error(), "-listen-iface") {
			t.Errorf("-listen-iface %q: error %v, want one naming the flag", bad, err)
		}
	}
	if iface, port, err := ParseListenIface("eth0:8080"); err != nil || iface != "eth0" || port != 8080 {
		t.Errorf("eth0:8080: %q %d %v", iface, port, err)
	}
}

// TestListenIface: statusd -listen-iface follows the management port's addresses (none at start,
// then IPv4 and IPv6 as they are added, gone when removed), and is never reachable through another
// port: not on an address of the tap port, and not on a management address when the request
// arrives through the tap port (Linux would accept it there without SO_BINDTODEVICE: the weak host
// model). A NOARP interface, i.e. a tap port, is refused.
//
//	images-box: imgmgmt0 ── images-peer: imgpeer0 (10.77.0.2/24, 2001:db8:77::2/64)
//	            imgtap0  ──              imgpeer1 (10.77.9.2/24)
func TestListenIface(t *testing.T) {
	netnstest.NeedTools(t, "ip", "ss", "curl")
	box := netnstest.Netns(t, "images-box")
	peer := netnstest.Netns(t, "images-peer")
	netnstest.Veth(t, "imgmgmt0", box, "imgpeer0", peer)
	netnstest.Veth(t, "imgtap0", box, "imgpeer1", peer)
	for _, l := range [][2]string{{box, "imgmgmt0"}, {box, "imgtap0"}, {peer, "imgpeer0"}, {peer, "imgpeer1"}} {
		netnstest.Run(t, "ip", "-n", l[0], "link", "set", l[1], "up")
	}
	netnstest.Run(t, "ip", "-n", peer, "addr", "add", "10.77.0.2/24", "dev", "imgpeer0")
	netnstest.Run(t, "ip", "-n", peer, "addr", "add", "2001:db8:77::2/64", "dev", "imgpeer0", "nodad")
	netnstest.Run(t, "ip", "-n", peer, "addr", "add", "10.77.9.2/24", "dev", "imgpeer1")

	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("listen-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	start := func(iface string) *netnstest.SyncBuffer {
		var out netnstest.SyncBuffer
		cmd := netnstest.StartChild(t, box, "statusd", &out, "STATUSD_ARGS="+strings.Join([]string{
			"-listen-iface", iface + ":8080", "-password-file", pw, "-daemons", "", "-optional", ""}, "\n"))
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
			t.Logf("statusd -listen-iface %s:\n%s", iface, out.String())
		})
		return &out
	}
	// code is the HTTP status of a GET from the peer namespace, "000" when nothing answers.
	code := func(url string) string {
		out, _ := exec.Command("ip", "netns", "exec", peer, "curl", "-s", "-g", "-m", "5", "-o", "/dev/null",
			"-w", "%{http_code}", "-u", "x:listen-secret", url).Output()
		return string(out)
	}
	listening := func() string {
		return netnstest.Run(t, "ip", "netns", "exec", box, "ss", "-Hltn", "sport = :8080")
	}
	// ss writes a socket bound to a device as ADDR%DEVICE:PORT.
	listensOn := func(addr string) bool {
		l := listening()
		return strings.Contains(l, addr+":8080") || strings.Contains(l, addr+"%")
	}

	out := start("imgmgmt0")
	testenv.WaitFor(t, "statusd to say imgmgmt0 has no address", func() bool {
		return strings.Contains(out.String(), "imgmgmt0 has no address yet")
	})
	if l := listening(); strings.TrimSpace(l) != "" {
		t.Fatalf("listening before the management port has an address:\n%s", l)
	}

	netnstest.Run(t, "ip", "-n", box, "addr", "add", "10.77.0.1/24", "dev", "imgmgmt0")
	testenv.WaitFor(t, "the page on 10.77.0.1:8080", func() bool { return code("http://10.77.0.1:8080/") == "200" })
	netnstest.Run(t, "ip", "-n", box, "addr", "add", "2001:db8:77::1/64", "dev", "imgmgmt0", "nodad")
	testenv.WaitFor(t, "the page on [2001:db8:77::1]:8080", func() bool { return code("http://[2001:db8:77::1]:8080/") == "200" })

	// The tap port gets an address (a misconfiguration: netconfd never gives it one) and the peer
	// routes a second management address through the tap link.
	netnstest.Run(t, "ip", "-n", box, "addr", "add", "10.77.9.1/24", "dev", "imgtap0")
	netnstest.Run(t, "ip", "-n", box, "addr", "add", "10.77.0.5/24", "dev", "imgmgmt0")
	netnstest.Run(t, "ip", "-n", peer, "route", "add", "10.77.0.5/32", "dev", "imgpeer1")
	testenv.WaitFor(t, "a listener on 10.77.0.5:8080", func() bool { return listensOn("10.77.0.5") })
	if c := code("http://10.77.0.5:8080/"); c != "000" {
		t.Errorf("a request for a management address arriving through the tap port: HTTP %s, want no answer", c)
	}
	if c := code("http://10.77.9.1:8080/"); c != "000" {
		t.Errorf("a request for the tap port's own address: HTTP %s, want no answer", c)
	}
	if listensOn("10.77.9.1") {
		t.Errorf("listening on the tap port's address:\n%s", listening())
	}

	// Renumbering: the first address goes, the others stay.
	netnstest.Run(t, "ip", "-n", box, "addr", "del", "10.77.0.1/24", "dev", "imgmgmt0")
	testenv.WaitFor(t, "the listener on 10.77.0.1 to close", func() bool { return !listensOn("10.77.0.1") })
	if c := code("http://[2001:db8:77::1]:8080/"); c != "200" {
		t.Errorf("IPv6 address after the IPv4 one went: HTTP %s, want 200", c)
	}

	// A tap port (NOARP, as netconfd makes them) is refused, even with an address.
	netnstest.Run(t, "ip", "-n", box, "link", "set", "imgtap0", "arp", "off")
	tapOut := start("imgtap0")
	testenv.WaitFor(t, "statusd to refuse imgtap0", func() bool {
		return strings.Contains(tapOut.String(), "refusing imgtap0: it is a silent tap port")
	})
	if listensOn("10.77.9.1") {
		t.Errorf("listening on a NOARP tap port:\n%s", listening())
	}
}

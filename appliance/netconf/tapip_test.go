package netconf

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/sie-europe/dnssensor/appliance/netconf/netnstest"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

// TestTapIgnoresIP: a request for one of the box's management addresses that arrives through a
// tap port reaches no socket, not even one listening on every address (gokrazy's web UI does).
// Linux would take it (any local address is accepted on any interface) and answer through the
// management port's routes; on a tap port IPv4 is dropped by strict reverse-path filtering, since
// no route leads out of a tap port. The capture is unaffected: packet sockets see frames first.
//
//	images-ibox: imgimgmt (10.78.0.1/24, 10.78.0.5/24) ── images-ipeer: imgipeer0 (10.78.0.2/24)
//	             imgitap0 (tap)                        ──               imgipeer1 (10.78.9.2/24)
func TestTapIgnoresIP(t *testing.T) {
	netnstest.NeedTools(t, "ip", "curl", "python3", "ethtool")
	box := netnstest.Netns(t, "images-ibox")
	peer := netnstest.Netns(t, "images-ipeer")
	netnstest.Veth(t, "imgimgmt", box, "imgipeer0", peer)
	netnstest.Veth(t, "imgitap0", box, "imgipeer1", peer)
	for _, l := range [][2]string{{box, "imgimgmt"}, {peer, "imgipeer0"}, {peer, "imgipeer1"}} {
		netnstest.Run(t, "ip", "-n", l[0], "link", "set", l[1], "up")
	}
	// The namespaces' own defaults, whatever the host's: loose filtering nowhere but the tap.
	for _, ns := range []string{box, peer} {
		netnstest.Sysctl(t, ns, "net/ipv4/conf/all/rp_filter", "0")
		netnstest.Sysctl(t, ns, "net/ipv4/conf/default/rp_filter", "0")
	}
	netnstest.Run(t, "ip", "-n", box, "addr", "add", "10.78.0.1/24", "dev", "imgimgmt")
	netnstest.Run(t, "ip", "-n", box, "addr", "add", "10.78.0.5/24", "dev", "imgimgmt")
	// The box's way back to the tap-side client is through the management port, as a default
	// route would take it.
	netnstest.Run(t, "ip", "-n", box, "route", "add", "10.78.9.0/24", "via", "10.78.0.2")
	netnstest.Run(t, "ip", "-n", peer, "addr", "add", "10.78.0.2/24", "dev", "imgipeer0")
	netnstest.Run(t, "ip", "-n", peer, "addr", "add", "10.78.9.2/24", "dev", "imgipeer1")

	if out, err := netnstest.Child(context.Background(), t, box, "tap", "NETC_IFACE=imgitap0"); err != nil {
		t.Fatalf("ConfigureTap: %v\n%s", err, out)
	}
	// The peer sends to 10.78.0.5 through the tap link, to the tap port's MAC (it answers no ARP).
	mac := strings.TrimSpace(netnstest.Run(t, "ip", "netns", "exec", box, "cat", "/sys/class/net/imgitap0/address"))
	netnstest.Run(t, "ip", "-n", peer, "route", "add", "10.78.0.5/32", "dev", "imgipeer1")
	netnstest.Run(t, "ip", "-n", peer, "neigh", "add", "10.78.0.5", "lladdr", mac, "dev", "imgipeer1")

	// A server on every address of the box, as gokrazy's web UI listens.
	srv := exec.Command("ip", "netns", "exec", box, "python3", "-m", "http.server", "8099", "--bind", "0.0.0.0")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	code := func(url string) string {
		out, _ := exec.Command("ip", "netns", "exec", peer, "curl", "-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}", url).Output()
		return string(out)
	}
	testenv.WaitFor(t, "the server on the management port", func() bool { return code("http://10.78.0.1:8099/") == "200" })
	if c := code("http://10.78.0.5:8099/"); c != "000" {
		t.Errorf("a request for a management address arriving through the tap port: HTTP %s, want no answer", c)
	}
}

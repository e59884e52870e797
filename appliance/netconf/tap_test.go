package netconf

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/appliance/netconf/netnstest"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

// TestTapSilent brings up two ports of one box side by side, each the end of a veth pair whose far
// end is watched by tcpdump in another namespace: a control port brought up with the kernel's defaults
// (ip link set up) and a port configured by ConfigureTap. The control must be heard (the capture
// works, and shows what a tap port would send into a monitored link); the tap port must send
// nothing, during link up and after, and must read back silent.
func TestTapSilent(t *testing.T) {
	netnstest.NeedTools(t, "ip", "tcpdump", "ethtool")
	box := netnstest.Netns(t, "netc-tbox")
	obs := netnstest.Netns(t, "netc-tobs")
	netnstest.Veth(t, "netc-tap0", box, "netc-obs0", obs)
	netnstest.Veth(t, "netc-ctl0", box, "netc-obs1", obs)
	for _, o := range []string{"netc-obs0", "netc-obs1"} {
		// The watcher must not talk either, or its own frames could provoke answers.
		netnstest.Sysctl(t, obs, "net/ipv6/conf/"+o+"/disable_ipv6", "1")
		netnstest.Run(t, "ip", "-n", obs, "link", "set", o, "arp", "off", "up")
	}
	// GRO is off on a fresh veth; turn it on so that ConfigureTap has to turn it off.
	netnstest.In(t, box, "ethtool", "-K", "netc-tap0", "gro", "on")

	tapCap := netnstest.StartCapture(t, obs, "netc-obs0")
	ctlCap := netnstest.StartCapture(t, obs, "netc-obs1")

	// The control port gets the kernel's usual IPv6 defaults whatever the host's are.
	for k, v := range map[string]string{"disable_ipv6": "0", "accept_ra": "1", "accept_dad": "1", "router_solicitations": "3"} {
		netnstest.Sysctl(t, box, "net/ipv6/conf/netc-ctl0/"+k, v)
	}
	up := time.Now()
	netnstest.Run(t, "ip", "-n", box, "link", "set", "netc-ctl0", "up")
	out, err := netnstest.Child(context.Background(), t, box, "tap", "NETC_IFACE=netc-tap0")
	if err != nil {
		// Go on: the capture below says what such a port sent.
		t.Errorf("ConfigureTap: %v\n%s", err, out)
	}
	var rep TapReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("report %q: %v", out, err)
	}
	t.Logf("report: %s", out)

	// The IPv6 stack's last word after link up is a router solicitation, after duplicate address
	// detection; the window closes once the control port has said it, and not before 3 s.
	testenv.WaitFor(t, "a router solicitation from the control port", func() bool {
		for _, f := range ctlCap.Frames() {
			if strings.Contains(f, "router solicitation") {
				return true
			}
		}
		return false
	})
	if rest := 3*time.Second - time.Since(up); rest > 0 {
		time.Sleep(rest) // the observation window itself, not an ordering of phases
	}
	ctl := ctlCap.Stop()
	tap := tapCap.Stop()
	t.Logf("control port (ip link set up) sent %d frames in %v", len(ctl), time.Since(up).Round(time.Millisecond))
	for _, f := range ctl {
		t.Logf("  control: %s", f)
	}
	if len(tap) != 0 {
		t.Errorf("tap port sent %d frames, want 0:\n%s", len(tap), strings.Join(tap, "\n"))
	}

	if rep.MTU != 9216 {
		t.Errorf("report: MTU %d, want 9216 (jumbo frames)", rep.MTU)
	}
	if !rep.IPv6Disabled || !rep.NoARP || !rep.Promisc || !rep.Up || len(rep.Addresses) != 0 {
		t.Errorf("report says the port is not silent: %+v", rep)
	}
	// Read back with iproute2 and ethtool, not with the code under test.
	addrs := netnstest.Run(t, "ip", "-n", box, "-o", "addr", "show", "dev", "netc-tap0")
	if strings.TrimSpace(addrs) != "" {
		t.Errorf("tap port has addresses:\n%s", addrs)
	}
	link := netnstest.Run(t, "ip", "-n", box, "-o", "link", "show", "dev", "netc-tap0")
	flags := link[strings.Index(link, "<")+1 : strings.Index(link, ">")]
	for _, want := range []string{"NOARP", "PROMISC", "UP"} {
		if !strings.Contains(","+flags+",", ","+want+",") {
			t.Errorf("tap port flags <%s> lack %s", flags, want)
		}
	}
	if !strings.Contains(link, " mtu 9216 ") {
		t.Errorf("tap port MTU not raised: %s", link)
	}
	k := netnstest.In(t, box, "ethtool", "-k", "netc-tap0")
	for _, want := range []string{"generic-receive-offload: off", "rx-vlan-offload: off", "rx-vlan-stag-hw-parse: off"} {
		if !strings.Contains(k, want) {
			t.Errorf("ethtool -k netc-tap0 lacks %q:\n%s", want, k)
		}
	}
	offs := map[string]Offload{}
	for _, o := range rep.Offloads {
		offs[o.Name] = o
	}
	for _, name := range []string{"rx-gro", "rx-vlan-hw-parse", "rx-vlan-stag-hw-parse"} {
		if o, ok := offs[name]; !ok || o.Active {
			t.Errorf("report: offload %s = %+v (present %v), want off", name, o, ok)
		}
	}

	// A second run changes nothing and still reads back silent.
	if out, err := netnstest.Child(context.Background(), t, box, "tap", "NETC_IFACE=netc-tap0"); err != nil {
		t.Fatalf("ConfigureTap again: %v\n%s", err, out)
	}
	if len(ctl) == 0 {
		t.Errorf("the control port sent nothing: the capture cannot tell a silent port from a deaf capture")
	}
}

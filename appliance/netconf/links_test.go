package netconf

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sie-europe/dnssensor/appliance/netconf/netnstest"
	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/internal/health/healthtest"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

// TestLinksJSON: links.json reports every port of the profile: a tap port without carrier with
// the fix, then with carrier and counting the frames it receives, its offloads read back; a
// tap port that is not there (an unplugged adapter) with its fix. The tap port's transmit counter
// stays 0. The health contract says the same: the tap port silenced, its carrier red with the
// fix and then green, nothing sent; and a frame pushed out of the tap port by another program
// turns "nothing sent" red.
func TestLinksJSON(t *testing.T) {
	netnstest.NeedTools(t, "ip")
	box := netnstest.Netns(t, "netc-lbox")
	peer := netnstest.Netns(t, "netc-lpeer")
	netnstest.Veth(t, "netc-lmgmt0", box, "netc-lpm0", peer)
	netnstest.Veth(t, "netc-ltap0", box, "netc-lpt0", peer)
	dir := t.TempDir()
	run := filepath.Join(dir, "run")
	sock := filepath.Join(dir, "health.sock")
	checks := func() map[string]health.Check {
		r, err := health.Get(context.Background(), sock)
		if err != nil {
			return nil
		}
		m := map[string]health.Check{}
		var walk func(cs []*health.Check)
		walk = func(cs []*health.Check) {
			for _, c := range cs {
				m[c.Name] = *c
				walk(c.Children)
			}
		}
		walk(r.Checks)
		return m
	}
	netconfd(t, box, "-mgmt", "netc-lmgmt0", "-tap", "netc-ltap0,netc-lgone0", "-config", filepath.Join(dir, "absent.json"), "-run-dir", run, "-poll", "100ms", "-health", sock)

	links := func() map[string]Link {
		var ls []Link
		if json.Unmarshal([]byte(readFile(filepath.Join(run, LinksFile))), &ls) != nil {
			return nil
		}
		m := map[string]Link{}
		for _, l := range ls {
			m[l.Name] = l
		}
		return m
	}
	var got map[string]Link
	testenv.WaitFor(t, "links.json with the tap port up without carrier", func() bool {
		got = links()
		l, ok := got["netc-ltap0"]
		return ok && l.Up && !l.Carrier && l.Tap != nil
	})
	tap := got["netc-ltap0"]
	if tap.Role != "tap" || !strings.Contains(tap.Fix, "no carrier") || !tap.Tap.NoARP || !tap.Tap.Promisc || len(tap.Tap.Offloads) == 0 {
		t.Errorf("tap port without carrier: %+v, tap %+v", tap, tap.Tap)
	}
	if g := got["netc-lgone0"]; g.Present || g.Role != "tap" || !strings.Contains(g.Fix, "plugged in") {
		t.Errorf("missing tap port: %+v", g)
	}
	if m := got["netc-lmgmt0"]; m.Role != "management" || !m.Present || !m.Up {
		t.Errorf("management port: %+v", m)
	}
	var hc map[string]health.Check
	testenv.WaitFor(t, "health: the tap port silenced, without carrier", func() bool {
		hc = checks()
		c, ok := hc["carrier on netc-ltap0"]
		return ok && !c.OK && hc["tap port netc-ltap0"].OK
	})
	if c := hc["carrier on netc-ltap0"]; !strings.Contains(c.Fix, "no carrier") {
		t.Errorf("carrier check without its fix: %+v", c)
	}
	if c := hc["tap port netc-lgone0"]; c.OK || !strings.Contains(c.Fix, "plugged in") {
		t.Errorf("absent tap port: %+v", c)
	}
	if c := hc["address on netc-lmgmt0"]; c.OK || c.Fix == "" {
		t.Errorf("management port without DHCP server has an address: %+v", c)
	}
	code, body := healthtest.Get(t, health.Client(sock), "http://unix/metrics")
	if code != 200 || !strings.Contains(string(body), `dnssensor_netconfd_port_tx_frames_total{port="netc-ltap0",role="tap"} 0`) {
		t.Errorf("metrics %d:\n%s", code, body)
	}

	// The far end comes up and sends: carrier, and the frames are counted.
	netnstest.Run(t, "ip", "-n", peer, "link", "set", "netc-lpt0", "up")
	testenv.WaitFor(t, "carrier and received frames on the tap port", func() bool {
		l := links()["netc-ltap0"]
		// The peer's own IPv6 start-up (MLD, DAD, RS) is what the tap port receives.
		return l.Carrier && l.RxPackets > 0 && l.Fix == ""
	})
	// And by the kernel's own count, the tap port has sent nothing.
	if l := links()["netc-ltap0"]; l.TxPackets != 0 {
		t.Errorf("tap port sent %d frames", l.TxPackets)
	}
	testenv.WaitFor(t, "health: carrier on the tap port", func() bool {
		hc = checks()
		return hc["carrier on netc-ltap0"].OK
	})
	if c := hc["nothing sent on netc-ltap0"]; !c.OK {
		t.Errorf("nothing sent yet, but: %+v", c)
	}

	// Another program sends a frame out of the tap port: the check must notice.
	if out, err := netnstest.Child(context.Background(), t, box, "send", "NETC_IFACE=netc-ltap0"); err != nil {
		t.Fatalf("send: %v %s", err, out)
	}
	testenv.WaitFor(t, "health: a frame sent on the tap port", func() bool {
		c := checks()["nothing sent on netc-ltap0"]
		return !c.OK && strings.Contains(c.Detail, "1 frames sent")
	})
}

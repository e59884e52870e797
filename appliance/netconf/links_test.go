package netconf

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sie-europe/dnssensor/appliance/netconf/netnstest"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

// TestLinksJSON: links.json reports every port of the profile: a tap port without carrier with
// the fix, then with carrier and counting the frames it receives, its offloads read back; a
// tap port that is not there (an unplugged adapter) with its fix. The tap port's transmit counter
// stays 0.
func TestLinksJSON(t *testing.T) {
	netnstest.NeedTools(t, "ip")
	box := netnstest.Netns(t, "netc-lbox")
	peer := netnstest.Netns(t, "netc-lpeer")
	netnstest.Veth(t, "netc-lmgmt0", box, "netc-lpm0", peer)
	netnstest.Veth(t, "netc-ltap0", box, "netc-lpt0", peer)
	dir := t.TempDir()
	run := filepath.Join(dir, "run")
	netconfd(t, box, "-mgmt", "netc-lmgmt0", "-tap", "netc-ltap0,netc-lgone0", "-config", filepath.Join(dir, "absent.json"), "-run-dir", run, "-poll", "100ms")

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
}

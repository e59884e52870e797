package netconf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tapOffloads are the receive features that merge, alter or filter frames before an AF_PACKET
// socket sees them, with why each matters to a capture. Off wherever the driver lets them go.
var tapOffloads = []struct{ name, why string }{
	{"rx-gro", "GRO merges consecutive TCP segments into one oversized frame"},
	{"rx-gro-hw", "hardware GRO merges segments in the NIC"},
	{"rx-lro", "LRO merges segments in the NIC and rewrites their headers"},
	{"rx-gro-list", "GRO fraglist chains segments into one packet"},
	{"rx-udp-gro-forwarding", "UDP GRO merges datagrams"},
	{"rx-vlan-hw-parse", "rx VLAN offload strips the 802.1Q tag from the frame"},
	{"rx-vlan-stag-hw-parse", "rx VLAN offload strips the 802.1ad tag from the frame"},
	{"rx-vlan-filter", "the VLAN filter drops frames of VLANs the box has not joined"},
	{"rx-vlan-stag-filter", "the VLAN filter drops frames of service VLANs the box has not joined"},
}

// Offload is the state of one receive feature of a tap port after configuration.
type Offload struct {
	Name   string `json:"name"`
	Active bool   `json:"active"`
	// Fixed: the driver does not let it change (reported so a port that keeps GRO on is visible).
	Fixed bool   `json:"fixed,omitempty"`
	Why   string `json:"why"`
}

// TapReport is what ConfigureTap did and read back.
type TapReport struct {
	Name         string    `json:"name"`
	IPv6Disabled bool      `json:"ipv6_disabled"` // or no IPv6 in the kernel
	NoARP        bool      `json:"noarp"`
	Promisc      bool      `json:"promisc"`
	Up           bool      `json:"up"`
	MTU          int       `json:"mtu"`
	Addresses    []string  `json:"addresses,omitempty"` // must stay empty
	Offloads     []Offload `json:"offloads,omitempty"`
	// OffloadError says why the offloads could not be read or changed (the port is still silent
	// and up: a merged frame costs accuracy, a sent frame costs the box its passivity).
	OffloadError string `json:"offload_error,omitempty"`
}

// procSys is the sysctl tree; a variable so tests can point it elsewhere.
var procSys = "/proc/sys"

// ConfigureTap makes iface a silent capture port: IPv6 off before the link comes up (no
// link-local address, no DAD probe, no router solicitation, no MLD report), no ARP, no address,
// promiscuous, frame-altering receive offloads off, MTU raised for jumbo frames, then link up. A step that keeps the port from
// sending fails the whole call and leaves the link as it was (down, if it was down): a tap port
// that cannot be silenced is better dark than talking.
func ConfigureTap(iface string) (TapReport, error) {
	r := TapReport{Name: iface}
	link, err := netlink.LinkByName(iface)
	if err != nil {
		return r, fmt.Errorf("tap port %s: %w", iface, err)
	}
	if err := disableIPv6(iface); err != nil {
		return r, fmt.Errorf("tap port %s: %w", iface, err)
	}
	if err := dropIPv4(iface); err != nil {
		return r, fmt.Errorf("tap port %s: %w", iface, err)
	}
	if err := netlink.LinkSetARPOff(link); err != nil {
		return r, fmt.Errorf("tap port %s: setting NOARP: %w", iface, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return r, fmt.Errorf("tap port %s: listing addresses: %w", iface, err)
	}
	for _, a := range addrs {
		if err := netlink.AddrDel(link, &a); err != nil {
			return r, fmt.Errorf("tap port %s: removing address %s: %w", iface, a.IPNet, err)
		}
	}
	if err := netlink.SetPromiscOn(link); err != nil {
		return r, fmt.Errorf("tap port %s: setting promiscuous mode: %w", iface, err)
	}
	if err := offloadsOff(iface); err != nil {
		r.OffloadError = err.Error()
	}
	raiseMTU(link)
	if err := netlink.LinkSetUp(link); err != nil {
		return r, fmt.Errorf("tap port %s: link up: %w", iface, err)
	}
	return readTap(iface, r.OffloadError)
}

// tapMTUs are tried in turn until the driver accepts one. A frame longer than the port's MTU is
// dropped by many drivers before any socket sees it, and monitored links carry jumbo frames; 9216
// is the common switch maximum, 9000 what most NICs that stop short of it take.
var tapMTUs = []int{9216, 9000}

// raiseMTU raises the MTU of a tap port that is below the first acceptable size; a driver that
// takes none keeps its own (the report says which).
func raiseMTU(link netlink.Link) {
	for _, mtu := range tapMTUs {
		if link.Attrs().MTU >= mtu {
			return
		}
		// Before link up, so that a NIC that resets to resize its buffers does it once, dark.
		if netlink.LinkSetMTU(link, mtu) == nil {
			return
		}
	}
}

// readTap reads back a tap port's state and fails if it could send anything.
func readTap(iface, offloadErr string) (TapReport, error) {
	r := TapReport{Name: iface, OffloadError: offloadErr}
	link, err := netlink.LinkByName(iface)
	if err != nil {
		return r, fmt.Errorf("tap port %s: %w", iface, err)
	}
	a := link.Attrs()
	r.NoARP = a.RawFlags&unix.IFF_NOARP != 0
	r.Promisc = a.RawFlags&unix.IFF_PROMISC != 0
	r.Up = a.RawFlags&unix.IFF_UP != 0
	r.MTU = a.MTU
	r.IPv6Disabled, err = ipv6Disabled(iface)
	if err != nil {
		return r, fmt.Errorf("tap port %s: %w", iface, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return r, fmt.Errorf("tap port %s: listing addresses: %w", iface, err)
	}
	for _, ad := range addrs {
		r.Addresses = append(r.Addresses, ad.IPNet.String())
	}
	if fs, err := getFeatures(iface); err != nil {
		if r.OffloadError == "" {
			r.OffloadError = err.Error()
		}
	} else {
		for _, o := range tapOffloads {
			f, ok := fs.byName[o.name]
			if !ok {
				continue
			}
			r.Offloads = append(r.Offloads, Offload{Name: o.name, Active: f.active, Fixed: !f.available || f.neverChanged, Why: o.why})
		}
	}
	var problems []string
	if !r.IPv6Disabled {
		problems = append(problems, "IPv6 is enabled")
	}
	if !r.NoARP {
		problems = append(problems, "ARP is on")
	}
	if len(r.Addresses) > 0 {
		problems = append(problems, "has addresses "+strings.Join(r.Addresses, ", "))
	}
	if !r.Promisc {
		problems = append(problems, "not promiscuous")
	}
	if len(problems) > 0 {
		return r, fmt.Errorf("tap port %s after configuration: %s", iface, strings.Join(problems, "; "))
	}
	return r, nil
}

func offloadsOff(iface string) error {
	fs, err := getFeatures(iface)
	if err != nil {
		return err
	}
	var off []string
	for _, o := range tapOffloads {
		off = append(off, o.name)
	}
	return setFeaturesOff(iface, fs, off)
}

// disableIPv6 sets net.ipv6.conf.<iface>.disable_ipv6. A kernel without IPv6 has nothing to send.
func disableIPv6(iface string) error {
	p := filepath.Join(procSys, "net/ipv6/conf", iface, "disable_ipv6")
	if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
		if errors.Is(err, os.ErrNotExist) && !ipv6InKernel() {
			return nil
		}
		return fmt.Errorf("disabling IPv6: %w", err)
	}
	return nil
}

// dropIPv4 turns on strict reverse-path filtering (net.ipv4.conf.<iface>.rp_filter=1). No route
// leads out of a tap port, so every IPv4 packet arriving there fails the check and is dropped
// before any socket sees it. Without it Linux hands a packet for any of the box's addresses that
// arrives on a tap port to a socket listening on every address (gokrazy's web UI) and answers
// through the management port. The capture is unaffected: packet sockets see frames first.
func dropIPv4(iface string) error {
	if err := os.WriteFile(filepath.Join(procSys, "net/ipv4/conf", iface, "rp_filter"), []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("reverse-path filtering: %w", err)
	}
	return nil
}

func ipv6Disabled(iface string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(procSys, "net/ipv6/conf", iface, "disable_ipv6"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !ipv6InKernel() {
			return true, nil
		}
		return false, err
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

func ipv6InKernel() bool {
	_, err := os.Stat(filepath.Join(procSys, "net/ipv6"))
	return err == nil
}

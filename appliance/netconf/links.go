package netconf

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Link is one port's state in links.json.
type Link struct {
	Name    string `json:"name"`
	Role    string `json:"role"` // "management" or "tap"
	Present bool   `json:"present"`
	Up      bool   `json:"up"`
	Carrier bool   `json:"carrier"`
	// SpeedMbps and Duplex as the driver reports them; 0 and "" when it does not (no carrier,
	// virtual NICs).
	SpeedMbps int    `json:"speed_mbps,omitempty"`
	Duplex    string `json:"duplex,omitempty"`
	MTU       int    `json:"mtu,omitempty"`
	MAC       string `json:"mac,omitempty"`

	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	RxDropped uint64 `json:"rx_dropped"`
	RxErrors  uint64 `json:"rx_errors"`
	TxPackets uint64 `json:"tx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`

	Tap   *TapReport `json:"tap,omitempty"` // what configuration did (tap ports)
	Error string     `json:"error,omitempty"`
	// Fix says what an operator should do about Error or a missing carrier.
	Fix string `json:"fix,omitempty"`
}

// sysClassNet is sysfs' network tree; a variable for tests.
var sysClassNet = "/sys/class/net"

// readLink reads a port's state. A missing port is reported, not an error: a USB adapter may be
// unplugged.
func readLink(name, role string) Link {
	l := Link{Name: name, Role: role}
	nl, err := netlink.LinkByName(name)
	if err != nil {
		l.Error = err.Error()
		l.Fix = "check that the adapter is plugged in and its driver is in the kernel (see the hardware profile)"
		return l
	}
	a := nl.Attrs()
	l.Present = true
	l.Up = a.RawFlags&unix.IFF_UP != 0
	l.Carrier = a.RawFlags&unix.IFF_LOWER_UP != 0
	l.MTU = a.MTU
	l.MAC = a.HardwareAddr.String()
	if s := a.Statistics; s != nil {
		l.RxPackets, l.RxBytes, l.RxDropped, l.RxErrors = s.RxPackets, s.RxBytes, s.RxDropped, s.RxErrors
		l.TxPackets, l.TxBytes = s.TxPackets, s.TxBytes
	}
	if l.Carrier {
		if b, err := os.ReadFile(filepath.Join(sysClassNet, name, "speed")); err == nil {
			if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v > 0 {
				l.SpeedMbps = v
			}
		}
		if b, err := os.ReadFile(filepath.Join(sysClassNet, name, "duplex")); err == nil {
			if d := strings.TrimSpace(string(b)); d == "full" || d == "half" {
				l.Duplex = d
			}
		}
	} else if l.Up {
		if role == "tap" {
			l.Fix = "no carrier: check the cable from the network tap or SPAN port to " + name
		} else {
			l.Fix = "no carrier: check the cable to the management network"
		}
	}
	return l
}

// Package config reads the box configuration, the one JSON file an operator edits (through the
// status page or by hand in /perm), and checks it before any daemon acts on it. Each section
// belongs to one daemon; a daemon reads only its own and ignores the others. Errors name the
// exact key and say what would be right, because they are shown to the operator as they are.
//
// Only the network section exists so far (netconfd).
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strings"
)

// Box is the box configuration.
type Box struct {
	Network Network `json:"network"`
}

// Network is netconfd's section. Without Static, the management port uses DHCPv4.
type Network struct {
	Static *Static `json:"static,omitempty"`
}

// Static addressing of the management port; it overrides DHCP. Addresses are written as in
// `ip addr`: "198.51.100.10/24".
type Static struct {
	// Address (IPv4) and its Gateway; with Address set, no DHCPv4 runs.
	Address string `json:"address,omitempty"`
	Gateway string `json:"gateway,omitempty"`
	// Address6 (IPv6) and Gateway6.
	Address6 string `json:"address6,omitempty"`
	Gateway6 string `json:"gateway6,omitempty"`
	// DNS and NTP servers, either family; when set they replace what DHCP offers.
	DNS []string `json:"dns,omitempty"`
	NTP []string `json:"ntp,omitempty"`
}

// StaticNet is a checked Static.
type StaticNet struct {
	Addr, Addr6 netip.Prefix
	GW, GW6     netip.Addr
	DNS, NTP    []netip.Addr
}

// Load reads and checks the box configuration at path. A missing file is not an error: found
// is false and the zero Box means DHCP.
func Load(path string) (b Box, found bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Box{}, false, nil
	}
	if err != nil {
		return Box{}, false, err
	}
	b, err = Parse(data)
	if err != nil {
		return Box{}, true, fmt.Errorf("%s: %w", path, err)
	}
	return b, true, nil
}

// Parse decodes and checks a box configuration. Unknown keys are errors: a misspelt "gatway"
// silently ignored would leave the box unreachable.
func Parse(data []byte) (Box, error) {
	var b Box
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return Box{}, fmt.Errorf("not a valid configuration: %w", err)
	}
	if dec.More() {
		return Box{}, fmt.Errorf("not a valid configuration: more than one JSON value")
	}
	if _, err := b.Network.Check(); err != nil {
		return Box{}, err
	}
	return b, nil
}

// Check validates the network section and returns its static part parsed (nil without one).
// Every problem is reported, one per line, each naming its key.
func (n Network) Check() (*StaticNet, error) {
	if n.Static == nil {
		return nil, nil
	}
	s := n.Static
	var errs []string
	bad := func(key, format string, args ...any) {
		errs = append(errs, "network.static."+key+": "+fmt.Sprintf(format, args...))
	}
	var sn StaticNet
	sn.Addr = prefix(bad, "address", s.Address, false)
	sn.Addr6 = prefix(bad, "address6", s.Address6, true)
	sn.GW = gateway(bad, "gateway", s.Gateway, "address", sn.Addr, s.Address, false)
	sn.GW6 = gateway(bad, "gateway6", s.Gateway6, "address6", sn.Addr6, s.Address6, true)
	sn.DNS = servers(bad, "dns", s.DNS)
	sn.NTP = servers(bad, "ntp", s.NTP)
	if s.Address == "" && s.Address6 == "" && len(s.DNS) == 0 && len(s.NTP) == 0 {
		errs = append(errs, "network.static: empty: give address (and gateway), address6, dns or ntp, or remove network.static for DHCP")
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "\n"))
	}
	return &sn, nil
}

func prefix(bad func(string, string, ...any), key, s string, v6 bool) netip.Prefix {
	if s == "" {
		return netip.Prefix{}
	}
	fam, other, otherKey := "IPv4", "IPv6", "address6"
	if v6 {
		fam, other, otherKey = "IPv6", "IPv4", "address"
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		if a, aerr := netip.ParseAddr(s); aerr == nil {
			ex := 24
			if a.Is6() {
				ex = 64
			}
			bad(key, "%s lacks a prefix length (write %s/%d, with the network's length)", s, s, ex)
		} else {
			bad(key, "%q is not an address with a prefix length (like %s)", s, map[bool]string{false: "198.51.100.10/24", true: "2001:db8::10/64"}[v6])
		}
		return netip.Prefix{}
	}
	a := p.Addr()
	if a.Is4() == v6 || a.Is4In6() {
		bad(key, "%s is %s; put it in network.static.%s", s, other, otherKey)
		return netip.Prefix{}
	}
	switch {
	case a.IsLoopback(), a.IsMulticast(), a.IsUnspecified(), a.IsLinkLocalUnicast(), !a.IsGlobalUnicast():
		bad(key, "%s is not a unicast %s address a host can use", s, fam)
		return netip.Prefix{}
	case !v6 && p.Bits() < 31 && (a == p.Masked().Addr() || a == lastAddr(p)):
		bad(key, "%s is the network or broadcast address of %s; pick a host address", s, p.Masked())
		return netip.Prefix{}
	case p.Bits() == 0:
		bad(key, "%s: a /0 prefix puts the whole Internet on the link", s)
		return netip.Prefix{}
	}
	return p
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := 32 - p.Bits()
	for i := 3; i >= 0 && host > 0; i-- {
		n := min(host, 8)
		b[i] |= byte(1<<n - 1)
		host -= n
	}
	return netip.AddrFrom4(b)
}

func gateway(bad func(string, string, ...any), key, s, addrKey string, p netip.Prefix, addrText string, v6 bool) netip.Addr {
	if s == "" {
		return netip.Addr{}
	}
	g, err := netip.ParseAddr(s)
	if err != nil {
		bad(key, "%q is not an IP address", s)
		return netip.Addr{}
	}
	if g.Is4() == v6 {
		bad(key, "%s is the wrong family for %s", s, key)
		return netip.Addr{}
	}
	if addrText == "" {
		bad(key, "set without network.static.%s (a gateway needs an address on its network)", addrKey)
		return netip.Addr{}
	}
	if !p.IsValid() {
		return netip.Addr{} // the address is already reported
	}
	// An IPv6 router is commonly named by its link-local address, which is on every link.
	if v6 && g.IsLinkLocalUnicast() {
		return g
	}
	if !p.Masked().Contains(g) {
		bad(key, "%s is outside %s (network.static.%s %s)", s, p.Masked(), addrKey, addrText)
		return netip.Addr{}
	}
	if g == p.Addr() {
		bad(key, "%s is the box's own address", s)
		return netip.Addr{}
	}
	return g
}

func servers(bad func(string, string, ...any), key string, ss []string) []netip.Addr {
	var out []netip.Addr
	for i, s := range ss {
		a, err := netip.ParseAddr(s)
		if err != nil || a.IsUnspecified() || a.IsMulticast() {
			bad(fmt.Sprintf("%s[%d]", key, i), "%q is not a server's IP address", s)
			continue
		}
		out = append(out, a)
	}
	return out
}

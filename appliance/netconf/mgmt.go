package netconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"
	"github.com/sie-europe/dnssensor/appliance/config"
	"github.com/sie-europe/dnssensor/appliance/netconf/dhcpc"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Files netconfd writes under its run directory for the other daemons. Each is replaced whole
// (renameio), so a reader sees the old or the new content, never a mix.
const (
	ResolvConfFile = "resolv.conf" // nameserver lines, for uplinkd's name resolution
	NTPFile        = "ntp.json"    // Servers, for the time daemon
	LeaseFile      = "lease.json"  // the management port's addressing, for the status page
	LinksFile      = "links.json"  // every port's state, for the status page
)

// Servers is the content of ntp.json.
type Servers struct {
	Source  string       `json:"source"` // "dhcp4", "static" or "" (none known)
	Servers []netip.Addr `json:"servers"`
}

// Addressing is the content of lease.json.
type Addressing struct {
	Interface string       `json:"interface"`
	Source    string       `json:"source"` // of the IPv4 address: "dhcp4", "static" or "" (none)
	State     string       `json:"state,omitempty"`
	Addr      netip.Prefix `json:"addr,omitzero"`
	Router    netip.Addr   `json:"router,omitzero"`
	Addr6     netip.Prefix `json:"addr6,omitzero"`     // static, or a DHCPv6 lease's /128 (SLAAC addresses are the kernel's: see `ip addr`)
	Source6   string       `json:"source6,omitempty"`  // of Addr6: "dhcp6" or "static"
	Expires6  string       `json:"expires6,omitempty"` // of the DHCPv6 lease, RFC 3339
	Router6   netip.Addr   `json:"router6,omitzero"`
	DNS       []netip.Addr `json:"dns"`
	NTP       []netip.Addr `json:"ntp"`
	Server    netip.Addr   `json:"server,omitzero"`   // the DHCP server
	Expires   string       `json:"expires,omitempty"` // of the DHCP lease, RFC 3339
	// ConfigError is why the box configuration was not applied; what is shown is the
	// configuration still in force.
	ConfigError string `json:"config_error,omitempty"`
}

// mgmtPort applies addressing to the management interface through netlink and publishes it in
// runDir. It is the dhcpc.Applier of the DHCP client and the applier of static configuration;
// static values override the lease's.
type mgmtPort struct {
	iface      string
	runDir     string
	resolvConf string // a second copy of resolv.conf, if set
	logf       func(string, ...any)
	// onPublish, if set, sees every addressing published (the health tree).
	onPublish func(Addressing)
	// addressed, if set, is closed when the port first has an IPv4 address (DHCP or static).
	addressed chan struct{}
	addrOnce  sync.Once

	mu     sync.Mutex
	lease  *dhcpc.Lease
	lease6 *dhcpc.Lease // DHCPv6
	static *config.StaticNet
	ra     []netip.Addr // DNS servers from router advertisements
	cfgErr string
	// dhcpState is where the DHCP client is (renewing and rebinding say the server is not
	// answering, before the address is lost).
	dhcpState dhcpc.State
}

// setDHCPState is the DHCP client's OnState.
func (m *mgmtPort) setDHCPState(s dhcpc.State, _ dhcpc.Lease) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s == m.dhcpState {
		return
	}
	m.dhcpState = s
	if m.lease != nil {
		if err := m.publish(); err != nil {
			m.logf("%v", err)
		}
	}
}

// setRA records the DNS servers routers announce, publishing if they changed.
func (m *mgmtPort) setRA(servers []netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if slices.Equal(servers, m.ra) {
		return nil
	}
	m.ra = servers
	return m.publish()
}

func (m *mgmtPort) link() (netlink.Link, error) {
	l, err := netlink.LinkByName(m.iface)
	if err != nil {
		return nil, fmt.Errorf("management port %s: %w", m.iface, err)
	}
	return l, nil
}

// Apply implements dhcpc.Applier.
func (m *mgmtPort) Apply(prev, cur dhcpc.Lease) error {
	// A renewal that changes nothing but the times leaves the interface alone.
	if !prev.Addr.IsValid() || !prev.Same(cur) {
		if err := m.set(prev.Addr, prev.Router, cur.Addr, cur.Router, unix.RTPROT_DHCP); err != nil {
			return err
		}
		m.logf("management port %s: address %s from DHCP%s", m.iface, cur.Addr, sinceBoot())
		m.markAddressed()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lease = &cur
	// A lease being applied is bound: published so in the same write, since the client says
	// so only after Apply returns (a reader in between saw "init" beside a bound address).
	m.dhcpState = dhcpc.Bound
	return m.publish()
}

// Remove implements dhcpc.Applier.
func (m *mgmtPort) Remove(l dhcpc.Lease) error {
	if err := m.set(l.Addr, l.Router, netip.Prefix{}, netip.Addr{}, 0); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lease = nil
	return m.publish()
}

// v6Applier applies DHCPv6 leases: the /128 address with the lease's lifetimes given to the
// kernel too, so that it removes the address itself when the lease runs out even if netconfd is
// not there to; the on-link prefix and the default route come from router advertisements.
type v6Applier struct{ m *mgmtPort }

// Apply implements dhcpc.Applier. Every renewal replaces the address, to move its lifetimes on.
func (v v6Applier) Apply(prev, cur dhcpc.Lease) error {
	link, err := v.m.link()
	if err != nil {
		return err
	}
	pref := int(min(cur.T2, cur.Lifetime) / time.Second)
	a := &netlink.Addr{IPNet: ipnet(cur.Addr), ValidLft: int(cur.Lifetime / time.Second), PreferedLft: pref}
	if err := netlink.AddrReplace(link, a); err != nil {
		return fmt.Errorf("management port %s: address %s: %w", v.m.iface, cur.Addr, err)
	}
	if prev.Addr.IsValid() && prev.Addr != cur.Addr {
		if err := netlink.AddrDel(link, &netlink.Addr{IPNet: ipnet(prev.Addr)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("management port %s: removing address %s: %w", v.m.iface, prev.Addr, err)
		}
	}
	v.m.mu.Lock()
	defer v.m.mu.Unlock()
	v.m.lease6 = &cur
	return v.m.publish()
}

// Remove implements dhcpc.Applier.
func (v v6Applier) Remove(l dhcpc.Lease) error {
	if err := v.m.set(l.Addr, netip.Addr{}, netip.Prefix{}, netip.Addr{}, 0); err != nil {
		return err
	}
	v.m.mu.Lock()
	defer v.m.mu.Unlock()
	v.m.lease6 = nil
	return v.m.publish()
}

// setStatic moves the interface from the static addressing in force to sn (nil: none).
func (m *mgmtPort) setStatic(sn *config.StaticNet) error {
	m.mu.Lock()
	prev := m.static
	m.mu.Unlock()
	var p, n config.StaticNet
	if prev != nil {
		p = *prev
	}
	if sn != nil {
		n = *sn
	}
	if err := m.set(p.Addr, p.GW, n.Addr, n.GW, unix.RTPROT_STATIC); err != nil {
		return err
	}
	if err := m.set(p.Addr6, p.GW6, n.Addr6, n.GW6, unix.RTPROT_STATIC); err != nil {
		return err
	}
	if n.Addr.IsValid() {
		m.markAddressed()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.static = sn
	return m.publish()
}

func (m *mgmtPort) markAddressed() {
	if m.addressed != nil {
		m.addrOnce.Do(func() { close(m.addressed) })
	}
}

// setConfigError records why the configuration was refused (empty: it was applied).
func (m *mgmtPort) setConfigError(e string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cfgErr = e
	return m.publish()
}

// set moves the interface from (oldAddr, oldGW) to (addr, gw): adds before it removes, so that a
// renewal that changes nothing touches nothing, and replaces rather than adds, so that applying
// twice is applying once.
func (m *mgmtPort) set(oldAddr netip.Prefix, oldGW netip.Addr, addr netip.Prefix, gw netip.Addr, proto netlink.RouteProtocol) error {
	if !oldAddr.IsValid() && !oldGW.IsValid() && !addr.IsValid() && !gw.IsValid() {
		return nil
	}
	link, err := m.link()
	if err != nil {
		return err
	}
	if addr.IsValid() {
		a := &netlink.Addr{IPNet: ipnet(addr)}
		if err := netlink.AddrReplace(link, a); err != nil {
			return fmt.Errorf("management port %s: address %s: %w", m.iface, addr, err)
		}
	}
	if oldAddr.IsValid() && oldAddr != addr {
		if err := netlink.AddrDel(link, &netlink.Addr{IPNet: ipnet(oldAddr)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("management port %s: removing address %s: %w", m.iface, oldAddr, err)
		}
	}
	if gw.IsValid() {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: defaultDst(gw), Gw: gw.AsSlice(), Protocol: proto}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("management port %s: default route via %s: %w", m.iface, gw, err)
		}
	}
	if oldGW.IsValid() && oldGW != gw {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: defaultDst(oldGW), Gw: oldGW.AsSlice()}
		// The kernel drops the route with the address it depended on: ESRCH is success.
		if err := netlink.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("management port %s: removing default route via %s: %w", m.iface, oldGW, err)
		}
	}
	return nil
}

func defaultDst(gw netip.Addr) *net.IPNet {
	if gw.Is4() {
		return &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	}
	return &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// publish writes ntp.json, resolv.conf and lease.json from the lease and the static
// configuration, lease.json last: a reader that sees a state in lease.json finds the other two
// files already agreeing with it. m.mu is held.
func (m *mgmtPort) publish() error {
	a := Addressing{Interface: m.iface, ConfigError: m.cfgErr, DNS: []netip.Addr{}, NTP: []netip.Addr{}}
	src := ""
	if l := m.lease; l != nil {
		a.Source, a.State, a.Addr, a.Router, a.Server = "dhcp4", string(m.dhcpState), l.Addr, l.Router, l.Server
		a.DNS, a.NTP = append(a.DNS, l.DNS...), append(a.NTP, l.NTP...)
		a.Expires = l.Start.Add(l.Lifetime).UTC().Format(time.RFC3339)
		src = "dhcp4"
	}
	dnsSrc, ntpSrc := src, src
	if l := m.lease6; l != nil {
		a.Addr6, a.Source6 = l.Addr, "dhcp6"
		a.Expires6 = l.Start.Add(l.Lifetime).UTC().Format(time.RFC3339)
		if len(l.DNS) > 0 {
			a.DNS = append(a.DNS, l.DNS...)
			dnsSrc = strings.TrimPrefix(dnsSrc+", dhcp6", ", ")
		}
		if len(l.NTP) > 0 {
			a.NTP = append(a.NTP, l.NTP...)
			ntpSrc = strings.TrimPrefix(ntpSrc+", dhcp6", ", ")
		}
	}
	if len(m.ra) > 0 {
		a.DNS = append(a.DNS, m.ra...)
		dnsSrc = strings.TrimPrefix(dnsSrc+", router advertisements", ", ")
	}
	if s := m.static; s != nil {
		if s.Addr.IsValid() {
			a = Addressing{Interface: m.iface, ConfigError: m.cfgErr, DNS: a.DNS, NTP: a.NTP, Source: "static", Addr: s.Addr, Router: s.GW,
				Addr6: a.Addr6, Source6: a.Source6, Expires6: a.Expires6}
		}
		if s.Addr6.IsValid() {
			a.Addr6, a.Router6, a.Source6, a.Expires6 = s.Addr6, s.GW6, "static", ""
		}
		if len(s.DNS) > 0 {
			a.DNS, dnsSrc = s.DNS, "static"
		}
		if len(s.NTP) > 0 {
			a.NTP, ntpSrc = s.NTP, "static"
		}
	}
	var rc bytes.Buffer
	fmt.Fprintf(&rc, "# written by netconfd (%s)\n", orNone(dnsSrc))
	for _, d := range a.DNS {
		fmt.Fprintf(&rc, "nameserver %s\n", d)
	}
	if len(a.NTP) == 0 {
		ntpSrc = ""
	}
	if err := writeJSON(filepath.Join(m.runDir, NTPFile), Servers{Source: ntpSrc, Servers: a.NTP}); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(m.runDir, ResolvConfFile), rc.Bytes()); err != nil {
		return err
	}
	if m.resolvConf != "" {
		if err := writeFile(m.resolvConf, rc.Bytes()); err != nil {
			return err
		}
	}
	if m.onPublish != nil {
		m.onPublish(a)
	}
	return writeJSON(filepath.Join(m.runDir, LeaseFile), a)
}

func orNone(s string) string {
	if s == "" {
		return "no servers known"
	}
	return s
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(path, append(b, '\n'))
}

func writeFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := renameio.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

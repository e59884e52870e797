package dhcpc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/dhcpv6/nclient6"
	"github.com/insomniacslk/dhcp/iana"
)

// NClient6 is the DHCPv6 Exchanger (RFC 8415, one non-temporary address): nclient6 on a UDP
// socket bound to the interface's link-local address.
//
// The client identifies itself with a DUID-LL made of the interface's MAC address, not the
// DUID-LLT nclient6 would make from the current time: the box then has the same identity, and
// usually the same address, after every boot, without keeping state in /perm (RFC 8415 §11.4
// allows DUID-LL for a device whose link-layer address cannot be removed; a replaced USB adapter
// is a new identity, as it is a new MAC for DHCPv4). The IAID is the MAC's last four octets.
type NClient6 struct {
	c     *nclient6.Client
	duid  dhcpv6.DUID
	iaid  [4]byte
	clock Clock
}

// NewNClient6 opens the client's socket on iface. It fails while the interface has no usable
// link-local address (none yet, or still tentative): the caller tries again later.
func NewNClient6(iface string, clock Clock) (*NClient6, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("dhcp6 on %s: %w", iface, err)
	}
	if len(ifi.HardwareAddr) < 4 {
		return nil, fmt.Errorf("dhcp6 on %s: no MAC address to make a client identifier from", iface)
	}
	c, err := nclient6.New(iface, nclient6.WithTimeout(2*time.Second), nclient6.WithRetry(4))
	if err != nil {
		return nil, fmt.Errorf("dhcp6 on %s: %w", iface, err)
	}
	if clock == nil {
		clock = RealClock
	}
	n := &NClient6{c: c, clock: clock,
		duid: &dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: ifi.HardwareAddr}}
	copy(n.iaid[:], ifi.HardwareAddr[len(ifi.HardwareAddr)-4:])
	return n, nil
}

// DUID is the client identifier this client sends.
func (n *NClient6) DUID() dhcpv6.DUID { return n.duid }

// Close closes the socket.
func (n *NClient6) Close() error { return n.c.Close() }

func (n *NClient6) mods() []dhcpv6.Modifier {
	return []dhcpv6.Modifier{
		dhcpv6.WithClientID(n.duid),
		dhcpv6.WithIAID(n.iaid),
		dhcpv6.WithRequestedOptions(dhcpv6.OptionDNSRecursiveNameServer, dhcpv6.OptionNTPServer),
	}
}

// Acquire implements Exchanger: SOLICIT, ADVERTISE, REQUEST, REPLY.
func (n *NClient6) Acquire(ctx context.Context) (Lease, error) {
	adv, err := n.c.Solicit(ctx, n.mods()...)
	if err != nil {
		return Lease{}, err
	}
	if err := status(adv, adv.Options.OneIANA()); err != nil {
		return Lease{}, fmt.Errorf("advertise: %w", err)
	}
	reply, err := n.c.Request(ctx, adv, n.mods()...)
	if err != nil {
		return Lease{}, err
	}
	return fromReply(reply, n.clock.Now())
}

// extend sends RENEW (with the server's identifier) or REBIND (to any server) for l's address.
// Both go to the all-servers multicast address: without a Server Unicast option a client may not
// send to the server's own address (RFC 8415 §18.2.4).
func (n *NClient6) extend(ctx context.Context, typ dhcpv6.MessageType, l Lease) (Lease, error) {
	raw, ok := l.Raw.(*dhcpv6.Message)
	if !ok {
		return Lease{}, fmt.Errorf("lease %s has no REPLY to renew", l.Addr)
	}
	msg, err := n.request(typ, raw, typ == dhcpv6.MessageTypeRenew)
	if err != nil {
		return Lease{}, err
	}
	reply, err := n.c.SendAndRead(ctx, nclient6.AllDHCPRelayAgentsAndServers, msg, nclient6.IsMessageType(dhcpv6.MessageTypeReply))
	if err != nil {
		return Lease{}, err
	}
	return fromReply(reply, n.clock.Now())
}

// request builds a message about the address of an earlier REPLY: its IA_NA, and the server's
// identifier when withServer.
func (n *NClient6) request(typ dhcpv6.MessageType, raw *dhcpv6.Message, withServer bool) (*dhcpv6.Message, error) {
	ia := raw.Options.OneIANA()
	if ia == nil {
		return nil, fmt.Errorf("the lease's REPLY has no IA_NA")
	}
	mods := append(n.mods(), dhcpv6.WithOption(dhcpv6.OptElapsedTime(0)), dhcpv6.WithOption(&dhcpv6.OptIANA{IaId: ia.IaId, Options: ia.Options}))
	if withServer {
		sid := raw.Options.ServerID()
		if sid == nil {
			return nil, fmt.Errorf("the lease's REPLY has no server identifier")
		}
		mods = append(mods, dhcpv6.WithServerID(sid))
	}
	msg, err := dhcpv6.NewMessage(mods...)
	if err != nil {
		return nil, err
	}
	msg.MessageType = typ
	return msg, nil
}

// Renew implements Exchanger.
func (n *NClient6) Renew(ctx context.Context, l Lease) (Lease, error) {
	return n.extend(ctx, dhcpv6.MessageTypeRenew, l)
}

// Rebind implements Exchanger.
func (n *NClient6) Rebind(ctx context.Context, l Lease) (Lease, error) {
	return n.extend(ctx, dhcpv6.MessageTypeRebind, l)
}

// Release implements Exchanger: RELEASE, waiting briefly for the server's REPLY.
func (n *NClient6) Release(l Lease) error {
	raw, ok := l.Raw.(*dhcpv6.Message)
	if !ok {
		return fmt.Errorf("lease %s has no REPLY to release", l.Addr)
	}
	msg, err := n.request(dhcpv6.MessageTypeRelease, raw, true)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = n.c.SendAndRead(ctx, nclient6.AllDHCPRelayAgentsAndServers, msg, nclient6.IsMessageType(dhcpv6.MessageTypeReply))
	return err
}

// status is the error a message's status codes (top level and IA_NA) stand for, nil for success.
// NoBinding means the server does not know the address (any more): ErrNAK.
func status(m *dhcpv6.Message, ia *dhcpv6.OptIANA) error {
	for _, s := range []*dhcpv6.OptStatusCode{m.Options.Status(), iaStatus(ia)} {
		if s == nil || s.StatusCode == iana.StatusSuccess {
			continue
		}
		if s.StatusCode == iana.StatusNoBinding {
			return fmt.Errorf("%w: %s %q", ErrNAK, s.StatusCode, s.StatusMessage)
		}
		return fmt.Errorf("server says %s %q", s.StatusCode, s.StatusMessage)
	}
	return nil
}

func iaStatus(ia *dhcpv6.OptIANA) *dhcpv6.OptStatusCode {
	if ia == nil {
		return nil
	}
	return ia.Options.Status()
}

// fromReply reads a lease from a REPLY. T1 and T2 of 0 leave the times to the client: half and
// four fifths of the preferred lifetime (RFC 8415 §21.4); times out of order are replaced the
// same way, so that the address never lapses without a rebinding attempt.
func fromReply(m *dhcpv6.Message, now time.Time) (Lease, error) {
	ia := m.Options.OneIANA()
	if err := status(m, ia); err != nil {
		return Lease{}, err
	}
	if ia == nil {
		return Lease{}, errors.New("REPLY has no IA_NA")
	}
	a := ia.Options.OneAddress()
	if a == nil {
		return Lease{}, errors.New("REPLY's IA_NA has no address")
	}
	if s := a.Options.Status(); s != nil && s.StatusCode != iana.StatusSuccess {
		return Lease{}, fmt.Errorf("address %v: server says %s", a.IPv6Addr, s.StatusCode)
	}
	ip, ok := netip.AddrFromSlice(a.IPv6Addr.To16())
	if !ok || ip.Is4In6() || !ip.IsGlobalUnicast() {
		return Lease{}, fmt.Errorf("REPLY offers no usable address (%v)", a.IPv6Addr)
	}
	if a.ValidLifetime <= 0 {
		// A valid lifetime of 0 is the server taking the address back.
		return Lease{}, fmt.Errorf("%w: address %s with a valid lifetime of 0", ErrNAK, ip)
	}
	pref := min(a.PreferredLifetime, a.ValidLifetime)
	l := Lease{
		Addr:     netip.PrefixFrom(ip, 128),
		Start:    now,
		Lifetime: a.ValidLifetime,
		T1:       ia.T1,
		T2:       ia.T2,
		Raw:      m,
	}
	if !(0 < l.T1 && l.T1 < l.T2 && l.T2 < l.Lifetime) {
		l.T1, l.T2 = pref/2, pref*4/5
		if l.T1 <= 0 {
			l.T1, l.T2 = l.Lifetime/2, l.Lifetime*4/5
		}
	}
	l.DNS = addrs6(m.Options.DNS())
	l.NTP = addrs6(m.Options.NTPServers())
	return l, nil
}

func addrs6(ips []net.IP) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		if a, ok := netip.AddrFromSlice(ip.To16()); ok && !a.Is4In6() && a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() {
			out = append(out, a)
		}
	}
	return out
}

package dhcpc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"golang.org/x/sys/unix"
)

// NClient4 is the Exchanger on the wire: insomniacslk/dhcp's nclient4 on a raw socket bound to the
// interface, which works before the interface has an address.
type NClient4 struct {
	c        *nclient4.Client
	iface    string
	hostname string
	clock    Clock
}

// NewNClient4 opens the raw socket on iface. hostname (option 12) is sent in every request so that
// the network's DHCP server can register the box under its name; empty sends none.
func NewNClient4(iface, hostname string, clock Clock) (*NClient4, error) {
	c, err := nclient4.New(iface, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(4))
	if err != nil {
		return nil, fmt.Errorf("dhcp4 on %s: %w", iface, err)
	}
	if clock == nil {
		clock = RealClock
	}
	return &NClient4{c: c, iface: iface, hostname: hostname, clock: clock}, nil
}

// Close closes the socket.
func (n *NClient4) Close() error { return n.c.Close() }

func (n *NClient4) mods() []dhcpv4.Modifier {
	m := []dhcpv4.Modifier{dhcpv4.WithRequestedOptions(
		dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer,
		dhcpv4.OptionNTPServers, dhcpv4.OptionIPAddressLeaseTime,
		dhcpv4.OptionRenewTimeValue, dhcpv4.OptionRebindingTimeValue)}
	if n.hostname != "" {
		m = append(m, dhcpv4.WithOption(dhcpv4.OptHostName(n.hostname)))
	}
	return m
}

// Acquire implements Exchanger.
func (n *NClient4) Acquire(ctx context.Context) (Lease, error) {
	l, err := n.c.Request(ctx, n.mods()...)
	if err != nil {
		var nak *nclient4.ErrNak
		if errors.As(err, &nak) {
			return Lease{}, fmt.Errorf("%w: %v", ErrNAK, err)
		}
		return Lease{}, err
	}
	return fromACK(l, n.clock.Now())
}

// unicast opens a client on an ordinary UDP socket on port 68 of the interface. Messages to the
// server's own address must come from the leased address: the raw socket sends from 0.0.0.0,
// which a server's kernel drops as a martian unless the destination is broadcast (seen with
// dnsmasq: a RELEASE from the raw socket never reached it). The socket is bound to the
// interface, not to the leased address, because a server broadcasts its DHCPNAK (RFC 2131
// §4.3.2), and a socket bound to one address does not receive broadcasts (seen with dnsmasq: the
// NAK of a renewal was never read, and the stale address was kept until T2).
func (n *NClient4) unicast(ctx context.Context, l Lease) (*nclient4.Client, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), n.iface) }); err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", fmt.Sprintf(":%d", nclient4.ClientPort))
	if err != nil {
		return nil, fmt.Errorf("DHCP client socket on %s: %w", n.iface, err)
	}
	c, err := nclient4.NewWithConn(pc, n.c.InterfaceAddr(), nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(4),
		nclient4.WithServerAddr(&net.UDPAddr{IP: l.Server.AsSlice(), Port: nclient4.ServerPort}))
	if err != nil {
		pc.Close()
		return nil, err
	}
	return c, nil
}

// Renew implements Exchanger: REQUEST unicast to the server that granted the lease.
func (n *NClient4) Renew(ctx context.Context, l Lease) (Lease, error) {
	c, err := n.unicast(ctx, l)
	if err != nil {
		return Lease{}, err
	}
	defer c.Close()
	return n.extend(ctx, c, l, &net.UDPAddr{IP: l.Server.AsSlice(), Port: nclient4.ServerPort})
}

// Rebind implements Exchanger: the same REQUEST, broadcast to any server.
func (n *NClient4) Rebind(ctx context.Context, l Lease) (Lease, error) {
	return n.extend(ctx, n.c, l, &net.UDPAddr{IP: net.IPv4bcast, Port: nclient4.ServerPort})
}

func (n *NClient4) extend(ctx context.Context, c *nclient4.Client, l Lease, to *net.UDPAddr) (Lease, error) {
	raw, ok := l.Raw.(*nclient4.Lease)
	if !ok {
		return Lease{}, fmt.Errorf("lease %s has no ACK to renew", l.Addr)
	}
	req, err := dhcpv4.NewRenewFromAck(raw.ACK, append(n.mods(), dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(nclient4.MaxMessageSize)))...)
	if err != nil {
		return Lease{}, err
	}
	resp, err := c.SendAndRead(ctx, to, req, nclient4.IsMessageType(dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak))
	if err != nil {
		return Lease{}, err
	}
	if resp.MessageType() == dhcpv4.MessageTypeNak {
		return Lease{}, fmt.Errorf("%w from %v: %s", ErrNAK, resp.ServerIdentifier(), resp.Message())
	}
	return fromACK(&nclient4.Lease{Offer: raw.Offer, ACK: resp, CreationTime: time.Now()}, n.clock.Now())
}

// Release implements Exchanger.
func (n *NClient4) Release(l Lease) error {
	raw, ok := l.Raw.(*nclient4.Lease)
	if !ok {
		return fmt.Errorf("lease %s has no ACK to release", l.Addr)
	}
	c, err := n.unicast(context.Background(), l)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Release(raw)
}

// fromACK reads a lease from the server's ACK. Times a server leaves out take RFC 2131's defaults
// (T1 = half, T2 = 7/8 of the lease); times out of order are replaced by them too, since a T2
// beyond expiry would let the address lapse without ever rebinding.
func fromACK(raw *nclient4.Lease, now time.Time) (Lease, error) {
	ack := raw.ACK
	ip, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !ok || !ip.IsGlobalUnicast() {
		return Lease{}, fmt.Errorf("ACK offers no usable address (yiaddr %v)", ack.YourIPAddr)
	}
	mask := ack.SubnetMask()
	if mask == nil {
		mask = ack.YourIPAddr.DefaultMask()
	}
	bits, _ := mask.Size()
	if bits == 0 {
		return Lease{}, fmt.Errorf("ACK for %s has a non-contiguous subnet mask %v", ip, mask)
	}
	life := ack.IPAddressLeaseTime(0)
	if life <= 0 {
		return Lease{}, fmt.Errorf("ACK for %s has no lease time", ip)
	}
	l := Lease{
		Addr:     netip.PrefixFrom(ip, bits),
		Start:    now,
		Lifetime: life,
		T1:       ack.IPAddressRenewalTime(life / 2),
		T2:       ack.IPAddressRebindingTime(life * 7 / 8),
		Raw:      raw,
	}
	if !(0 < l.T1 && l.T1 < l.T2 && l.T2 < l.Lifetime) {
		l.T1, l.T2 = life/2, life*7/8
	}
	l.Server, _ = netip.AddrFromSlice(ack.ServerIdentifier().To4())
	if rs := ack.Router(); len(rs) > 0 {
		l.Router, _ = netip.AddrFromSlice(rs[0].To4())
	}
	l.DNS = addrs(ack.DNS())
	l.NTP = addrs(ack.NTPServers())
	return l, nil
}

func addrs(ips []net.IP) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		if a, ok := netip.AddrFromSlice(ip.To4()); ok && a.IsValid() && !a.IsUnspecified() {
			out = append(out, a)
		}
	}
	return out
}

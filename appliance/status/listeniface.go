package status

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// IfaceListener serves on the addresses of one interface as they come and go (-listen-iface). The
// management port's address is not known when statusd starts: DHCP or SLAAC gives it later,
// renumbering changes it, a lease that expires takes it away. Each address gets its own listener,
// bound to the interface (SO_BINDTODEVICE) as well as to the address, so that a request for that
// address arriving on any other port, a tap port above all, finds no socket: Linux otherwise
// accepts a packet for any local address on any interface.
type IfaceListener struct {
	Iface string
	Port  uint16
	// Serve serves one listener until it is closed; it runs in its own goroutine.
	Serve func(net.Listener)
	Logf  func(format string, a ...any)
	// Resync is how often the addresses are read again besides netlink's notifications, which
	// are lost when the socket's buffer overflows and do not cover the interface's flags.
	Resync time.Duration

	lns     map[netip.Addr]net.Listener
	refused string // the reason last logged for serving nothing, so a state is logged once
	failed  map[netip.Addr]string
}

// ParseListenIface reads -listen-iface IFACE:PORT.
func ParseListenIface(s string) (iface string, port uint16, err error) {
	iface, p, ok := strings.Cut(s, ":")
	n, perr := strconv.ParseUint(p, 10, 16)
	if !ok || iface == "" || strings.ContainsAny(iface, "/ %") || len(iface) >= unix.IFNAMSIZ || perr != nil || n == 0 {
		return "", 0, fmt.Errorf("-listen-iface %q: want IFACE:PORT naming the management interface, e.g. eth0:8080", s)
	}
	return iface, uint16(n), nil
}

// Run follows the interface's addresses until ctx ends, then closes every listener it opened.
func (l *IfaceListener) Run(ctx context.Context) error {
	if l.Resync <= 0 {
		l.Resync = 5 * time.Second
	}
	l.lns = map[netip.Addr]net.Listener{}
	l.failed = map[netip.Addr]string{}
	defer l.closeAll()
	updates := make(chan netlink.AddrUpdate, 64)
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(done)
	if err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{
		ErrorCallback: func(err error) { l.subscriptionError(done, "address", err) },
	}); err != nil {
		return fmt.Errorf("-listen-iface %s: following its addresses: %w", l.Iface, err)
	}
	// Link notifications: the interface appearing (a USB adapter), its flags changing.
	links := make(chan netlink.LinkUpdate, 64)
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) { l.subscriptionError(done, "link", err) },
	}); err != nil {
		return fmt.Errorf("-listen-iface %s: following its link: %w", l.Iface, err)
	}
	// The subscriptions' goroutines send until done is closed; drain so they never block there.
	wake := make(chan struct{}, 1)
	poke := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		for range updates {
			poke()
		}
	}()
	go func() {
		defer wg.Done()
		for range links {
			poke()
		}
	}()
	tick := time.NewTicker(l.Resync)
	defer tick.Stop()
	for {
		l.reconcile(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-tick.C:
		}
	}
}

// subscriptionError logs a lost notification socket, unless it was closed because Run ends.
func (l *IfaceListener) subscriptionError(done <-chan struct{}, what string, err error) {
	select {
	case <-done:
	default:
		l.Logf("statusd: -listen-iface %s: %s notifications: %v (reading them every %v instead)", l.Iface, what, err, l.Resync)
	}
}

// wanted returns the addresses to serve on, or why there are none.
func (l *IfaceListener) wanted() (map[netip.Addr]bool, string) {
	link, err := netlink.LinkByName(l.Iface)
	if err != nil {
		return nil, fmt.Sprintf("interface %s not present (%v)", l.Iface, err)
	}
	if link.Attrs().RawFlags&unix.IFF_NOARP != 0 {
		// netconfd makes every tap port NOARP, and a management port cannot work without ARP.
		return nil, fmt.Sprintf("refusing %s: it is a silent tap port (NOARP); -listen-iface must name the management interface", l.Iface)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Sprintf("reading the addresses of %s: %v", l.Iface, err)
	}
	want := map[netip.Addr]bool{}
	for _, a := range addrs {
		// A tentative address (IPv6 duplicate address detection still running) cannot be
		// bound yet; its notification comes when DAD ends.
		if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.Is6() && ip.IsLinkLocalUnicast() {
			ip = ip.WithZone(l.Iface)
		}
		want[ip] = true
	}
	if len(want) == 0 {
		return nil, fmt.Sprintf("%s has no address yet", l.Iface)
	}
	return want, ""
}

func (l *IfaceListener) reconcile(ctx context.Context) {
	want, why := l.wanted()
	if why != l.refused && why != "" {
		l.Logf("statusd: not serving on %s: %s", l.Iface, why)
	}
	l.refused = why
	for ip, ln := range l.lns {
		if !want[ip] {
			ln.Close()
			delete(l.lns, ip)
			l.Logf("statusd: no longer serving on %s (address gone from %s)", ln.Addr(), l.Iface)
		}
	}
	for ip := range l.failed {
		if !want[ip] {
			delete(l.failed, ip)
		}
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) { err = unix.BindToDevice(int(fd), l.Iface) }); cerr != nil {
			return cerr
		}
		if err != nil {
			return fmt.Errorf("binding to %s: %w", l.Iface, err)
		}
		return nil
	}}
	ips := make([]netip.Addr, 0, len(want))
	for ip := range want {
		ips = append(ips, ip)
	}
	sort.Slice(ips, func(i, j int) bool { return ips[i].Less(ips[j]) })
	for _, ip := range ips {
		if l.lns[ip] != nil {
			continue
		}
		ln, err := lc.Listen(ctx, "tcp", netip.AddrPortFrom(ip, l.Port).String())
		if err != nil {
			// Logged once per address and error, retried at every change and resync.
			if msg := err.Error(); l.failed[ip] != msg {
				l.failed[ip] = msg
				l.Logf("statusd: -listen-iface %s: %v", l.Iface, err)
			}
			continue
		}
		delete(l.failed, ip)
		l.lns[ip] = ln
		l.Logf("statusd: serving on http://%s/ (%s)", ln.Addr(), l.Iface)
		go l.Serve(ln)
	}
}

func (l *IfaceListener) closeAll() {
	for ip, ln := range l.lns {
		ln.Close()
		delete(l.lns, ip)
	}
}

// serveIgnoringClose is the Serve of an IfaceListener: a listener closed because its address
// went away is not an error.
func serveIgnoringClose(srv interface{ Serve(net.Listener) error }, logf func(string, ...any)) func(net.Listener) {
	return func(ln net.Listener) {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, http.ErrServerClosed) {
			logf("statusd: serving on %s: %v", ln.Addr(), err)
		}
	}
}

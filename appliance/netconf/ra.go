package netconf

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// IPv6 on the management port is the kernel's SLAAC: it solicits routers, forms addresses from
// the prefixes they advertise and installs the default route. What it does not do is use the
// DNS servers that routers announce (RDNSS, RFC 8106), or ask DHCPv6 for an address when a
// router says addresses are managed (the M flag): it hands both to user space. netconfd reads
// router advertisements itself for that, so that an IPv6-only management network still gives
// uplinkd a resolver, and a DHCPv6-managed one an address.

// mgmtIPv6 sets the management port's IPv6 behaviour: SLAAC, unless a static IPv6 address is
// configured (then the address is the operator's and router advertisements are ignored).
func mgmtIPv6(iface string, slaac bool) error {
	v := "1\n"
	if !slaac {
		v = "0\n"
	}
	for _, kv := range [][2]string{{"disable_ipv6", "0\n"}, {"accept_ra", v}, {"autoconf", v}} {
		p := filepath.Join(procSys, "net/ipv6/conf", iface, kv[0])
		if err := os.WriteFile(p, []byte(kv[1]), 0o644); err != nil {
			if !ipv6InKernel() {
				return nil
			}
			return fmt.Errorf("management port %s: %s: %w", iface, kv[0], err)
		}
	}
	return nil
}

// rdnss is the set of DNS servers announced by routers, each until its lifetime ends.
type rdnss struct {
	mu      sync.Mutex
	expires map[netip.Addr]time.Time
}

// update records the servers of one advertisement received at now.
func (r *rdnss) update(now time.Time, servers []rdnssOption) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.expires == nil {
		r.expires = map[netip.Addr]time.Time{}
	}
	for _, o := range servers {
		for _, a := range o.servers {
			if o.lifetime == 0 {
				delete(r.expires, a)
				continue
			}
			// Cap the number of servers: an attacker on the management link could otherwise
			// grow the set without bound (resolv.conf uses three).
			if _, ok := r.expires[a]; !ok && len(r.expires) >= 8 {
				continue
			}
			exp := now.Add(o.lifetime)
			if o.lifetime == infinite {
				exp = time.Time{}
			}
			r.expires[a] = exp
		}
	}
}

// current returns the servers valid at now, sorted.
func (r *rdnss) current(now time.Time) []netip.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []netip.Addr
	for a, exp := range r.expires {
		if !exp.IsZero() && !now.Before(exp) {
			delete(r.expires, a)
			continue
		}
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

const infinite = time.Duration(0xffffffff) * time.Second

type rdnssOption struct {
	lifetime time.Duration
	servers  []netip.Addr
}

// parseRA returns the RDNSS options of a router advertisement (the ICMPv6 message, from its type
// octet). A malformed message is an error and nothing of it is used.
func parseRA(b []byte) ([]rdnssOption, error) {
	const hdr = 16 // type, code, checksum, hop limit, flags, router lifetime, reachable, retrans
	if len(b) < hdr || b[0] != byte(ipv6.ICMPTypeRouterAdvertisement) || b[1] != 0 {
		return nil, fmt.Errorf("not a router advertisement")
	}
	var out []rdnssOption
	for opts := b[hdr:]; len(opts) > 0; {
		if len(opts) < 2 || opts[1] == 0 || len(opts) < int(opts[1])*8 {
			return nil, fmt.Errorf("truncated option")
		}
		o := opts[:int(opts[1])*8]
		opts = opts[len(o):]
		if o[0] != 25 { // RDNSS
			continue
		}
		// type, length, reserved (2), lifetime (4), then 16 octets per server; at least one.
		if len(o) < 24 || (len(o)-8)%16 != 0 {
			return nil, fmt.Errorf("RDNSS option of %d octets", len(o))
		}
		ro := rdnssOption{lifetime: time.Duration(binary.BigEndian.Uint32(o[4:8])) * time.Second}
		for s := o[8:]; len(s) >= 16; s = s[16:] {
			a := netip.AddrFrom16([16]byte(s[:16]))
			if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
				continue
			}
			ro.servers = append(ro.servers, a)
		}
		out = append(out, ro)
	}
	return out, nil
}

// raManaged reports the M flag of a router advertisement that parseRA accepted: addresses are
// available by DHCPv6 (RFC 4861 §4.2).
func raManaged(b []byte) bool { return b[5]&0x80 != 0 }

// listenRA reads router advertisements on iface until ctx ends, recording their DNS servers in
// r; changed is called (from this goroutine) after each advertisement that carried any, and
// managed after each one with the M flag.
func listenRA(ctx context.Context, iface string, r *rdnss, logf func(string, ...any), changed, managed func()) error {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), iface) }); err != nil {
			return err
		}
		return serr
	}}
	c, err := lc.ListenPacket(ctx, "ip6:ipv6-icmp", "::")
	if err != nil {
		return fmt.Errorf("router advertisements on %s: %w", iface, err)
	}
	defer c.Close()
	pc := ipv6.NewPacketConn(c)
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeRouterAdvertisement)
	if err := pc.SetICMPFilter(&f); err != nil {
		return err
	}
	if err := pc.SetControlMessage(ipv6.FlagHopLimit, true); err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		c.Close()
	}()
	buf := make([]byte, 1500)
	bad := 0
	for {
		n, cm, src, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("router advertisements on %s: %w", iface, err)
		}
		// RFC 4861 §6.1.2: a valid advertisement comes from a link-local address with hop limit
		// 255, so it cannot have been forwarded from off the link.
		ip, _ := src.(*net.IPAddr)
		if cm == nil || cm.HopLimit != 255 || ip == nil || !ip.IP.IsLinkLocalUnicast() {
			bad++
			continue
		}
		opts, err := parseRA(buf[:n])
		if err != nil {
			bad++
			// Counted, and said once in a while rather than per packet.
			if bad&(bad-1) == 0 {
				logf("router advertisement from %v on %s: %v (%d ignored so far)", ip, iface, err, bad)
			}
			continue
		}
		if len(opts) > 0 {
			r.update(time.Now(), opts)
			changed()
		}
		if raManaged(buf[:n]) {
			managed()
		}
	}
}

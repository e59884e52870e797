package dhcpc

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"
)

func reply6(t *testing.T, t1, t2, pref, valid time.Duration, st *dhcpv6.OptStatusCode, extra ...dhcpv6.Modifier) *dhcpv6.Message {
	t.Helper()
	ia := &dhcpv6.OptIANA{IaId: [4]byte{1, 2, 3, 4}, T1: t1, T2: t2}
	ia.Options.Add(&dhcpv6.OptIAAddress{IPv6Addr: net.ParseIP("2001:db8::42"), PreferredLifetime: pref, ValidLifetime: valid})
	if st != nil {
		ia.Options.Add(st)
	}
	m, err := dhcpv6.NewMessage(append([]dhcpv6.Modifier{dhcpv6.WithOption(ia), dhcpv6.WithDNS(net.ParseIP("2001:db8::53"), net.ParseIP("192.0.2.1"))}, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	m.MessageType = dhcpv6.MessageTypeReply
	return m
}

// TestFromReply: times as the server gives them, RFC 8415's defaults when it leaves them to the
// client (or sends them out of order), and the answers that take the address away.
func TestFromReply(t *testing.T) {
	now := time.Unix(1e9, 0)
	for _, c := range []struct {
		name         string
		m            *dhcpv6.Message
		t1, t2, life time.Duration
		nak, fail    bool
	}{
		{name: "server's times", m: reply6(t, 100*time.Second, 160*time.Second, 200*time.Second, 300*time.Second, nil), t1: 100 * time.Second, t2: 160 * time.Second, life: 300 * time.Second},
		{name: "left to the client", m: reply6(t, 0, 0, 200*time.Second, 300*time.Second, nil), t1: 100 * time.Second, t2: 160 * time.Second, life: 300 * time.Second},
		{name: "T2 beyond the lifetime", m: reply6(t, 100*time.Second, 400*time.Second, 200*time.Second, 300*time.Second, nil), t1: 100 * time.Second, t2: 160 * time.Second, life: 300 * time.Second},
		{name: "valid lifetime 0", m: reply6(t, 0, 0, 0, 0, nil), nak: true},
		{name: "NoBinding", m: reply6(t, 0, 0, 200*time.Second, 300*time.Second, &dhcpv6.OptStatusCode{StatusCode: iana.StatusNoBinding}), nak: true},
		{name: "NoAddrsAvail", m: reply6(t, 0, 0, 200*time.Second, 300*time.Second, &dhcpv6.OptStatusCode{StatusCode: iana.StatusNoAddrsAvail}), fail: true},
	} {
		l, err := fromReply(c.m, now)
		switch {
		case c.nak:
			if !errors.Is(err, ErrNAK) {
				t.Errorf("%s: err %v, want ErrNAK", c.name, err)
			}
		case c.fail:
			if err == nil || errors.Is(err, ErrNAK) {
				t.Errorf("%s: err %v, want a failure other than ErrNAK", c.name, err)
			}
		case err != nil:
			t.Errorf("%s: %v", c.name, err)
		default:
			if l.Addr.String() != "2001:db8::42/128" || l.T1 != c.t1 || l.T2 != c.t2 || l.Lifetime != c.life || !l.Start.Equal(now) {
				t.Errorf("%s: lease %s T1 %v T2 %v life %v, want T1 %v T2 %v life %v", c.name, l.Addr, l.T1, l.T2, l.Lifetime, c.t1, c.t2, c.life)
			}
			if len(l.DNS) != 1 || l.DNS[0].String() != "2001:db8::53" {
				t.Errorf("%s: DNS %v, want only 2001:db8::53 (an IPv4 address is not an IPv6 server)", c.name, l.DNS)
			}
		}
	}
}

package app

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/sie-europe/dnssensor/internal/pktbuild"
)

// TestHostileClientTrafficEndToEnd runs client traffic dressed up as the resolver's own through
// sensord (capture file in, NMSG and JSON out) under the flag combinations operators use, and
// checks the bytes that would leave the box: no client address anywhere, while the resolver's
// own transaction is still recorded.
func TestHostileClientTrafficEndToEnd(t *testing.T) {
	type fam struct{ res, auth, client netip.Addr }
	fams := []fam{
		{netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("10.53.0.7")},
		{netip.MustParseAddr("2001:db8:1::2"), netip.MustParseAddr("2001:db8:2::10"), netip.MustParseAddr("fd00:53::7")},
	}
	m := func(id uint16, name string, resp bool) []byte {
		d := new(dns.Msg)
		d.SetQuestion(name, dns.TypeA)
		d.Id, d.Response, d.RecursionDesired = id, resp, false
		b, err := d.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ap := netip.AddrPortFrom
	var pkts [][]byte
	for _, f := range fams {
		resp := pktbuild.AppendUDP(nil, ap(f.res, 53), ap(f.client, 5353), m(3, "laptop.example.", true))
		pkts = append(pkts,
			// the resolver's own transaction
			pktbuild.AppendUDP(nil, ap(f.res, 40000), ap(f.auth, 53), m(1, "ok.example.", false)),
			pktbuild.AppendUDP(nil, ap(f.auth, 53), ap(f.res, 40000), m(1, "ok.example.", true)),
			// a client's query and the answer
			pktbuild.AppendUDP(nil, ap(f.client, 41000), ap(f.res, 53), m(2, "laptop.example.", false)),
			pktbuild.AppendUDP(nil, ap(f.res, 53), ap(f.client, 41000), m(2, "laptop.example.", true)),
			// QR=1 to the resolver's port 53; QR=0 from it
			pktbuild.AppendUDP(nil, ap(f.client, 41001), ap(f.res, 53), m(4, "forged.example.", true)),
			pktbuild.AppendUDP(nil, ap(f.res, 53), ap(f.client, 41002), m(5, "laptop.example.", false)),
			// the known client answers from port 53 to a resolver port
			pktbuild.AppendUDP(nil, ap(f.client, 53), ap(f.res, 40001), m(6, "forged.example.", true)),
			// client TCP with a forged QR=1 message
			pktbuild.AppendTCP(nil, ap(f.client, 41003), ap(f.res, 53), 1, m(7, "forged.example.", true)),
			// the resolver's answer to a client's port 5353, and the client's ICMP error about it
			resp, icmpAbout(f.client, f.res, resp),
			// mDNS
			pktbuild.AppendUDP(nil, ap(f.client, 5353), ap(f.res, 5353), m(8, "laptop.local.", true)),
		)
	}
	pcap := filepath.Join(t.TempDir(), "hostile.pcap")
	if err := os.WriteFile(pcap, rawPcap(pkts), 0o644); err != nil {
		t.Fatal(err)
	}
	resolvers := "198.51.100.2,2001:db8:1::2"
	for _, flags := range [][]string{
		nil,
		{"-rd", "any"},
		{"-rd", "any", "-zero-resolver"},
		{"-rd", "any", "-unsolicited"},
		{"-rd", "any", "-unsolicited", "-zero-resolver"},
		{"-rd", "any", "-unsolicited", "-unsolicited-hold", "0"},
		{"-rd", "any", "-qr", "1"},
	} {
		nm, js := runSensor(t, append([]string{"-r", pcap, "-resolver", resolvers}, flags...)...)
		recs := readLines(t, js)
		if len(recs) < 2 {
			t.Errorf("%q: %d records, want the resolver's own transactions", flags, len(recs))
		}
		for _, f := range fams {
			if bytes.Contains(nm, f.client.AsSlice()) {
				t.Errorf("%q: the client address %v is in the NMSG output", flags, f.client)
			}
		}
		for _, r := range recs {
			msg := r["message"].(map[string]any)
			for _, k := range []string{"query_ip", "response_ip"} {
				if a := fmt.Sprint(msg[k]); strings.HasPrefix(a, "10.53.") || strings.HasPrefix(a, "fd00:53:") {
					t.Errorf("%q: %s %s in a %v record", flags, k, a, msg["type"])
				}
			}
		}
	}
}

// icmpAbout builds a port-unreachable error from the quoted packet's destination to its source.
func icmpAbout(from, to netip.Addr, quoted []byte) []byte {
	return pktbuild.AppendICMPUnreachable(nil, from, to, quoted)
}

// rawPcap writes packets as a LINKTYPE_RAW capture, 1 ms apart.
func rawPcap(pkts [][]byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 0xa1b2c3d4)
	b = binary.LittleEndian.AppendUint16(b, 2)
	b = binary.LittleEndian.AppendUint16(b, 4)
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint32(b, 65535)
	b = binary.LittleEndian.AppendUint32(b, 101)
	for i, p := range pkts {
		b = binary.LittleEndian.AppendUint32(b, 1700000000)
		b = binary.LittleEndian.AppendUint32(b, uint32(i*1000))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p)))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	return b
}

package pipeline

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/miekg/dns"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
	"github.com/sie-europe/dnssensor/sensor/internal/defrag"
	"github.com/sie-europe/dnssensor/sensor/internal/tcpdns"
)

// FuzzPrivacyOracle runs arbitrary sequences of IP datagrams (each prefixed by a two-octet length)
// through the pipeline in several configurations and checks every record against an oracle that
// shares no code with the pipeline: IP headers (input and stored packets) are read by a small
// parse of its own, transport headers of the input by gopacket, DNS messages with miekg/dns.
//
// The property (issue 8): every address in a record — its fields, and every octet of its stored
// packets that is not DNS data — is a configured resolver, zero, or an address a resolver sent a
// query to port 53 earlier in the input; and every ECS address octet in the output is zero.
//
// "DNS data" is what passive DNS is for and what the sensor keeps as sent: the header, names,
// records other than OPT, and EDNS options known to carry no client data (cookies, NSID, EDE…).
// Every other octet — the IP addresses, IPv4 options, IPv6 extension headers, the transport
// payload outside the UDP length, OPT data, octets no record accounts for — is searched for any
// address the input frames carried that is not allowed (yet), and for any ECS address the input
// carried. The source of an ICMP error is allowed when the error, sent to a resolver, quotes that
// resolver's query to an allowed address on port 53: it is the router on the way there.
func FuzzPrivacyOracle(f *testing.F) {
	for _, s := range oracleSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(oracleRun)
}

// oracleRun is one execution of FuzzPrivacyOracle.
func oracleRun(t *testing.T, data []byte) {
	{
		var frames [][]byte
		for b := data; len(b) >= 2 && len(frames) < 512; {
			n := min(int(binary.BigEndian.Uint16(b)), len(b)-2)
			frames = append(frames, b[2:2+n])
			b = b[2+n:]
		}
		o := newOracle(frames)
		for cfg := range 8 {
			// Every combination of zeroing, -rd any/0 and the late-query hold (held responses are
			// decided later, so a record may leave after a frame that taught the oracle an address).
			zero, rd, hold := cfg&1 != 0, -(cfg >> 1 & 1), time.Duration(cfg>>2&1)*500*time.Millisecond
			{
				cur := 0
				var bad error
				// Small tables: building the default ones would cost more than the run.
				p, err := New(Config{RD: rd, ZeroResolver: zero, Hold: hold, StateMax: 64, Resolvers: oracleResolvers,
					TCP: tcpdns.Config{MaxStreams: 16}, Defrag: defrag.Config{MaxDatagrams: 16}},
					func(r *dnsqr.Record) error {
						if bad == nil {
							if err := o.check(r, cur); err != nil {
								bad = fmt.Errorf("rd=%d zero=%v hold=%v, record %v emitted at frame %d: %w", rd, zero, hold, r.Type, cur, err)
							}
						}
						return nil
					})
				if err != nil {
					t.Fatal(err)
				}
				ts := t0
				for i, fr := range frames {
					cur = i
					p.Frame(decode.LinkRaw, ts, fr, len(fr))
					ts += 1e6
				}
				cur = len(frames)
				p.Flush()
				if bad != nil {
					t.Fatal(bad)
				}
			}
		}
	}
}

var oracleResolvers = []netip.Prefix{netip.PrefixFrom(res4, 32), netip.PrefixFrom(res6, 128)}

func isResolver(a netip.Addr) bool {
	for _, p := range oracleResolvers {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// oracle is what the input says may and may not appear in a record.
type oracle struct {
	allowedAt map[netip.Addr]int // first frame at which an address became allowed
	seen      []netip.Addr       // every non-resolver, non-zero address the frames carried
	secrets   [][]byte           // ECS address octets the input carried (3 octets or more)
}

func newOracle(frames [][]byte) *oracle {
	o := &oracle{allowedAt: map[netip.Addr]int{}}
	seen := map[netip.Addr]bool{}
	allow := func(a netip.Addr, i int) {
		if _, ok := o.allowedAt[a]; !ok {
			o.allowedAt[a] = i
		}
	}
	for i, fr := range frames {
		// The IP layer is read by parseIP: IPv4 options and IPv6 extension headers are opaque
		// to it, as they are to the sensor, where gopacket would refuse a frame whose options
		// it finds malformed and so miss a query. The transport layer is gopacket's.
		ip, err := parseIP(fr, false)
		if err != nil {
			continue
		}
		for _, a := range []netip.Addr{ip.src, ip.dst} {
			if !isResolver(a) && !a.IsUnspecified() && !seen[a] {
				seen[a] = true
				o.seen = append(o.seen, a)
			}
		}
		if ip.fragOff != 0 {
			continue
		}
		switch ip.proto {
		case 17:
			var udp layers.UDP
			if udp.DecodeFromBytes(ip.l4, gopacket.NilDecodeFeedback) != nil {
				continue
			}
			if isResolver(ip.src) && udp.DstPort == 53 && len(udp.Payload) >= 3 && udp.Payload[2]&0x80 == 0 {
				allow(ip.dst, i)
			}
			o.collectECS(udp.Payload)
		case 6:
			var tcp layers.TCP
			if tcp.DecodeFromBytes(ip.l4, gopacket.NilDecodeFeedback) != nil {
				// Options gopacket refuses do not change who talks to whom.
				if len(ip.l4) >= 4 && isResolver(ip.src) && binary.BigEndian.Uint16(ip.l4[2:]) == 53 {
					allow(ip.dst, i)
				}
				continue
			}
			if isResolver(ip.src) && tcp.DstPort == 53 {
				allow(ip.dst, i)
			}
			if len(tcp.Payload) > 2 {
				o.collectECS(tcp.Payload[2:])
			}
		case 1, 58:
			// An ICMP error to a resolver about its own query to an allowed address on port 53.
			if len(ip.l4) < 8 {
				continue
			}
			typ := ip.l4[0]
			isErr := typ == 3 || typ == 4 || typ == 5 || typ == 11 || typ == 12
			if ip.proto == 58 {
				isErr = typ >= 1 && typ <= 4
			}
			if qs, qd, dport, ok := quoted(ip.l4[8:]); ok && isErr && isResolver(ip.dst) && qs == ip.dst && dport == 53 {
				if at, ok := o.allowedAt[qd]; ok && at <= i {
					allow(ip.src, i)
				}
			}
		}
	}
	return o
}

// quoted reads the addresses and destination port of the IP packet an ICMP error quotes.
func quoted(q []byte) (src, dst netip.Addr, dport uint16, ok bool) {
	switch {
	case len(q) >= 20 && q[0]>>4 == 4:
		hl := int(q[0]&0xf) * 4
		if hl < 20 || len(q) < hl+4 {
			return
		}
		return netip.AddrFrom4([4]byte(q[12:16])), netip.AddrFrom4([4]byte(q[16:20])), binary.BigEndian.Uint16(q[hl+2:]), true
	case len(q) >= 44 && q[0]>>4 == 6:
		return netip.AddrFrom16([16]byte(q[8:24])), netip.AddrFrom16([16]byte(q[24:40])), binary.BigEndian.Uint16(q[42:]), true
	}
	return
}

// collectECS remembers the address octets of every ECS option in a DNS message of the input,
// including octets an option too short for its source prefix leaves to what follows it.
func (o *oracle) collectECS(msg []byte) {
	walkDNS(msg, nil, func(rd []byte, _ bool) {
		for off := 0; off+4 <= len(rd); {
			code, l := binary.BigEndian.Uint16(rd[off:]), int(binary.BigEndian.Uint16(rd[off+2:]))
			if code == 8 && off+7 <= len(rd) {
				n := min((int(rd[off+6])+7)/8, 16)
				a := rd[min(off+8, len(rd)):min(off+8+n, len(rd))]
				if len(a) >= 3 && !allZero(a) {
					o.secrets = append(o.secrets, bytes.Clone(a))
				}
			}
			off += 4 + l
		}
	})
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// walkDNS walks a DNS message with miekg/dns: unaccounted gets every run of octets that no
// question or record accounts for (after damage, and after the counted records); opt gets the
// RDATA of every OPT record found, counted or trailing (to the end of the message when the record
// is cut), and whether it parsed.
func walkDNS(msg []byte, unaccounted func([]byte), opt func(rd []byte, parsed bool)) {
	if unaccounted == nil {
		unaccounted = func([]byte) {}
	}
	if len(msg) < 12 {
		unaccounted(msg)
		return
	}
	off := 12
	for i := 0; i < int(binary.BigEndian.Uint16(msg[4:])); i++ {
		_, next, err := dns.UnpackDomainName(msg, off)
		if err != nil || next+4 > len(msg) {
			unaccounted(msg[off:])
			return
		}
		off = next + 4
	}
	n := int(binary.BigEndian.Uint16(msg[6:])) + int(binary.BigEndian.Uint16(msg[8:])) + int(binary.BigEndian.Uint16(msg[10:]))
	// record walks one record at off: names with miekg/dns, an OPT record wholly with miekg/dns
	// (other types are skipped by RDLENGTH: their data is DNS data, kept as sent). It returns the
	// offset after the record, or false when the record does not parse, after reporting an OPT
	// record that miekg/dns refuses (its options run over, say) with its RDATA taken to the end.
	// A record that does not parse is unaccounted from bad on: its start, or for an OPT record whose
	// fixed part is whole, its RDATA. The fixed part (payload size, extended RCODE, version, flags,
	// RDLENGTH) is the sender's own EDNS header, which the sensor keeps when it zeroes the options.
	record := func(off int) (next int, ok bool, bad int) {
		_, at, err := dns.UnpackDomainName(msg, off)
		if err != nil || at+10 > len(msg) {
			return 0, false, off
		}
		typ, rdlen := binary.BigEndian.Uint16(msg[at:]), int(binary.BigEndian.Uint16(msg[at+8:]))
		end := at + 10 + rdlen
		if typ != dns.TypeOPT {
			return end, end <= len(msg), off
		}
		if end <= len(msg) {
			// miekg/dns also judges known options' contents (an Extended DNS Error of one
			// octet, say); what could hide an address is only an option crossing its
			// record's end, so options that fill the RDATA exactly are accounted for.
			if _, next, err := dns.UnpackRR(msg, off); (err == nil && next == end) || tlvExact(msg[at+10:end]) {
				opt(msg[at+10:end], true)
				return end, true, off
			}
		}
		opt(msg[at+10:], false)
		return 0, false, at + 10
	}
	for i := 0; i < n && off < len(msg); i++ {
		next, ok, bad := record(off)
		if !ok {
			unaccounted(msg[bad:])
			return
		}
		off = next
	}
	if off >= len(msg) {
		return
	}
	unaccounted(msg[off:])
	// What trails the counted records may itself look like records, an OPT among them.
	for j := 0; j < 64 && off < len(msg); j++ {
		next, ok, _ := record(off)
		if !ok {
			return
		}
		off = next
	}
}

// tlvExact reports whether EDNS options fill rd exactly.
func tlvExact(rd []byte) bool {
	off := 0
	for off+4 <= len(rd) {
		off += 4 + int(binary.BigEndian.Uint16(rd[off+2:]))
	}
	return off == len(rd)
}

// kept lists the EDNS options whose data the sensor keeps as DNS data: known to carry nothing of
// a client (RFC 5001, 6975, 7314, 7873, 7828, 7830, 7901, 8145, 8914, 9567, 9660).
var kept = map[uint16]bool{3: true, 5: true, 6: true, 7: true, 9: true, 10: true, 11: true, 12: true, 13: true, 14: true, 15: true, 18: true, 19: true}

// finder collects the first violation found in one record.
type finder struct {
	o   *oracle
	cur int
	err error
}

// ok reports whether a may appear in a record emitted at frame cur.
func (f *finder) ok(a netip.Addr) bool {
	if !a.IsValid() || a.IsUnspecified() || isResolver(a) {
		return true
	}
	at, found := f.o.allowedAt[a]
	return found && at <= f.cur
}

func (f *finder) addrs(where string, as ...netip.Addr) {
	for _, a := range as {
		if f.err == nil && !f.ok(a) {
			f.err = fmt.Errorf("address %v in %s", a, where)
		}
	}
}

// search looks for any address that is not allowed, and any ECS address of the input, in b.
func (f *finder) search(where string, b []byte) {
	if f.err != nil || len(b) == 0 {
		return
	}
	for _, a := range f.o.seen {
		if !f.ok(a) && bytes.Contains(b, a.AsSlice()) {
			f.err = fmt.Errorf("address %v in %s: % x", a, where, b)
			return
		}
	}
	for _, s := range f.o.secrets {
		if bytes.Contains(b, s) {
			f.err = fmt.Errorf("ECS address % x in %s: % x", s, where, b)
			return
		}
	}
}

// check applies the property to one record emitted while frame cur was being read.
func (o *oracle) check(r *dnsqr.Record, cur int) error {
	f := &finder{o: o, cur: cur}
	f.addrs("query_ip", r.QueryIP)
	f.addrs("response_ip", r.ResponseIP)
	for _, list := range [][][]byte{r.QueryPackets, r.ResponsePackets} {
		var frags []oracleIP
		for _, p := range list {
			ip, err := parseIP(p, false)
			if err != nil {
				return fmt.Errorf("stored packet %v: % x", err, p)
			}
			f.addrs("a stored packet's header", ip.src, ip.dst)
			f.search("IP options or extension headers", ip.ext)
			frags = append(frags, ip)
		}
		f.transport(frags)
	}
	if r.ICMP != nil {
		ip, err := parseIP(r.ICMP, false)
		if err != nil || ip.fragOff != 0 || len(ip.l4) < 8 {
			return fmt.Errorf("stored ICMP packet does not parse (%v): % x", err, r.ICMP)
		}
		f.addrs("the ICMP packet's header", ip.src, ip.dst)
		f.search("the ICMP packet's options or extension headers", ip.ext)
		if q := ip.l4[8:]; len(q) > 0 {
			if qip, err := parseIP(q, true); err != nil {
				f.search("an ICMP quote that does not parse", q)
			} else {
				f.addrs("the quoted packet's header", qip.src, qip.dst)
				f.search("the quoted packet's options or extension headers", qip.ext)
				f.transport([]oracleIP{qip})
			}
		}
	}
	return f.err
}

// transport checks the transport payload of one stored datagram (its fragments in order of
// offset) outside the DNS data, and every ECS option's address.
func (f *finder) transport(frags []oracleIP) {
	if len(frags) == 0 {
		return
	}
	var l4 []byte
	for next := 0; ; {
		found := false
		for _, fr := range frags {
			if fr.fragOff == next {
				l4 = append(l4, fr.l4...)
				next += len(fr.l4)
				found = len(fr.l4) > 0
				break
			}
		}
		if !found {
			break
		}
	}
	var msg []byte
	switch frags[0].proto {
	case 17:
		if len(l4) < 8 {
			return
		}
		ul := max(int(binary.BigEndian.Uint16(l4[4:])), 8)
		if ul < len(l4) {
			f.search("octets after the UDP datagram", l4[ul:])
			l4 = l4[:ul]
		}
		msg = l4[8:]
	case 6:
		if len(l4) < 20 {
			return
		}
		do := int(l4[12]>>4) * 4
		if do < 20 || do+2 > len(l4) {
			f.search("a TCP segment", l4)
			return
		}
		msg = l4[do+2:]
	default:
		return
	}
	walkDNS(msg, func(b []byte) { f.search("DNS octets no record accounts for", b) }, func(rd []byte, _ bool) {
		for off := 0; off+4 <= len(rd); {
			code, l := binary.BigEndian.Uint16(rd[off:]), int(binary.BigEndian.Uint16(rd[off+2:]))
			d := rd[off+4 : min(off+4+l, len(rd))]
			if code == 8 && len(d) > 4 && !allZero(d[4:]) && f.err == nil {
				f.err = fmt.Errorf("ECS address octets not zero: % x", d)
			}
			if !kept[code] {
				f.search(fmt.Sprintf("EDNS option %d", code), d)
			}
			off += 4 + l
		}
	})
}

// oracleIP is the oracle's own reading of one stored IP datagram or fragment.
type oracleIP struct {
	src, dst netip.Addr
	ext      []byte // IPv4 options, or IPv6 extension headers but the Fragment header, concatenated
	proto    uint8
	fragOff  int
	l4       []byte // upper-layer octets of this packet (a fragment's share)
}

var errOracleParse = errors.New("does not parse")

// parseIP is deliberately simple: fixed header, IPv4 options, the IPv6 extension headers any
// stored packet may carry. quoted allows the total length to exceed the octets present.
func parseIP(b []byte, quoted bool) (ip oracleIP, err error) {
	if len(b) == 0 {
		return ip, errOracleParse
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return ip, errOracleParse
		}
		hl, tl := int(b[0]&0xf)*4, int(binary.BigEndian.Uint16(b[2:]))
		if quoted && tl < hl {
			// A quote's total length is the sender's to garble (a fuzzing run found 0); the
			// quote holds what it holds. Read it as the datagram it starts.
			tl = len(b)
		}
		if hl < 20 || hl > len(b) || tl < hl || (!quoted && tl > len(b)) {
			return ip, errOracleParse
		}
		ip.src, ip.dst = netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		ip.ext, ip.proto = b[20:hl], b[9]
		ip.fragOff = int(binary.BigEndian.Uint16(b[6:])&0x1fff) * 8
		ip.l4 = b[hl:min(tl, len(b))]
		return ip, nil
	case 6:
		if len(b) < 40 {
			return ip, errOracleParse
		}
		end := 40 + int(binary.BigEndian.Uint16(b[4:]))
		if !quoted && end > len(b) {
			return ip, errOracleParse
		}
		end = min(end, len(b))
		ip.src, ip.dst = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		next, off := b[6], 40
		for {
			var l int
			switch next {
			case 0, 43, 60, 135, 139, 140, 44, 51:
				if off+2 > end {
					ip.ext = append(ip.ext, b[off:end]...)
					return ip, nil
				}
				l = (int(b[off+1]) + 1) * 8
				if next == 51 {
					l = (int(b[off+1]) + 2) * 4
				}
				if next == 44 {
					l = 8
				}
			default:
				ip.proto, ip.l4 = next, b[off:end]
				return ip, nil
			}
			if off+l > end {
				ip.ext = append(ip.ext, b[off:end]...)
				return ip, nil
			}
			if next == 44 {
				ip.fragOff = int(binary.BigEndian.Uint16(b[off+2:]) &^ 7)
				if ip.fragOff != 0 {
					ip.proto, ip.l4 = b[off], b[off+8:end]
					return ip, nil
				}
			} else {
				ip.ext = append(ip.ext, b[off:off+l]...)
			}
			next, off = b[off], off+l
		}
	}
	return ip, errOracleParse
}

// oracleSeeds are the real captures (as bare IP datagrams) and the crafted privacy cases.
func oracleSeeds(f *testing.F) [][]byte {
	var seeds [][]byte
	pack := func(pkts [][]byte) []byte {
		var b []byte
		for _, p := range pkts {
			b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
			b = append(b, p...)
		}
		return b
	}
	pcaps, _ := filepath.Glob("../../testdata/real/*.pcap")
	testenv.Need(f, len(pcaps) > 0, "no real-traffic fixtures in sensor/testdata/real as seeds (make them with ci/make-fixtures)")
	for _, name := range pcaps {
		fh, err := os.Open(name)
		if err != nil {
			f.Fatal(err)
		}
		r, err := pcapgo.NewReader(fh)
		if err != nil {
			f.Fatal(err)
		}
		var pkts [][]byte
		for {
			data, _, err := r.ReadPacketData()
			if err == io.EOF {
				break
			}
			if err != nil {
				f.Fatalf("%s: %v", name, err)
			}
			var p decode.Packet
			if decode.Decode(decode.LinkType(r.LinkType()), data, &p) == decode.OK {
				pkts = append(pkts, bytes.Clone(p.Net))
			}
		}
		fh.Close()
		seeds = append(seeds, pack(pkts))
	}
	// The crafted cases hide a client's address in a resolver's packets; the client's own query
	// to the resolver, seen first, is what tells the oracle the address is a client's.
	t := &testing.T{}
	clients := [][]byte{
		udp(client4, 40000, res4, 53, msg(t, 1, "c.example.", dns.TypeA, false, true, netip.Prefix{})),
		udp(client6, 40000, res6, 53, msg(t, 1, "c.example.", dns.TypeA, false, true, netip.Prefix{})),
	}
	for _, c := range append(headerCases(t), ednsCases(t)...) {
		seeds = append(seeds, pack(append(clients[:2:2], c.pkts...)))
	}
	return seeds
}

// BenchmarkPrivacyOracle measures one execution of the fuzz target over each seed in turn: the
// real captures (8–25 KB, 20–150 datagrams) and the crafted cases (a few datagrams).
func BenchmarkPrivacyOracle(b *testing.B) {
	seeds := oracleSeeds(nil)
	t := &testing.T{}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		oracleRun(t, seeds[i%len(seeds)])
	}
}

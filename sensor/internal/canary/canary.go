// Package canary is sensord's privacy self-test: canary packets that a correct sensor must
// never turn into a record carrying an end user's data, pushed through the real pipeline and
// scrubber under sensord's own configuration, and a search of every record they produce (its
// encoded bytes, stored packets included) for the canaries' client addresses and ECS octets.
//
// The canaries run through a pipeline of their own, built from the same pipeline.Config as the
// live one: the code and the rules are the live pipeline's, but none of its state is touched (a
// canary query could otherwise pair with, evict or delay a real one, and a real response could
// pair with a canary query). Their addresses come from ranges real traffic does not use
// (198.18.0.0/15 benchmarking, fd00::/8 unique-local) and are checked against the configuration,
// their packet times are fixed, so a run is deterministic: what passes once passes every hour
// unless the code changed under it.
package canary

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/sie-europe/dnssensor/internal/pktbuild"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/pipeline"
)

// Result is one run's outcome.
type Result struct {
	OK bool
	// Why is the failure, or "" when OK: one sentence for an operator.
	Why string
	// Kind names the failure for a metric label: "leak" (a canary reached a record) or
	// "no_records" (the resolver's own canary transactions made none, so the test proved
	// nothing); "" when OK.
	Kind string
	// Packets is the number of canary packets pushed; Client of them carry a client's address
	// (client↔resolver traffic, its TCP connection and ICMP error), ECS an EDNS Client Subnet
	// option (a client's and the resolver's upstream queries and responses).
	Packets, Client, ECS int
	// Headers of them carry a client's address in an IPv4 option or IPv6 extension header of
	// the resolver's own query.
	Headers int
	// Records the canaries produced (all searched); Expected of them are the resolver's own
	// transactions, which must come out.
	Records, Expected int
	// Leaks names each canary found, and where.
	Leaks []string
	// Skipped explains canaries that could not be built for this configuration.
	Skipped []string
	Took    time.Duration
}

// Summary is the result in one line.
func (r *Result) Summary() string {
	s := fmt.Sprintf("%d canary packets (%d with a client address, %d with ECS, %d with a client address in IP options or extension headers), %d records checked (%d expected from the resolver's own canary transactions)",
		r.Packets, r.Client, r.ECS, r.Headers, r.Records, r.Expected)
	if len(r.Skipped) > 0 {
		s += "; " + strings.Join(r.Skipped, "; ")
	}
	if !r.OK {
		return r.Why + " (" + s + ")"
	}
	return s
}

// needle is what must not appear in a record.
type needle struct {
	what  string
	bytes []byte
	text  string // in the JSON form too, when set
}

// family is the canary cast of one address family.
type family struct {
	name     string
	resolver netip.Addr // initiator side: a configured resolver (authority mode: any other host)
	far      netip.Addr // responder side: an authority (authority mode: a configured one)
	client   netip.Addr // a resolver's client; invalid when the configuration covers every candidate
	ecs      []byte     // the ECS option's address octets (the client's subnet)
	ecsBits  uint8
	answer   netip.Addr
	positive bool // the resolver's own transactions must make records
}

// Candidate addresses, in ranges real traffic does not use; the first one the configuration
// does not list is taken.
var (
	clients4   = []string{"198.18.83.71", "198.19.201.57", "100.127.83.71"}
	clients6   = []string{"fd53:ca4a:7e57::c1", "fd9e:7e57:53::c1"}
	others4    = []string{"198.18.53.53", "198.19.53.53", "100.127.53.53", "192.0.2.53"}
	others6    = []string{"fd53:ca4a:7e57::53", "fd9e:7e57:53::53", "2001:db8:53::53"}
	answers    = map[bool]string{true: "198.18.77.77", false: "fd53:ca4a:7e57::77"}
	ecs4       = []byte{198, 19, 0xc9, 0x39}                            // /32 of a canary client
	ecs6       = []byte{0xfd, 0x53, 0xca, 0x4a, 0x7e, 0x57, 0x0e, 0xc5} // /64
	canaryName = "canary.privacy-selftest.invalid."
)

// t0 is the canaries' packet time: fixed, so every run is the same run.
const t0 = int64(1_700_000_000) * 1e9

// Run pushes the canaries through a new pipeline built from cfg and reports what came out.
func Run(cfg pipeline.Config) Result {
	start := time.Now()
	res := run(cfg)
	res.Took = time.Since(start)
	return res
}

func run(cfg pipeline.Config) Result {
	var res Result
	auth := len(cfg.Authorities) > 0
	listed := append(append([]netip.Prefix(nil), cfg.Resolvers...), cfg.Authorities...)
	inConfig := func(a netip.Addr) bool {
		for _, p := range listed {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	free := func(cands []string, not ...netip.Addr) netip.Addr {
	next:
		for _, c := range cands {
			a := netip.MustParseAddr(c)
			if inConfig(a) {
				continue
			}
			for _, n := range not {
				if a == n {
					continue next
				}
			}
			return a
		}
		return netip.Addr{}
	}
	name := canaryName
	if cfg.Excluded(name) {
		// An operator who excludes almost everything still includes something: the canary
		// name goes below an include entry, so the resolver's own canaries are kept.
		name = ""
		for _, inc := range cfg.QnameInclude {
			if n := "canary-privacy-selftest." + strings.TrimSuffix(inc, ".") + "."; !cfg.Excluded(n) {
				name = n
				break
			}
		}
	}
	var fams []*family
	for _, v4 := range []bool{true, false} {
		f := &family{name: "IPv6", ecs: ecs6, ecsBits: 64, answer: netip.MustParseAddr(answers[v4])}
		cl, ot := clients6, others6
		if v4 {
			f.name, f.ecs, f.ecsBits, cl, ot = "IPv4", ecs4, 32, clients4, others4
		}
		mine := configured(cfg.Resolvers, v4, ot)
		if auth {
			mine = configured(cfg.Authorities, v4, ot)
		}
		f.client = free(cl)
		switch {
		case auth && mine.IsValid():
			f.far, f.resolver, f.positive = mine, free(ot, mine), true
		case auth:
			f.far, f.resolver = free(ot), free(ot, free(ot))
		case mine.IsValid():
			f.resolver, f.far, f.positive = mine, free(ot, mine), true
		default:
			// No resolver of this family: its canaries can only show that nothing leaks.
			f.resolver = free(ot)
			f.far = free(ot, f.resolver)
		}
		if !f.far.IsValid() {
			// Every candidate is listed (dnstap without -resolver takes every address for a
			// resolver): the far side may be listed too, the initiator decides.
			f.far = netip.MustParseAddr(ot[len(ot)-1])
			if f.far == f.resolver {
				f.far = netip.MustParseAddr(ot[0])
			}
		}
		if !f.resolver.IsValid() {
			res.Skipped = append(res.Skipped, f.name+" canaries skipped: every candidate address is a configured authority")
			continue
		}
		if !f.client.IsValid() {
			res.Skipped = append(res.Skipped, f.name+" client canaries skipped: the configuration takes every address for a resolver (dnstap without -resolver: its decoder's CLIENT_* rule applies)")
		}
		fams = append(fams, f)
	}
	noName := name == ""
	if noName {
		name = canaryName
	}
	qname, err := wire(name)
	if err != nil {
		return Result{Why: "canary name: " + err.Error(), Kind: "no_records"}
	}

	var needles []needle
	for _, f := range fams {
		needles = append(needles, needle{what: f.name + " ECS address", bytes: f.ecs})
		if f.client.IsValid() {
			b := f.client.AsSlice()
			needles = append(needles, needle{what: f.name + " client address " + f.client.String(), bytes: b, text: f.client.String()})
		}
		if cfg.ZeroResolver && f.positive && !auth {
			needles = append(needles, needle{what: f.name + " resolver address (-zero-resolver)", bytes: f.resolver.AsSlice()})
		}
	}

	var leaks []string
	var buf, js []byte
	p, err := pipeline.New(cfg, func(r *dnsqr.Record) error {
		res.Records++
		for _, f := range fams {
			if f.positive && r.ResponseIP == f.far {
				res.Expected++
			}
		}
		buf = dnsqr.AppendProto(buf[:0], r)
		js = dnsqr.AppendJSON(js[:0], dnsqr.PayloadInfo{Time: r.Time()}, r)
		for _, n := range needles {
			if bytes.Contains(buf, n.bytes) || (n.text != "" && bytes.Contains(js, []byte(n.text))) {
				leaks = append(leaks, fmt.Sprintf("%s in a %s record (%s:%d → %s:%d)", n.what, r.Type, r.QueryIP, r.QueryPort, r.ResponseIP, r.ResponsePort))
			}
		}
		return nil
	})
	if err != nil {
		return Result{Why: "the pipeline does not accept the configuration: " + err.Error(), Kind: "no_records"}
	}
	rd := cfg.RD == 1 // the RD bit the pipeline keeps, so that only the client rule refuses clients
	ts := t0
	push := func(pkt []byte, client, ecs bool) {
		ts += int64(time.Millisecond)
		p.IPPacket(ts, pkt)
		res.Packets++
		if client {
			res.Client++
		}
		if ecs {
			res.ECS++
		}
	}
	ap := netip.AddrPortFrom
	id := uint16(0x5e1f)
	for _, f := range fams {
		qt := uint16(28)
		if f.resolver.Is4() {
			qt = 1
		}
		query := func(ecs bool) []byte {
			id++
			var opt []byte
			if ecs {
				opt = ecsOption(f)
			}
			return dnsQuery(id, qname, qt, rd, opt)
		}
		if f.client.IsValid() {
			c, r := f.client, f.resolver
			// A client's query and the resolver's answer, plain and with ECS.
			for _, ecs := range []bool{false, true} {
				q := query(ecs)
				push(pktbuild.AppendUDP(nil, ap(c, 41000), ap(r, 53), q), true, ecs)
				push(pktbuild.AppendUDP(nil, ap(r, 53), ap(c, 41000), answerOf(q, qt, f.answer)), true, ecs)
			}
			// The client's TCP connection, query and answer.
			q := query(true)
			push(pktbuild.AppendTCP(nil, ap(c, 41001), ap(r, 53), 1, q), true, true)
			push(pktbuild.AppendTCP(nil, ap(r, 53), ap(c, 41001), 1, answerOf(q, qt, f.answer)), true, true)
			// The resolver's answer to a client that has gone, and the client's ICMP error.
			answer := pktbuild.AppendUDP(nil, ap(r, 53), ap(c, 41002), answerOf(query(false), qt, f.answer))
			push(answer, true, false)
			push(pktbuild.AppendICMPUnreachable(nil, c, r, answer), true, false)
		}
		// The resolver's own transactions with ECS (a client's subnet forwarded upstream), UDP
		// and TCP: kept, with the ECS address zeroed.
		for i, tcp := range []bool{false, true} {
			q := query(true)
			a := answerOf(q, qt, f.answer)
			port := uint16(40000 + i)
			if tcp {
				push(pktbuild.AppendTCP(nil, ap(f.resolver, port), ap(f.far, 53), 1, q), false, true)
				push(pktbuild.AppendTCP(nil, ap(f.far, 53), ap(f.resolver, port), 1, a), false, true)
			} else {
				pkt := pktbuild.AppendUDP(nil, ap(f.resolver, port), ap(f.far, 53), q)
				if f.client.IsValid() {
					// An IP option (IPv4) or extension header (IPv6) holding the client's
					// address: stored packets keep no such contents.
					pkt = withHeaderNeedle(pkt, f.client)
					res.Headers++
				}
				push(pkt, false, true)
				push(pktbuild.AppendUDP(nil, ap(f.far, 53), ap(f.resolver, port), a), false, true)
			}
		}
	}
	p.Flush()

	res.Leaks = leaks
	// Per family one UDP and one TCP transaction; the unpaired modes (-qr) keep no TCP.
	want := 0
	for _, f := range fams {
		if f.positive {
			want += 2
			if cfg.QR != pipeline.QRPair {
				want--
			}
		}
	}
	switch {
	case len(leaks) > 0:
		res.Kind = "leak"
		res.Why = fmt.Sprintf("%d canary leaks: %s", len(leaks), strings.Join(leaks, "; "))
	case res.Expected < want:
		res.Kind = "no_records"
		res.Why = fmt.Sprintf("the resolver's own canary transactions made %d of %d records: the pipeline drops what it should keep, so the test proves nothing", res.Expected, want)
		if noName {
			res.Why += " (every name is dropped by -qname-exclude, and no -qname-include keeps one)"
		}
	case want == 0:
		res.Kind = "no_records"
		res.Why = "no configured resolver or authority address to build the resolver's own canary transactions from"
	default:
		res.OK = true
	}
	return res
}

// withHeaderNeedle returns the datagram pkt (as pktbuild writes it: a bare IPv4 or IPv6 header)
// with a's octets inside an IPv4 Record Route option, or an IPv6 Destination Options header (a
// PadN option), lengths and the IPv4 header checksum fixed. The transport checksum does not
// cover either.
func withHeaderNeedle(pkt []byte, a netip.Addr) []byte {
	if a.Is4() {
		b := a.As4()
		opt := []byte{7, 7, 4, b[0], b[1], b[2], b[3], 0} // RR, one slot filled, EOL
		out := append(append(append([]byte(nil), pkt[:20]...), opt...), pkt[20:]...)
		out[0] = 0x40 | byte((20+len(opt))/4)
		binary.BigEndian.PutUint16(out[2:], uint16(len(out)))
		out[10], out[11] = 0, 0
		binary.BigEndian.PutUint16(out[10:], ^fold(out[:20+len(opt)]))
		return out
	}
	b := a.As16()
	ext := []byte{pkt[6], 2, 1, 20} // next header, 24 octets, PadN of 20
	ext = append(append(ext, b[:]...), 0, 0, 0, 0)
	out := append(append(append([]byte(nil), pkt[:40]...), ext...), pkt[40:]...)
	out[6] = 60 // Destination Options
	binary.BigEndian.PutUint16(out[4:], uint16(len(out)-40))
	return out
}

// fold is the ones' complement sum of b.
func fold(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// configured returns an address inside one of ps of the family: the prefix's own address when it
// is a host, else a candidate inside it, else the prefix's first address after the network's.
func configured(ps []netip.Prefix, v4 bool, cands []string) netip.Addr {
	for _, p := range ps {
		if p.Addr().Is4() != v4 {
			continue
		}
		if p.IsSingleIP() {
			return p.Addr()
		}
		for _, c := range cands {
			if a := netip.MustParseAddr(c); p.Contains(a) {
				return a
			}
		}
		if a := p.Masked().Addr().Next(); p.Contains(a) {
			return a
		}
	}
	return netip.Addr{}
}

// wire converts a presentation name to wire form.
func wire(name string) ([]byte, error) {
	var b []byte
	for _, l := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		if l == "" || len(l) > 63 {
			return nil, fmt.Errorf("%q: bad label", name)
		}
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	return append(b, 0), nil
}

// ecsOption is an EDNS Client Subnet option for f's canary client subnet.
func ecsOption(f *family) []byte {
	fam := uint16(2)
	if f.resolver.Is4() {
		fam = 1
	}
	o := binary.BigEndian.AppendUint16(nil, 8) // OPTION-CODE ECS
	o = binary.BigEndian.AppendUint16(o, uint16(4+len(f.ecs)))
	o = binary.BigEndian.AppendUint16(o, fam)
	o = append(o, f.ecsBits, 0)
	return append(o, f.ecs...)
}

// dnsQuery is a query for qname/qt, with an OPT record holding opt when set.
func dnsQuery(id uint16, qname []byte, qt uint16, rd bool, opt []byte) []byte {
	flags := uint16(0)
	if rd {
		flags |= 0x0100
	}
	b := binary.BigEndian.AppendUint16(nil, id)
	b = binary.BigEndian.AppendUint16(b, flags)
	ar := byte(0)
	if opt != nil {
		ar = 1
	}
	b = append(b, 0, 1, 0, 0, 0, 0, 0, ar)
	b = append(b, qname...)
	b = binary.BigEndian.AppendUint16(b, qt)
	b = binary.BigEndian.AppendUint16(b, 1)
	if opt != nil {
		b = append(b, 0)                           // root
		b = binary.BigEndian.AppendUint16(b, 41)   // OPT
		b = binary.BigEndian.AppendUint16(b, 1232) // payload size
		b = append(b, 0, 0, 0, 0)                  // extended rcode, version, flags
		b = binary.BigEndian.AppendUint16(b, uint16(len(opt)))
		b = append(b, opt...)
	}
	return b
}

// answerOf is the answer to query q: QR and RA set, one answer record (the question's name by
// pointer) after the question, the query's OPT record (and its ECS option) echoed, as a resolver
// that honours ECS does.
func answerOf(q []byte, qt uint16, answer netip.Addr) []byte {
	end := 12
	for q[end] != 0 {
		end += 1 + int(q[end])
	}
	end += 1 + 4
	rr := []byte{0xc0, 12}
	rr = binary.BigEndian.AppendUint16(rr, qt)
	rr = binary.BigEndian.AppendUint16(rr, 1)
	rr = binary.BigEndian.AppendUint32(rr, 300)
	a := answer.AsSlice()
	rr = binary.BigEndian.AppendUint16(rr, uint16(len(a)))
	rr = append(rr, a...)
	out := append(append(append([]byte(nil), q[:end]...), rr...), q[end:]...)
	out[2] |= 0x80                         // QR
	out[3] |= 0x80                         // RA
	binary.BigEndian.PutUint16(out[6:], 1) // ANCOUNT
	return out
}

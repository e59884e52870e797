package dnsqr

import (
	"encoding/base64"
	"encoding/binary"
	"math"
	"strconv"
	"time"

	"github.com/miekg/dns"
)

// PayloadInfo is the NMSG envelope that nmsgtool prints around a message.
type PayloadInfo struct {
	Time      int64 // ns since the epoch
	Source    uint32
	HasSource bool
}

// AppendJSON appends one line in `nmsgtool -J` form (without the newline): the envelope, then the
// message fields in the C module's field order, enum names as strings, IPs as text, packets as
// base64, plus the generated fields delay, query, response and dns.
func AppendJSON(b []byte, p PayloadInfo, r *Record) []byte {
	b = append(b, `{"time":"`...)
	b = time.Unix(0, p.Time).UTC().AppendFormat(b, "2006-01-02 15:04:05.000000000")
	b = append(b, `","vname":"base","mname":"dnsqr"`...)
	if p.HasSource {
		b = append(b, `,"source":"`...)
		b = strconv.AppendUint(b, uint64(p.Source), 16)
		b = append(b, '"')
	}
	b = append(b, `,"message":{"type":"`...)
	b = append(b, r.Type.String()...)
	b = append(b, `","query_ip":"`...)
	b = appendIP(b, r.QueryIP)
	b = append(b, `","response_ip":"`...)
	b = appendIP(b, r.ResponseIP)
	b = append(b, `","proto":`...)
	switch r.Proto {
	case 17:
		b = append(b, `"UDP"`...)
	case 6:
		b = append(b, `"TCP"`...)
	case 1:
		b = append(b, `"ICMP"`...)
	default:
		b = strconv.AppendUint(b, uint64(r.Proto), 10)
	}
	b = appendNum(b, "query_port", uint64(r.QueryPort))
	b = appendNum(b, "response_port", uint64(r.ResponsePort))
	b = appendNum(b, "id", uint64(r.ID))
	if r.HasQuestion {
		b = append(b, `,"qname":`...)
		b = strconv.AppendQuote(b, NameString(r.Qname))
		b = append(b, `,"qclass":`...)
		b = strconv.AppendQuote(b, dns.Class(r.Qclass).String())
		b = append(b, `,"qtype":`...)
		b = strconv.AppendQuote(b, dns.Type(r.Qtype).String())
	}
	if r.HasRcode {
		b = append(b, `,"rcode":`...)
		b = strconv.AppendQuote(b, rcodeString(r.Rcode))
	}
	b = appendPacketsJSON(b, "query", r.QueryPackets, r.QueryTimes)
	b = appendPacketsJSON(b, "response", r.ResponsePackets, r.ResponseTimes)
	if r.HasTimeout {
		b = append(b, `,"timeout":`...)
		b = appendFloat(b, r.Timeout)
	}
	if d, ok := r.Delay(); ok {
		b = append(b, `,"delay":`...)
		b = appendFloat(b, d)
	}
	if r.HasChecksum && len(r.ResponsePackets) > 0 {
		b = append(b, `,"udp_checksum":"`...)
		b = append(b, r.UDPChecksum.String()...)
		b = append(b, '"')
	}
	if r.HasResolverZeroed {
		b = append(b, `,"resolver_address_zeroed":`...)
		b = strconv.AppendBool(b, r.ResolverZeroed)
	}
	if len(r.QueryPackets) == 1 {
		if msg, ok := DNSPayload(r.QueryPackets); ok {
			b = appendB64(b, "query", msg)
		}
	}
	if msg, ok := DNSPayload(r.ResponsePackets); ok {
		b = appendB64(b, "response", msg)
		b = appendB64(b, "dns", msg)
	}
	if r.TCP != nil {
		b = appendB64(b, "tcp", r.TCP)
	}
	if r.ICMP != nil {
		b = appendB64(b, "icmp", r.ICMP)
	}
	return append(b, "}}"...)
}

// Delay is the C module's generated field: response time minus query time, the largest over the
// response's fragments, defined only for answered UDP queries with one query packet.
func (r *Record) Delay() (float64, bool) {
	if r.Type != UDPQueryResponse || len(r.QueryTimes) != 1 || len(r.ResponseTimes) < 1 {
		return 0, false
	}
	d := 0.0
	for i, t := range r.ResponseTimes {
		x := float64(t-r.QueryTimes[0]) / 1e9
		if i == 0 || x > d {
			d = x
		}
	}
	return d, true
}

func appendIP(b []byte, a interface{ AppendTo([]byte) []byte }) []byte { return a.AppendTo(b) }

func appendNum(b []byte, name string, v uint64) []byte {
	b = append(b, `,"`...)
	b = append(b, name...)
	b = append(b, `":`...)
	return strconv.AppendUint(b, v, 10)
}

func appendB64(b []byte, name string, v []byte) []byte {
	b = append(b, `,"`...)
	b = append(b, name...)
	b = append(b, `":"`...)
	b = base64.StdEncoding.AppendEncode(b, v)
	return append(b, '"')
}

func appendPacketsJSON(b []byte, prefix string, pkts [][]byte, times []int64) []byte {
	b = append(b, `,"`...)
	b = append(b, prefix...)
	b = append(b, `_packet":[`...)
	for i, p := range pkts {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, p)
		b = append(b, '"')
	}
	b = append(b, `],"`...)
	b = append(b, prefix...)
	b = append(b, `_time_sec":[`...)
	for i, t := range times {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, splitSec(t), 10)
	}
	b = append(b, `],"`...)
	b = append(b, prefix...)
	b = append(b, `_time_nsec":[`...)
	for i, t := range times {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(splitNsec(t)), 10)
	}
	return append(b, ']')
}

// appendFloat prints the shortest of 15 or 17 significant digits that reads back exactly, as the
// C JSON writer does (0.00571, but 0.024184000000000001).
func appendFloat(b []byte, f float64) []byte {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return append(b, "null"...)
	}
	s := strconv.FormatFloat(f, 'g', 15, 64)
	if v, err := strconv.ParseFloat(s, 64); err == nil && v == f {
		return append(b, s...)
	}
	return strconv.AppendFloat(b, f, 'g', 17, 64)
}

func rcodeString(rc uint16) string {
	if s, ok := dns.RcodeToString[int(rc)]; ok {
		return s
	}
	return "RCODE" + strconv.Itoa(int(rc))
}

// NameString renders a wire-format name in presentation form with a trailing dot, escaping
// non-printable octets as \DDD. A malformed name renders as far as it parses.
func NameString(wire []byte) string {
	if len(wire) == 0 || (len(wire) == 1 && wire[0] == 0) {
		return "."
	}
	var out []byte
	for i := 0; i < len(wire); {
		l := int(wire[i])
		if l == 0 || l > 63 || i+1+l > len(wire) {
			break
		}
		for _, c := range wire[i+1 : i+1+l] {
			switch {
			case c == '.' || c == '\\' || c == '"':
				out = append(out, '\\', c)
			case c < 0x21 || c > 0x7e:
				out = append(out, '\\', '0'+c/100, '0'+c/10%10, '0'+c%10)
			default:
				out = append(out, c)
			}
		}
		out = append(out, '.')
		i += 1 + l
	}
	return string(out)
}

// DNSPayload returns the DNS message carried by a stored packet list: the UDP payload of one
// datagram, of IP fragments put back together in offset order, or, for the TCP records this sensor
// writes, the message after the two-octet length prefix. ok is false when the packets do not parse.
func DNSPayload(pkts [][]byte) (msg []byte, ok bool) {
	if len(pkts) == 0 {
		return nil, false
	}
	if len(pkts) == 1 {
		proto, l4, _, more, off, ok := ipPayload(pkts[0])
		if !ok || more || off != 0 {
			return nil, false
		}
		return l4Payload(proto, l4)
	}
	// Reassemble: fragments are few, so a quadratic pick of the next offset is fine.
	var whole []byte
	var proto uint8
	done := make([]bool, len(pkts))
	for expect := 0; ; {
		found := false
		for i, p := range pkts {
			if done[i] {
				continue
			}
			pr, l4, _, more, off, ok := ipPayload(p)
			if !ok {
				return nil, false
			}
			if off != expect {
				continue
			}
			if off == 0 {
				proto = pr
			}
			whole = append(whole, l4...)
			expect += len(l4)
			done[i], found = true, true
			if !more {
				return l4Payload(proto, whole)
			}
			break
		}
		if !found {
			return nil, false
		}
	}
}

func l4Payload(proto uint8, l4 []byte) ([]byte, bool) {
	switch proto {
	case 17:
		if len(l4) < 8 {
			return nil, false
		}
		return l4[8:], true
	case 6:
		if len(l4) < 20 || int(l4[12]>>4)*4 > len(l4) {
			return nil, false
		}
		seg := l4[int(l4[12]>>4)*4:]
		if len(seg) < 2 || int(binary.BigEndian.Uint16(seg)) != len(seg)-2 {
			return nil, false
		}
		return seg[2:], true
	}
	return nil, false
}

// ipPayload parses an IPv4 or IPv6 header (with extension headers) and returns the upper-layer
// protocol and bytes, the fragment id, whether more fragments follow, and the fragment offset.
func ipPayload(p []byte) (proto uint8, l4 []byte, id uint32, more bool, off int, ok bool) {
	if len(p) < 1 {
		return
	}
	switch p[0] >> 4 {
	case 4:
		if len(p) < 20 {
			return
		}
		hl := int(p[0]&0xf) * 4
		tl := int(binary.BigEndian.Uint16(p[2:]))
		if hl < 20 || tl < hl || tl > len(p) {
			return
		}
		fo := binary.BigEndian.Uint16(p[6:])
		return p[9], p[hl:tl], uint32(binary.BigEndian.Uint16(p[4:])), fo&0x2000 != 0, int(fo&0x1fff) * 8, true
	case 6:
		if len(p) < 40 {
			return
		}
		pl := int(binary.BigEndian.Uint16(p[4:]))
		if 40+pl > len(p) {
			return
		}
		next, rest := p[6], p[40:40+pl]
		for {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if len(rest) < 8 || int(rest[1]+1)*8 > len(rest) {
					return
				}
				next, rest = rest[0], rest[int(rest[1]+1)*8:]
			case 44: // fragment
				if len(rest) < 8 {
					return
				}
				fo := binary.BigEndian.Uint16(rest[2:])
				id, more, off = binary.BigEndian.Uint32(rest[4:]), fo&1 != 0, int(fo&^7)
				next, rest = rest[0], rest[8:]
			default:
				return next, rest, id, more, off, true
			}
		}
	}
	return
}

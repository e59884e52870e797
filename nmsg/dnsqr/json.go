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
	b = appendTime(b, p.Time)
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
		b = appendQuotedName(b, r.Qname)
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
	if d, ok := r.delayNs(); ok {
		b = append(b, `,"delay":`...)
		b = appendSeconds(b, d)
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
		// "dns" is the same message: copy its text rather than encode it again.
		enc := len(b) - 1 - base64.StdEncoding.EncodedLen(len(msg))
		end := len(b) - 1
		b = append(b, `,"dns":"`...)
		b = append(b, b[enc:end]...)
		b = append(b, '"')
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
	d, ok := r.delayNs()
	return float64(d) / 1e9, ok
}

// delayNs is Delay in nanoseconds. The largest difference gives the largest Delay, since the
// conversion to float64 never reverses an order.
func (r *Record) delayNs() (int64, bool) {
	if r.Type != UDPQueryResponse || len(r.QueryTimes) != 1 || len(r.ResponseTimes) < 1 {
		return 0, false
	}
	var d int64
	for i, t := range r.ResponseTimes {
		if x := t - r.QueryTimes[0]; i == 0 || x > d {
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
	n := len(b)
	b = strconv.AppendFloat(b, f, 'g', 15, 64)
	// The conversion to string does not escape, so it costs no allocation.
	if v, err := strconv.ParseFloat(string(b[n:]), 64); err == nil && v == f {
		return b
	}
	return strconv.AppendFloat(b[:n], f, 'g', 17, 64)
}

// appendSeconds appends float64(ns)/1e9 as appendFloat does, without converting through binary.
// Between 100 µs and 10^6 s the result is ns as a decimal with nine places and trailing zeros
// removed: those at most 15 significant digits read back as exactly that float64 (the division
// rounds correctly, and ns is exact below 2^53), so they are what %.15g prints, and %g prints
// numbers of that size without an exponent.
func appendSeconds(b []byte, ns int64) []byte {
	a := ns
	if a < 0 {
		a = -a
	}
	if a < 100e3 || a >= 1e15 {
		return appendFloat(b, float64(ns)/1e9)
	}
	if ns < 0 {
		b = append(b, '-')
	}
	b = strconv.AppendInt(b, a/1e9, 10)
	frac := a % 1e9
	if frac == 0 {
		return b
	}
	b = append(b, '.')
	start := len(b)
	b = appendDigits(b, int(frac), 9)
	for b[len(b)-1] == '0' && len(b) > start {
		b = b[:len(b)-1]
	}
	return b
}

// appendTime appends ns as "2006-01-02 15:04:05.000000000" in UTC. It is time.AppendFormat with
// that layout, without parsing the layout for every record.
func appendTime(b []byte, ns int64) []byte {
	t := time.Unix(0, ns).UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, "2006-01-02 15:04:05.000000000")
	}
	hour, minute, sec := t.Clock()
	b = appendDigits(b, year, 4)
	b = append(b, '-')
	b = appendDigits(b, int(month), 2)
	b = append(b, '-')
	b = appendDigits(b, day, 2)
	b = append(b, ' ')
	b = appendDigits(b, hour, 2)
	b = append(b, ':')
	b = appendDigits(b, minute, 2)
	b = append(b, ':')
	b = appendDigits(b, sec, 2)
	b = append(b, '.')
	return appendDigits(b, t.Nanosecond(), 9)
}

// appendDigits appends the n (at most 9) lowest decimal digits of v >= 0, zero-padded.
func appendDigits(b []byte, v, n int) []byte {
	start := len(b)
	b = append(b, "000000000"[:n]...)
	for i := len(b) - 1; i >= start; i-- {
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return b
}

func rcodeString(rc uint16) string {
	if s, ok := dns.RcodeToString[int(rc)]; ok {
		return s
	}
	return "RCODE" + strconv.Itoa(int(rc))
}

// NameString renders a wire-format name in presentation form with a trailing dot, escaping
// non-printable octets as \DDD. A malformed name renders as far as it parses.
func NameString(wire []byte) string { return string(appendName(nil, wire, `\`)) }

// appendQuotedName appends NameString(wire) as a JSON (and Go) string literal, the form
// strconv.AppendQuote gives it, without building the string first.
func appendQuotedName(b, wire []byte) []byte {
	b = append(b, '"')
	b = appendName(b, wire, `\\`)
	return append(b, '"')
}

// appendName appends the presentation form of wire. esc is what one presentation backslash is
// written as: `\` plain, `\\` inside a quoted string, where a label's backslash or quote octet
// also needs a quoting backslash of its own.
func appendName(b, wire []byte, esc string) []byte {
	if len(wire) == 0 || (len(wire) == 1 && wire[0] == 0) {
		return append(b, '.')
	}
	quoted := len(esc) > 1
	for i := 0; i < len(wire); {
		l := int(wire[i])
		if l == 0 || l > 63 || i+1+l > len(wire) {
			break
		}
		for _, c := range wire[i+1 : i+1+l] {
			switch {
			case c == '.':
				b = append(b, esc...)
				b = append(b, c)
			case c == '\\' || c == '"':
				b = append(b, esc...)
				if quoted {
					b = append(b, '\\')
				}
				b = append(b, c)
			case c < 0x21 || c > 0x7e:
				b = append(b, esc...)
				b = append(b, '0'+c/100, '0'+c/10%10, '0'+c%10)
			default:
				b = append(b, c)
			}
		}
		b = append(b, '.')
		i += 1 + l
	}
	return b
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

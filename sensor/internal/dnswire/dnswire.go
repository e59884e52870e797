// Package dnswire reads the few parts of a DNS message the capture path needs — header, the one
// question, EDNS options — straight from the wire, without allocating. Full parsing (miekg/dns)
// costs 10–30× more and is kept for tests and presentation.
//
// Every function treats its input as hostile: counts in the header never size anything, and every
// read is bounds-checked against the message.
package dnswire

import (
	"encoding/binary"
)

// HeaderLen is the size of the fixed DNS header.
const HeaderLen = 12

// Header flag bits (in the second 16-bit word).
const (
	FlagQR = 1 << 15
	FlagRD = 1 << 8
)

// Header is the fixed part of a DNS message.
type Header struct {
	ID      uint16
	Flags   uint16
	QDCount uint16
	ANCount uint16
	NSCount uint16
	ARCount uint16
}

// Response reports the QR bit.
func (h *Header) Response() bool { return h.Flags&FlagQR != 0 }

// RD reports the recursion-desired bit.
func (h *Header) RD() bool { return h.Flags&FlagRD != 0 }

// Rcode is the header's four-bit response code (extended rcodes live in OPT and are not needed).
func (h *Header) Rcode() uint16 { return h.Flags & 0xf }

// ParseHeader reads the header; ok is false for messages shorter than 12 octets.
func ParseHeader(msg []byte) (h Header, ok bool) {
	if len(msg) < HeaderLen {
		return h, false
	}
	return Header{
		ID:      binary.BigEndian.Uint16(msg),
		Flags:   binary.BigEndian.Uint16(msg[2:]),
		QDCount: binary.BigEndian.Uint16(msg[4:]),
		ANCount: binary.BigEndian.Uint16(msg[6:]),
		NSCount: binary.BigEndian.Uint16(msg[8:]),
		ARCount: binary.BigEndian.Uint16(msg[10:]),
	}, true
}

// Question is the message's question when QDCOUNT is 1. Name aliases the message.
type Question struct {
	Name  []byte // wire format, case as sent
	Type  uint16
	Class uint16
}

// ParseQuestion reads the single question that follows the header. ok is false when the name is
// malformed (compression in a question, a label over 63 octets, over 255 octets in all) or the
// message ends early.
func ParseQuestion(msg []byte) (q Question, ok bool) {
	n, ok := nameLen(msg, HeaderLen)
	if !ok {
		return q, false
	}
	end := HeaderLen + n
	if end+4 > len(msg) {
		return q, false
	}
	return Question{
		Name:  msg[HeaderLen:end],
		Type:  binary.BigEndian.Uint16(msg[end:]),
		Class: binary.BigEndian.Uint16(msg[end+2:]),
	}, true
}

// nameLen is the length of an uncompressed name at off.
func nameLen(msg []byte, off int) (int, bool) {
	start := off
	for {
		if off >= len(msg) {
			return 0, false
		}
		l := int(msg[off])
		if l == 0 {
			off++
			break
		}
		if l > 63 {
			return 0, false // compression pointer or reserved label type
		}
		off += 1 + l
		if off-start > 255 {
			return 0, false
		}
	}
	if off-start > 255 {
		return 0, false
	}
	return off - start, true
}

// skipName moves past a possibly compressed name at off and returns the offset after it. The name
// must be one a parser can read: a compression pointer points strictly backwards (RFC 1035 §4.1.4:
// to a prior occurrence; this also rules out loops) to a well-formed name, and the labels read add
// up to less than 255 octets. A name that only looks skippable would let the octets around it pass
// as accounted for while no DNS parser could say what they are.
func skipName(msg []byte, off int) (int, bool) {
	end, total := -1, 0
	for {
		if off >= len(msg) {
			return 0, false
		}
		l := int(msg[off])
		switch {
		case l == 0:
			if end < 0 {
				end = off + 1
			}
			return end, true
		case l&0xc0 == 0xc0:
			if off+2 > len(msg) {
				return 0, false
			}
			if end < 0 {
				end = off + 2
			}
			ptr := int(binary.BigEndian.Uint16(msg[off:]) & 0x3fff)
			if ptr >= off {
				return 0, false
			}
			off = ptr
			continue
		case l > 63:
			return 0, false
		}
		if total += l + 1; total >= 255 {
			return 0, false
		}
		off += 1 + l
	}
}

// EqualFold compares two wire-format names ignoring ASCII case, as 0x20 randomisation requires;
// label length octets are below 'A', so a bytewise fold is exact.
func EqualFold(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x != y && lower(x) != lower(y) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// AppendLower appends name with ASCII letters lowered.
func AppendLower(dst, name []byte) []byte {
	for _, c := range name {
		dst = append(dst, lower(c))
	}
	return dst
}

// OptionECS is the EDNS option code of Client Subnet (RFC 7871).
const OptionECS = 8

// Option locates one EDNS option inside a message: Off is the offset of its code, Len the length
// of its data (the data starts at Off+4).
type Option struct {
	Code uint16
	Off  int
	Len  int
}

// FindOptions calls fn for every EDNS option of every OPT record in the message. It walks the
// records after the question; ok is false when the message does not parse that far, in which case
// options before the damage have still been reported.
func FindOptions(msg []byte, fn func(Option)) (ok bool) {
	return ScanOptions(msg, fn) == len(msg)
}

// ScanOptions calls fn for every option of every OPT record (in any section) and returns the
// offset from which the message's octets cannot be accounted for: len(msg) when the header, the
// questions and every counted record parse, each OPT record's options fill its RDATA exactly, every
// Client Subnet option is well formed, and nothing follows the last record. Otherwise it is the
// start of the first malformed OPT record's RDATA, the first record that does not parse, or the
// first octet after the counted records, whichever comes first; options reported by fn all start
// before it.
//
// The cut is what privacy needs: EDNS data outside a well-formed OPT (an option overrunning its
// RDATA, an OPT record after the counted ones, a Client Subnet option whose address spills into
// the next option) can hold a client's subnet that no option-by-option scrub would find.
func ScanOptions(msg []byte, fn func(Option)) (cut int) {
	h, ok := ParseHeader(msg)
	if !ok {
		return 0
	}
	off := HeaderLen
	for i := 0; i < int(h.QDCount); i++ {
		next, ok := skipName(msg, off)
		if !ok || next+4 > len(msg) {
			return off
		}
		off = next + 4
	}
	total := int(h.ANCount) + int(h.NSCount) + int(h.ARCount)
	for i := 0; i < total; i++ {
		next, ok := skipName(msg, off)
		if !ok || next+10 > len(msg) {
			return off
		}
		typ := binary.BigEndian.Uint16(msg[next:])
		rdlen := int(binary.BigEndian.Uint16(msg[next+8:]))
		rd := next + 10
		if rd+rdlen > len(msg) {
			return off
		}
		if typ == 41 && !walkOPT(msg[:rd+rdlen], rd, fn) {
			return rd
		}
		off = rd + rdlen
	}
	return off
}

// walkOPT reports the options of the OPT RDATA that runs from off to the end of msg, and whether
// they fill it exactly and every Client Subnet option among them is well formed.
func walkOPT(msg []byte, off int, fn func(Option)) bool {
	for off < len(msg) {
		if off+4 > len(msg) {
			return false
		}
		code := binary.BigEndian.Uint16(msg[off:])
		l := int(binary.BigEndian.Uint16(msg[off+2:]))
		if off+4+l > len(msg) {
			return false
		}
		// Judged before fn, which may zero the option.
		bad := code == OptionECS && !wellFormedECS(msg[off+4:off+4+l])
		fn(Option{Code: code, Off: off, Len: l})
		if bad {
			return false
		}
		off += 4 + l
	}
	return true
}

// wellFormedECS: RFC 7871 §6: a known family, source and scope prefixes within it, and exactly as many
// address octets as the source prefix needs. Anything else cannot be told apart from an address
// that continues beyond the option.
func wellFormedECS(d []byte) bool {
	if len(d) < 4 {
		return false
	}
	fam, src, scope := binary.BigEndian.Uint16(d), int(d[2]), int(d[3])
	var max int
	switch fam {
	case 1:
		max = 32
	case 2:
		max = 128
	default:
		return false
	}
	return src <= max && scope <= max && len(d) == 4+(src+7)/8
}

package dnsqr

import (
	"errors"
	"fmt"
	"math"
	"net/netip"

	"google.golang.org/protobuf/encoding/protowire"
)

// AppendProto appends r's protobuf encoding to b, in protobuf-c's order (field number order,
// repeated scalars unpacked), and returns the extended slice. It allocates only when b lacks room.
func AppendProto(b []byte, r *Record) []byte {
	b = appendUint(b, 1, uint64(r.Type))
	b = appendAddr(b, 2, r.QueryIP)
	b = appendAddr(b, 3, r.ResponseIP)
	b = appendUint(b, 4, uint64(r.Proto))
	b = appendUint(b, 5, uint64(r.QueryPort))
	b = appendUint(b, 6, uint64(r.ResponsePort))
	b = appendUint(b, 7, uint64(r.ID))
	if r.HasQuestion {
		b = appendBytes(b, 8, r.Qname)
		b = appendUint(b, 9, uint64(r.Qtype))
		b = appendUint(b, 10, uint64(r.Qclass))
	}
	if r.HasRcode {
		b = appendUint(b, 11, uint64(r.Rcode))
	}
	b = appendPackets(b, 12, r.QueryPackets, r.QueryTimes)
	b = appendPackets(b, 15, r.ResponsePackets, r.ResponseTimes)
	if r.TCP != nil {
		b = appendBytes(b, 18, r.TCP)
	}
	if r.ICMP != nil {
		b = appendBytes(b, 19, r.ICMP)
	}
	if r.HasTimeout {
		b = protowire.AppendTag(b, 20, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, math.Float64bits(r.Timeout))
	}
	if r.HasChecksum {
		b = appendUint(b, 21, uint64(r.UDPChecksum))
	}
	if r.HasResolverZeroed {
		v := uint64(0)
		if r.ResolverZeroed {
			v = 1
		}
		b = appendUint(b, 22, v)
	}
	return b
}

// appendPackets writes the packets, then their seconds, then their nanoseconds (fields n, n+1,
// n+2), which is how protobuf-c lays out three parallel repeated fields.
func appendPackets(b []byte, n protowire.Number, pkts [][]byte, times []int64) []byte {
	for _, p := range pkts {
		b = appendBytes(b, n, p)
	}
	for _, t := range times {
		b = protowire.AppendTag(b, n+1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(splitSec(t)))
	}
	for _, t := range times {
		b = protowire.AppendTag(b, n+2, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, uint32(splitNsec(t)))
	}
	return b
}

func splitSec(t int64) int64 {
	s := t / 1e9
	if t%1e9 < 0 {
		s--
	}
	return s
}

func splitNsec(t int64) int32 {
	n := t % 1e9
	if n < 0 {
		n += 1e9
	}
	return int32(n)
}

func appendUint(b []byte, n protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, n, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendBytes(b []byte, n protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, n, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendAddr(b []byte, n protowire.Number, a netip.Addr) []byte {
	b = protowire.AppendTag(b, n, protowire.BytesType)
	if a.Is4() {
		v := a.As4()
		return protowire.AppendBytes(b, v[:])
	}
	if !a.IsValid() {
		return protowire.AppendVarint(b, 0)
	}
	v := a.As16()
	return protowire.AppendBytes(b, v[:])
}

// ErrMalformed is returned by Parse for bytes that are not a base:dnsqr message.
var ErrMalformed = errors.New("malformed base:dnsqr payload")

// Parse decodes a base:dnsqr payload into a fresh Record. The record's slices alias b.
func Parse(b []byte) (*Record, error) {
	r := &Record{}
	var secs, nsecs [2][]int64 // query, response
	var required uint32
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, fmt.Errorf("%w: %v", ErrMalformed, protowire.ParseError(n))
		}
		b = b[n:]
		var v uint64
		var bs []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			bs, n = protowire.ConsumeBytes(b)
		case protowire.Fixed32Type:
			var v32 uint32
			v32, n = protowire.ConsumeFixed32(b)
			v = uint64(v32)
		case protowire.Fixed64Type:
			v, n = protowire.ConsumeFixed64(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return nil, fmt.Errorf("%w: field %d: %v", ErrMalformed, num, protowire.ParseError(n))
		}
		b = b[n:]
		if num >= 1 && num <= 7 {
			required |= 1 << num
		}
		switch num {
		case 1:
			r.Type = Type(v)
		case 2, 3:
			a, ok := netip.AddrFromSlice(bs)
			if !ok && len(bs) != 0 {
				return nil, fmt.Errorf("%w: address of %d octets", ErrMalformed, len(bs))
			}
			if num == 2 {
				r.QueryIP = a
			} else {
				r.ResponseIP = a
			}
		case 4:
			r.Proto = uint8(v)
		case 5:
			r.QueryPort = uint16(v)
		case 6:
			r.ResponsePort = uint16(v)
		case 7:
			r.ID = uint16(v)
		case 8:
			r.Qname, r.HasQuestion = bs, true
		case 9:
			r.Qtype, r.HasQuestion = uint16(v), true
		case 10:
			r.Qclass, r.HasQuestion = uint16(v), true
		case 11:
			r.Rcode, r.HasRcode = uint16(v), true
		case 12:
			r.QueryPackets = append(r.QueryPackets, bs)
		case 13:
			secs[0] = append(secs[0], int64(v))
		case 14:
			nsecs[0] = append(nsecs[0], int64(int32(uint32(v))))
		case 15:
			r.ResponsePackets = append(r.ResponsePackets, bs)
		case 16:
			secs[1] = append(secs[1], int64(v))
		case 17:
			nsecs[1] = append(nsecs[1], int64(int32(uint32(v))))
		case 18:
			r.TCP = bs
		case 19:
			r.ICMP = bs
		case 20:
			r.Timeout, r.HasTimeout = math.Float64frombits(v), true
		case 21:
			r.UDPChecksum, r.HasChecksum = Checksum(v), true
		case 22:
			r.ResolverZeroed, r.HasResolverZeroed = v != 0, true
		}
	}
	if required != 0xfe {
		return nil, fmt.Errorf("%w: required fields missing", ErrMalformed)
	}
	for i, dst := range []*[]int64{&r.QueryTimes, &r.ResponseTimes} {
		if len(secs[i]) != len(nsecs[i]) {
			return nil, fmt.Errorf("%w: %d seconds but %d nanoseconds", ErrMalformed, len(secs[i]), len(nsecs[i]))
		}
		for j := range secs[i] {
			*dst = append(*dst, secs[i][j]*1e9+nsecs[i][j])
		}
	}
	return r, nil
}

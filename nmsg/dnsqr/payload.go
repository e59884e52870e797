package dnsqr

import "github.com/sie-europe/dnssensor/nmsg"

// Payload sets p to r as a base:dnsqr payload stamped with the record's time, encoding r into buf
// (reused, and returned for the next call). The envelope fields (source, operator, group) are the
// caller's.
func Payload(p *nmsg.Payload, buf []byte, r *Record) []byte {
	buf = AppendProto(buf[:0], r)
	t := r.Time()
	*p = nmsg.Payload{
		Vid: VendorBase, Msgtype: MsgtypeDnsQR,
		TimeSec: t / 1e9, TimeNsec: uint32(t % 1e9), Data: buf,
	}
	return buf
}

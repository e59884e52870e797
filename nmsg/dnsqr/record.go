// Package dnsqr holds the base:dnsqr record (NMSG vendor 1, message type 9) and its encodings:
// the protobuf bytes exactly as the C reference (protobuf-c) writes them, and nmsgtool's JSON.
//
// The encoder is hand-written rather than proto.Marshal because the capture path must not allocate
// per record and because protobuf-c's field order and unpacked repeated scalars are part of the
// byte-compatibility promise; a test cross-checks it against go-nmsg's generated type.
package dnsqr

import (
	"net/netip"
)

// Vendor and message type of base:dnsqr in the NMSG registry.
const (
	VendorBase   = 1
	MsgtypeDnsQR = 9
)

// Type is DnsQR.DnsQRType.
type Type uint8

const (
	UDPInvalid             Type = 0
	UDPQueryResponse       Type = 1
	UDPUnansweredQuery     Type = 2
	UDPUnsolicitedResponse Type = 3
	TCP                    Type = 4
	ICMP                   Type = 5
	UDPQueryOnly           Type = 6
	UDPResponseOnly        Type = 7
)

var typeNames = [...]string{"UDP_INVALID", "UDP_QUERY_RESPONSE", "UDP_UNANSWERED_QUERY",
	"UDP_UNSOLICITED_RESPONSE", "TCP", "ICMP", "UDP_QUERY_ONLY", "UDP_RESPONSE_ONLY"}

func (t Type) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return "UNKNOWN"
}

// Checksum is DnsQR.UdpChecksum: the verdict on the response's UDP checksum.
type Checksum uint8

const (
	ChecksumError     Checksum = 0
	ChecksumAbsent    Checksum = 1
	ChecksumIncorrect Checksum = 2
	ChecksumCorrect   Checksum = 3
)

var checksumNames = [...]string{"ERROR", "ABSENT", "INCORRECT", "CORRECT"}

func (c Checksum) String() string {
	if int(c) < len(checksumNames) {
		return checksumNames[c]
	}
	return "UNKNOWN"
}

// Record is one base:dnsqr message. Times are nanoseconds since the Unix epoch, from the capture.
//
// Byte slices are owned by whoever filled the record; Append* only reads them, so a caller may reuse
// a Record (and its slices' backing arrays) as soon as the encoder returns.
type Record struct {
	Type         Type
	QueryIP      netip.Addr
	ResponseIP   netip.Addr
	Proto        uint8
	QueryPort    uint16
	ResponsePort uint16
	ID           uint16

	HasQuestion bool // qname, qtype and qclass are set together
	Qname       []byte
	Qtype       uint16
	Qclass      uint16

	HasRcode bool
	Rcode    uint16

	QueryPackets    [][]byte
	QueryTimes      []int64
	ResponsePackets [][]byte
	ResponseTimes   []int64

	TCP  []byte
	ICMP []byte

	HasTimeout bool
	Timeout    float64 // seconds

	HasChecksum bool
	UDPChecksum Checksum

	HasResolverZeroed bool
	ResolverZeroed    bool

	// EventTime is the payload time of a record without packets (an ICMP error that matched no
	// pending query); Time prefers the packets' times.
	EventTime int64
}

// Reset clears r for reuse while keeping the backing arrays of its slices.
func (r *Record) Reset() {
	qp, qt, rp, rt := r.QueryPackets[:0], r.QueryTimes[:0], r.ResponsePackets[:0], r.ResponseTimes[:0]
	*r = Record{QueryPackets: qp, QueryTimes: qt, ResponsePackets: rp, ResponseTimes: rt}
}

// Time is the NMSG payload time: the first query packet's, else the first response packet's.
func (r *Record) Time() int64 {
	if len(r.QueryTimes) > 0 {
		return r.QueryTimes[0]
	}
	if len(r.ResponseTimes) > 0 {
		return r.ResponseTimes[0]
	}
	return r.EventTime
}

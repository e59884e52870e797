package privacy

import (
	"encoding/binary"

	"github.com/sie-europe/dnssensor/internal/inet"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
)

// Verdict is the C reference's UDP checksum verdict for a response: ABSENT for a zero checksum,
// CORRECT or INCORRECT from the pseudo-header plus the payload of every fragment, ERROR when the
// packets do not parse or the first fragment is missing.
func Verdict(pkts [][]byte) dnsqr.Checksum {
	var acc uint64
	found := false
	for _, pkt := range pkts {
		var p decode.Packet
		if r := decode.DecodeIP(pkt, &p); r != decode.OK || (p.Proto != decode.ProtoUDP && !(p.Frag && p.FragOff != 0)) {
			return dnsqr.ChecksumError // a later fragment's Proto may name a header after the Fragment header
		}
		data := p.L4
		if !p.Frag || p.FragOff == 0 {
			if len(data) < 8 {
				return dnsqr.ChecksumError
			}
			if binary.BigEndian.Uint16(data[6:]) == 0 {
				return dnsqr.ChecksumAbsent
			}
			acc = pseudo(acc, &p, binary.BigEndian.Uint16(data[4:]))
			found = true
		}
		// Every fragment's data sums from an even position: fragment offsets are multiples of 8.
		acc = inet.Sum(acc, data, false)
	}
	if !found {
		return dnsqr.ChecksumError
	}
	if ^inet.Fold(acc) == 0 {
		return dnsqr.ChecksumCorrect
	}
	return dnsqr.ChecksumIncorrect
}

// pseudo adds the UDP/TCP pseudo-header of p with the given upper-layer length.
func pseudo(acc uint64, p *decode.Packet, l4len uint16) uint64 {
	return inet.Pseudo(acc, p.Src, p.Dst, p.Proto, int(l4len))
}

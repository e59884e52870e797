package pipeline

import (
	"net/netip"

	"github.com/sie-europe/dnssensor/internal/pktbuild"
	"github.com/sie-europe/dnssensor/sensor/internal/tcpdns"
)

// maxUDPMessage is the largest DNS message an IPv4 datagram can carry (65535 - 20 - 8); a
// bigger one cannot have crossed the wire as UDP, so a source claiming it is lying.
const maxUDPMessage = 65535 - 20 - 8

// Message handles one whole DNS message that arrived without a packet (dnstap): it is wrapped in
// a synthesized IP/UDP or IP/TCP datagram (internal/pktbuild) and takes the same path as captured
// traffic, so pairing, filters, the privacy scrub and the record shape are those of a tap. ts is
// the message's time in ns; msg is only read during the call. It reports false when the message
// cannot be represented (address families differ, or too long for UDP); nothing is counted then,
// the caller counts it.
func (p *Pipeline) Message(ts int64, tcp bool, src, dst netip.AddrPort, msg []byte) bool {
	if !src.Addr().IsValid() || src.Addr().Is4() != dst.Addr().Is4() {
		return false
	}
	if tcp {
		if len(msg) > 65535 {
			return false
		}
		p.stats.Frames++
		p.stats.IP++
		p.advance(ts)
		p.onTCPMessage(&tcpdns.Message{Src: src, Dst: dst, Time: ts, Data: msg})
		return true
	}
	if len(msg) > maxUDPMessage {
		return false
	}
	p.mbuf = pktbuild.AppendUDP(p.mbuf[:0], src, dst, msg)
	p.IPPacket(ts, p.mbuf)
	return true
}

// Idle lets time pass without a packet: a live source calls it when its inputs are quiet, so
// queries still expire as unanswered. ts must come from the same clock as the packets' times
// (the capture ring's). Expiry uses the same rule as a packet at ts would.
func (p *Pipeline) Idle(ts int64) {
	if ts <= p.now {
		return
	}
	p.expire(p.now, false)
	p.now = ts
	p.expire(p.now, false)
	if p.held.n > 0 {
		p.expireHeld(p.now, false)
	}
}

package pipeline

import (
	"math/rand/v2"
	"net/netip"
)

// clientSlots is the size of the remembered-clients set: 512 KiB, allocated only when
// unsolicited records are kept in resolver mode.
const clientSlots = 1 << 16

// clientSet remembers, bounded and hashed (no address is kept), the addresses seen on the far
// side of a resolver's own service port (53 or 5353): its clients. A record whose far address was
// not vouched for by a resolver query (an unsolicited response) is never stored when that address
// is one of them: a client answering from port 53 to a resolver's ephemeral port looks exactly
// like a late authority otherwise. It is direct-mapped: a newer client can push an older one out,
// so it narrows the hole rather than closing it; unsolicited records being off by default closes
// it.
type clientSet struct {
	seed  uint64
	slots []uint64
}

func newClientSet() *clientSet {
	return &clientSet{seed: rand.Uint64(), slots: make([]uint64, clientSlots)}
}

// key uses the pair table's seeded hash: which addresses share a slot is unknown outside.
func (s *clientSet) key(a netip.Addr) uint64 {
	k := flowKey{qip: a.As16()}
	return k.hash(s.seed) | 1 // 0 marks an empty slot
}

func (s *clientSet) add(a netip.Addr) {
	h := s.key(a)
	s.slots[h&(clientSlots-1)] = h
}

func (s *clientSet) has(a netip.Addr) bool {
	h := s.key(a)
	return s.slots[h&(clientSlots-1)] == h
}

// noteClient remembers the far end of a message refused by the privacy rule when the other end is
// a resolver on its service port.
func (p *Pipeline) noteClient(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) {
	if isDNSPort(sport) && p.initiator(src, dst) && !p.initiator(dst, src) {
		p.clients.add(dst)
	}
	if isDNSPort(dport) && p.initiator(dst, src) && !p.initiator(src, dst) {
		p.clients.add(src)
	}
}

package pipeline

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"net/netip"

	"github.com/sie-europe/dnssensor/sensor/internal/dnswire"
)

// flowKey is the C reference's hash key: addresses, protocol, ports and DNS id, oriented from the
// query's side.
type flowKey struct {
	qip, rip     [16]byte
	qport, rport uint16
	id           uint16
	proto        uint8
	v4           bool
}

func makeKey(qip, rip netip.Addr, proto uint8, qport, rport, id uint16) flowKey {
	return flowKey{qip: qip.As16(), rip: rip.As16(), qport: qport, rport: rport, id: id, proto: proto, v4: qip.Is4()}
}

// hash mixes the key with a per-table random seed. Only the resolver's own queries are inserted
// and it chooses ports and ids at random, so an outsider cannot aim collisions; the seed makes
// sure of it anyway.
func (k *flowKey) hash(seed uint64) uint64 {
	mix := func(h, v uint64) uint64 {
		hi, lo := bits.Mul64(h^v, 0x9e3779b97f4a7c15)
		return hi ^ lo
	}
	h := seed
	h = mix(h, binary.LittleEndian.Uint64(k.qip[0:]))
	h = mix(h, binary.LittleEndian.Uint64(k.qip[8:]))
	h = mix(h, binary.LittleEndian.Uint64(k.rip[0:]))
	h = mix(h, binary.LittleEndian.Uint64(k.rip[8:]))
	v := uint64(k.qport) | uint64(k.rport)<<16 | uint64(k.id)<<32 | uint64(k.proto)<<48
	if k.v4 {
		v |= 1 << 56
	}
	return mix(h, v)
}

const nilIdx = -1

// holdMax bounds the number of held responses (Config.Hold); HoldMaxBytes bounds their octets.
const holdMax = 4096

// entry is one pending query. Its packet bytes live in buf, reused across the entries' lives so the
// steady state does not allocate.
type entry struct {
	key        flowKey
	hash       uint64
	qip, rip   netip.Addr
	hasQ       bool
	qname      []byte // aliases buf
	qtype      uint16
	qclass     uint16
	flags      uint16
	rcode      uint16 // of a held response
	oseq       uint64 // a held response's place in the output (order.go), 0: none
	buf        []byte
	pkts       [][]byte
	times      []int64
	prev, next int32 // insertion order (oldest at head)
	slot       int32 // where the entry sits in the slots array
}

// table holds pending queries, bounded by max; the caller evicts the oldest when it is full.
//
// It is an open-addressing hash table with linear probing and backward-shift deletion, as the C
// reference uses: no tombstones, so the constant insert/delete churn of a pair table never makes
// probes longer (Go's map degraded to 14% of the sensor's CPU time here on that churn). Entries
// with the same key sit in probe order, which is insertion order, so the oldest matches first.
type table struct {
	max        int
	slots      []int32 // entry index + 1; 0 is empty
	mask       uint64
	seed       uint64
	e          []entry
	free       []int32
	head, tail int32
	n          int
	bytes      int // capacity of the entries' packet buffers (budget.go)
}

func newTable(max int) *table {
	size := 16
	for size < 2*max {
		size *= 2
	}
	return &table{max: max, slots: make([]int32, size), mask: uint64(size - 1), seed: rand.Uint64(),
		head: nilIdx, tail: nilIdx}
}

// alloc returns a free entry index for key k, linked at the tail of the insertion order and into the
// hash table. The caller fills it. The table must not be full.
func (t *table) alloc(k flowKey) int32 {
	var i int32
	if n := len(t.free); n > 0 {
		i = t.free[n-1]
		t.free = t.free[:n-1]
	} else {
		t.e = append(t.e, entry{})
		i = int32(len(t.e) - 1)
	}
	e := &t.e[i]
	e.key, e.hash = k, k.hash(t.seed)
	e.buf, e.pkts, e.times = e.buf[:0], e.pkts[:0], e.times[:0]
	e.prev, e.next = t.tail, nilIdx
	if t.tail != nilIdx {
		t.e[t.tail].next = i
	} else {
		t.head = i
	}
	t.tail = i
	s := e.hash & t.mask
	for t.slots[s] != 0 {
		s = (s + 1) & t.mask
	}
	t.slots[s], e.slot = i+1, int32(s)
	t.n++
	return i
}

// find calls fn for the pending entries with key k, oldest first, until fn returns true; it
// returns that entry's index or nilIdx.
func (t *table) find(k *flowKey, fn func(e *entry) bool) int32 {
	h := k.hash(t.seed)
	for s := h & t.mask; t.slots[s] != 0; s = (s + 1) & t.mask {
		i := t.slots[s] - 1
		e := &t.e[i]
		if e.hash == h && e.key == *k && fn(e) {
			return i
		}
	}
	return nilIdx
}

// match finds and unlinks the oldest pending query for k whose question equals the response's
// (ignoring case), or, for a response without a question whose rcode is FORMERR, SERVFAIL, NOTIMP
// or REFUSED, the oldest for k at all.
func (t *table) match(k flowKey, hasQ bool, q dnswire.Question, rcode uint16) int32 {
	i := t.find(&k, func(e *entry) bool {
		if hasQ && e.hasQ {
			return e.qtype == q.Type && e.qclass == q.Class && dnswire.EqualFold(e.qname, q.Name)
		}
		switch rcode {
		case 1, 2, 4, 5:
			return true
		}
		return false
	})
	if i != nilIdx {
		t.unlink(i)
	}
	return i
}

// first returns the oldest pending query for k without unlinking it.
func (t *table) first(k flowKey) int32 {
	return t.find(&k, func(*entry) bool { return true })
}

// unlink removes i from the hash table and the insertion order; the caller releases it after use.
func (t *table) unlink(i int32) {
	e := &t.e[i]
	// Backward-shift deletion: pull later members of the probe run into the hole when their home
	// slot does not lie cyclically between the hole and their current slot.
	hole := uint64(e.slot)
	t.slots[hole] = 0
	for j := (hole + 1) & t.mask; t.slots[j] != 0; j = (j + 1) & t.mask {
		m := t.slots[j] - 1
		home := t.e[m].hash & t.mask
		if (j-home)&t.mask >= (j-hole)&t.mask {
			t.slots[hole], t.slots[j] = t.slots[j], 0
			t.e[m].slot = int32(hole)
			hole = j
		}
	}
	if e.prev != nilIdx {
		t.e[e.prev].next = e.next
	} else {
		t.head = e.next
	}
	if e.next != nilIdx {
		t.e[e.next].prev = e.prev
	} else {
		t.tail = e.prev
	}
	e.prev, e.next, e.slot = nilIdx, nilIdx, nilIdx
	t.n--
}

func (t *table) release(i int32) {
	t.shed(i)
	t.free = append(t.free, i)
}

// memory estimates the octets the table holds, for the stats line.
func (t *table) memory() int {
	n := 4 * len(t.slots)
	for i := range t.e {
		n += cap(t.e[i].buf) + 160
	}
	return n
}

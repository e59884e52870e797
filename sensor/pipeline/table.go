package pipeline

import (
	"net/netip"

	"github.com/sie-europe/dnssensor/sensor/dnswire"
)

// flowKey is the C reference's hash key: addresses, protocol, ports and DNS id, oriented from the
// query's side. Arrays, not netip.Addr, keep the map key pointer-free and cheap to hash.
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

const nilIdx = -1

// entry is one pending query. Its packet bytes live in buf, reused across the entries' lives so the
// steady state does not allocate.
type entry struct {
	key        flowKey
	qip, rip   netip.Addr
	hasQ       bool
	qname      []byte // aliases buf
	qtype      uint16
	qclass     uint16
	flags      uint16
	buf        []byte
	pkts       [][]byte
	times      []int64
	prev, next int32 // insertion order (oldest at head)
	chain      int32 // next pending entry with the same key, oldest first
	used       bool
}

// table holds pending queries, bounded by max; the oldest is evicted when it is full.
type table struct {
	max        int
	m          map[flowKey]int32
	e          []entry
	free       []int32
	head, tail int32
	n          int
}

func newTable(max int) *table {
	hint := max
	if hint > 1<<16 {
		hint = 1 << 16 // the map grows beyond this only if the traffic needs it
	}
	return &table{max: max, m: make(map[flowKey]int32, hint), head: nilIdx, tail: nilIdx}
}

// alloc returns a free entry index, already linked at the tail of the insertion order and into
// the chain for k. The caller fills it.
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
	e.key, e.used, e.chain = k, true, nilIdx
	e.buf, e.pkts, e.times = e.buf[:0], e.pkts[:0], e.times[:0]
	e.prev, e.next = t.tail, nilIdx
	if t.tail != nilIdx {
		t.e[t.tail].next = i
	} else {
		t.head = i
	}
	t.tail = i
	if j, ok := t.m[k]; ok {
		for t.e[j].chain != nilIdx {
			j = t.e[j].chain
		}
		t.e[j].chain = i
	} else {
		t.m[k] = i
	}
	t.n++
	return i
}

// match finds and unlinks the oldest pending query for k whose question equals the response's
// (ignoring case), or, for a response without a question whose rcode is FORMERR, SERVFAIL, NOTIMP
// or REFUSED, the oldest for k at all.
func (t *table) match(k flowKey, hasQ bool, q dnswire.Question, rcode uint16) int32 {
	j, ok := t.m[k]
	if !ok {
		return nilIdx
	}
	for ; j != nilIdx; j = t.e[j].chain {
		e := &t.e[j]
		if hasQ && e.hasQ {
			if e.qtype == q.Type && e.qclass == q.Class && dnswire.EqualFold(e.qname, q.Name) {
				t.unlink(j)
				return j
			}
			continue
		}
		switch rcode {
		case 1, 2, 4, 5:
			t.unlink(j)
			return j
		}
	}
	return nilIdx
}

// unlink removes i from the map chain and the insertion order; the caller releases it after use.
func (t *table) unlink(i int32) {
	e := &t.e[i]
	if h := t.m[e.key]; h == i {
		if e.chain == nilIdx {
			delete(t.m, e.key)
		} else {
			t.m[e.key] = e.chain
		}
	} else {
		for j := h; j != nilIdx; j = t.e[j].chain {
			if t.e[j].chain == i {
				t.e[j].chain = e.chain
				break
			}
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
	e.prev, e.next, e.chain = nilIdx, nilIdx, nilIdx
	t.n--
}

func (t *table) release(i int32) {
	t.e[i].used = false
	t.free = append(t.free, i)
}

// memory estimates the octets the table holds, for the stats line.
func (t *table) memory() int {
	n := 0
	for i := range t.e {
		n += cap(t.e[i].buf) + 96
	}
	return n
}

// Package defrag puts fragmented IPv4 and IPv6 datagrams back together from passively captured
// fragments, keeping each original fragment so that the stored record can hold one packet per
// fragment as the C reference does.
//
// Everything is bounded because fragments come from the wire: the number of datagrams being
// assembled, the fragments per datagram, the octets held in total, and the time a datagram may stay
// incomplete (measured in packet time, so a replay behaves the same as live capture). Overlapping
// fragments make the whole datagram invalid (RFC 5722), which also defeats overlap-based evasion.
package defrag

import (
	"net/netip"
	"sort"
	"time"

	"github.com/sie-europe/dnssensor/sensor/internal/budget"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
)

// Config bounds the reassembler. Zero fields take the defaults.
type Config struct {
	MaxDatagrams int           // datagrams being assembled at once (default 4096)
	MaxFragments int           // fragments per datagram (default 64)
	MaxBytes     int           // octets of fragments held in total (default 16 MiB)
	Timeout      time.Duration // an incomplete datagram is dropped after this much packet time (default 30 s)
	// Budget, when set, bounds fragments together with the pair table and TCP buffers; the
	// caller registers the Reassembler with it.
	Budget *budget.Budget
}

func (c *Config) defaults() {
	if c.MaxDatagrams <= 0 {
		c.MaxDatagrams = 4096
	}
	if c.MaxFragments <= 0 {
		c.MaxFragments = 64
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = 16 << 20
	}
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Second
	}
}

// Stats counts what the reassembler saw and dropped.
type Stats struct {
	Fragments  uint64 // fragments offered
	Datagrams  uint64 // datagrams completed
	Expired    uint64 // incomplete datagrams dropped after the timeout
	Evicted    uint64 // incomplete datagrams dropped to make room (datagram or byte cap)
	Overlaps   uint64 // datagrams dropped for overlapping fragments
	Duplicates uint64 // exact duplicate fragments ignored
	TooMany    uint64 // datagrams dropped for exceeding MaxFragments
	TooBig     uint64 // datagrams dropped for exceeding 65535 octets
	NoBudget   uint64 // datagrams dropped because the shared memory budget had no room
	FragsLost  uint64 // fragments thrown away with dropped datagrams
}

type key struct {
	src, dst netip.Addr
	id       uint32
	proto    uint8
}

type frag struct {
	pkt  []byte // copy of the whole IP fragment
	hdr  int    // octets of pkt before the fragment data
	off  int
	more bool
	time int64
}

type entry struct {
	key   key
	frags []frag
	first int64 // packet time of the first fragment seen
	bytes int
	dead  bool // removed from the map; left in the FIFO until it reaches the front
}

// Datagram is a completed datagram. Its slices are valid until the next call on the Reassembler.
type Datagram struct {
	Src, Dst netip.Addr
	Proto    uint8
	L4       []byte   // the reassembled upper-layer octets
	Frags    [][]byte // the original IP fragments, in offset order
	Times    []int64  // capture time of each fragment
}

// Reassembler is not safe for concurrent use: one per capture goroutine.
type Reassembler struct {
	cfg   Config
	m     map[key]*entry
	fifo  []*entry
	bytes int
	stats Stats
	out   Datagram
	l4    []byte
	cur   *entry // the datagram being added to: never evicted for its own fragment
}

// New returns a Reassembler bounded by cfg.
func New(cfg Config) *Reassembler {
	cfg.defaults()
	return &Reassembler{cfg: cfg, m: make(map[key]*entry)}
}

// Stats returns the counters.
func (r *Reassembler) Stats() Stats { return r.stats }

// Bytes is the number of fragment octets held now.
func (r *Reassembler) Bytes() int { return r.bytes }

// Pending is the number of incomplete datagrams held now.
func (r *Reassembler) Pending() int { return len(r.m) }

// Add offers one fragment (p.Frag is true) captured at time now. It returns the completed datagram
// when this fragment completes one, else nil.
func (r *Reassembler) Add(p *decode.Packet, now int64) *Datagram {
	r.stats.Fragments++
	r.Expire(now)
	k := key{src: p.Src, dst: p.Dst, id: p.FragID}
	if p.Src.Is4() {
		k.proto = p.Proto // IPv4 keys on the protocol too (RFC 791); IPv6 on the id alone
	}
	e := r.m[k]
	if e == nil {
		for len(r.m) >= r.cfg.MaxDatagrams {
			r.evictOldest()
		}
		e = &entry{key: k, first: now}
		r.m[k] = e
		r.fifo = append(r.fifo, e)
		if len(r.fifo) > 2*r.cfg.MaxDatagrams {
			r.compact()
		}
	}
	dataLen := len(p.Net) - p.FragData
	end := p.FragOff + dataLen
	if end > 65535 {
		r.stats.TooBig++
		r.drop(e)
		return nil
	}
	for _, f := range e.frags {
		fend := f.off + len(f.pkt) - f.hdr
		if f.off == p.FragOff && fend == end {
			r.stats.Duplicates++
			return nil
		}
		if p.FragOff < fend && f.off < end {
			r.stats.Overlaps++
			r.drop(e)
			return nil
		}
	}
	if len(e.frags) >= r.cfg.MaxFragments {
		r.stats.TooMany++
		r.drop(e)
		return nil
	}
	for r.bytes+len(p.Net) > r.cfg.MaxBytes && len(r.fifo) > 0 && r.fifo[0] != e {
		r.evictOldest()
	}
	r.cur = e
	ok := r.cfg.Budget.Reserve(len(p.Net))
	r.cur = nil
	if !ok {
		r.stats.NoBudget++
		r.drop(e)
		return nil
	}
	pkt := append([]byte(nil), p.Net...)
	e.frags = append(e.frags, frag{pkt: pkt, hdr: p.FragData, off: p.FragOff, more: p.FragMore, time: now})
	e.bytes += len(pkt)
	r.bytes += len(pkt)
	return r.complete(e, p.Proto)
}

func (r *Reassembler) complete(e *entry, proto uint8) *Datagram {
	sort.Slice(e.frags, func(i, j int) bool { return e.frags[i].off < e.frags[j].off })
	next := 0
	for i, f := range e.frags {
		if f.off != next {
			return nil
		}
		next = f.off + len(f.pkt) - f.hdr
		if !f.more {
			if i != len(e.frags)-1 {
				// Data beyond the final fragment: drop as malformed.
				r.stats.Overlaps++
				r.drop(e)
				return nil
			}
			break
		}
		if i == len(e.frags)-1 {
			return nil
		}
	}
	if e.frags[len(e.frags)-1].more {
		return nil
	}
	r.l4 = r.l4[:0]
	r.out.Frags, r.out.Times = r.out.Frags[:0], r.out.Times[:0]
	for _, f := range e.frags {
		r.l4 = append(r.l4, f.pkt[f.hdr:]...)
		r.out.Frags = append(r.out.Frags, f.pkt)
		r.out.Times = append(r.out.Times, f.time)
	}
	r.out.Src, r.out.Dst, r.out.L4 = e.key.src, e.key.dst, r.l4
	// The protocol is what the first fragment's header chain ends in; the headers after an
	// IPv6 Fragment header (Destination Options) are part of the reassembled data.
	r.out.Proto = proto
	if e.frags[0].pkt[0]>>4 == 4 {
		r.out.Proto = e.frags[0].pkt[9]
	} else if p, ext := upperLayer(e.frags[0].pkt); p >= 0 && ext <= len(r.l4) {
		r.out.Proto, r.out.L4 = uint8(p), r.l4[ext:]
	}
	r.forget(e)
	r.stats.Datagrams++
	return &r.out
}

// upperLayer re-walks an IPv6 first fragment's header chain for the protocol it ends in and
// the octets of extension headers after the Fragment header; -1 when it does not parse (then
// the caller's value stands).
func upperLayer(pkt []byte) (proto, ext int) {
	var p decode.Packet
	if decode.DecodeIP(pkt, &p) != decode.OK || !p.Frag {
		return -1, 0
	}
	return int(p.Proto), p.HdrLen - p.FragData
}

// Expire drops incomplete datagrams whose first fragment is older than the timeout at packet
// time now.
func (r *Reassembler) Expire(now int64) {
	limit := int64(r.cfg.Timeout)
	for len(r.fifo) > 0 {
		e := r.fifo[0]
		if !e.dead && now-e.first <= limit {
			return
		}
		r.fifo[0] = nil
		r.fifo = r.fifo[1:]
		if !e.dead {
			r.stats.Expired++
			r.stats.FragsLost += uint64(len(e.frags))
			r.forget(e)
		}
	}
	if len(r.fifo) == 0 {
		r.fifo = r.fifo[:0:0]
	}
}

// Flush drops everything still incomplete (end of input), counting it as expired.
func (r *Reassembler) Flush() {
	for _, e := range r.fifo {
		if !e.dead {
			r.stats.Expired++
			r.stats.FragsLost += uint64(len(e.frags))
			r.forget(e)
		}
	}
	r.fifo = nil
}

func (r *Reassembler) evictOldest() {
	for len(r.fifo) > 0 {
		e := r.fifo[0]
		r.fifo[0] = nil
		r.fifo = r.fifo[1:]
		if !e.dead {
			r.stats.Evicted++
			r.stats.FragsLost += uint64(len(e.frags))
			r.forget(e)
			return
		}
	}
}

// compact drops completed entries from the FIFO: they are skipped lazily at the front, but a
// long-lived incomplete datagram at the front would otherwise let the FIFO grow with traffic.
func (r *Reassembler) compact() {
	live := r.fifo[:0]
	for _, e := range r.fifo {
		if !e.dead {
			live = append(live, e)
		}
	}
	clear(r.fifo[len(live):])
	r.fifo = live
}

func (r *Reassembler) drop(e *entry) {
	r.stats.FragsLost += uint64(len(e.frags))
	r.forget(e)
}

// forget takes e out of the map; its FIFO slot is skipped when it reaches the front.
func (r *Reassembler) forget(e *entry) {
	if e.dead {
		return
	}
	e.dead = true
	delete(r.m, e.key)
	r.bytes -= e.bytes
}

// Package budget bounds, in octets, what the pair table, IP reassembly and DNS-over-TCP
// reassembly hold together.
//
// Each has its own cap (-state-max entries, -frag-max-bytes, -tcp-max-bytes), but entry counts
// do not bound bytes: 4,000 pending 60 KB fragmented queries held 283 MiB under a 256 MiB memory
// limit. One shared budget does: before a holder stores more, it asks the budget for room, and
// the budget evicts the oldest thing any holder keeps (by packet time) until the new octets fit.
// A Budget is owned by the goroutine that owns its holders (one pipeline).
package budget

// Holder is one kind of state under the budget.
type Holder interface {
	// Bytes is what the holder keeps now, as it accounts it.
	Bytes() int
	// Oldest is the packet time of the oldest thing the holder could evict now; ok is false
	// when it has nothing it may evict (the thing being stored is never offered).
	Oldest() (t int64, ok bool)
	// EvictOldest drops that oldest thing, counting it in the holder's own statistics (a
	// pending query is emitted as unanswered, as -state-max does).
	EvictOldest()
}

// Budget is a byte limit shared by holders. A nil *Budget bounds nothing.
type Budget struct {
	max     int
	holders []Holder
	evicted [4]uint64
}

// New returns a budget of max octets.
func New(max int) *Budget { return &Budget{max: max} }

// Register adds a holder; the order of registration names it in Evicted.
func (b *Budget) Register(h Holder) {
	if b != nil {
		b.holders = append(b.holders, h)
	}
}

// Max is the limit in octets (0 for a nil budget).
func (b *Budget) Max() int {
	if b == nil {
		return 0
	}
	return b.max
}

// Used is what the holders keep together now.
func (b *Budget) Used() int {
	if b == nil {
		return 0
	}
	n := 0
	for _, h := range b.holders {
		n += h.Bytes()
	}
	return n
}

// Reserve makes room for n more octets, evicting the oldest things of any holder first. It
// returns false when n does not fit even with nothing else held: the caller drops what it
// wanted to store and counts it.
func (b *Budget) Reserve(n int) bool {
	if b == nil {
		return true
	}
	if n > b.max {
		return false
	}
	for b.Used()+n > b.max {
		oldest, victim := int64(0), -1
		for i, h := range b.holders {
			if t, ok := h.Oldest(); ok && (victim < 0 || t < oldest) {
				oldest, victim = t, i
			}
		}
		if victim < 0 {
			return false
		}
		b.holders[victim].EvictOldest()
		if victim < len(b.evicted) {
			b.evicted[victim]++
		}
	}
	return true
}

// Evicted is how many things the budget evicted from the i-th registered holder.
func (b *Budget) Evicted(i int) uint64 {
	if b == nil || i < 0 || i >= len(b.evicted) {
		return 0
	}
	return b.evicted[i]
}

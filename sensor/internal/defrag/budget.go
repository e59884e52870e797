package defrag

// Oldest and EvictOldest (with Bytes) make the Reassembler a budget.Holder.

// Oldest is the packet time of the oldest incomplete datagram, unless that is the one a fragment
// is being added to.
func (r *Reassembler) Oldest() (int64, bool) {
	for len(r.fifo) > 0 && r.fifo[0].dead {
		r.fifo[0] = nil
		r.fifo = r.fifo[1:]
	}
	if len(r.fifo) == 0 || r.fifo[0] == r.cur {
		return 0, false
	}
	return r.fifo[0].first, true
}

// EvictOldest drops the oldest incomplete datagram, counted as evicted.
func (r *Reassembler) EvictOldest() { r.evictOldest() }

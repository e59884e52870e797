package tcpdns

// Bytes, Oldest and EvictOldest make the Reassembler a budget.Holder.

// Bytes is the accounted memory held now (MemoryBytes).
func (r *Reassembler) Bytes() int { return r.mem }

// Oldest is the time of the last segment of the least recently used stream, unless that is
// the stream a segment is being added to, or the stream list is being walked.
func (r *Reassembler) Oldest() (int64, bool) {
	if r.noEvict || r.tail == nil || r.tail == r.cur {
		return 0, false
	}
	return r.tail.last, true
}

// EvictOldest drops the least recently used stream, counted as evicted.
func (r *Reassembler) EvictOldest() { r.evict(r.tail) }

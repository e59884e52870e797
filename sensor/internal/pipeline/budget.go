package pipeline

import "github.com/sie-europe/dnssensor/sensor/internal/budget"

// entryKeep is the largest packet buffer a released pair-table entry keeps for reuse. Larger
// ones are dropped, so the octets the budget accounts for are the pending queries' own, and
// evicting a query frees what it held. The kept ones are bounded by -state-max.
const entryKeep = 2048

// tableHolder puts the pair table under the shared byte budget: its oldest pending query is
// emitted as unanswered (counted in MemEvicted), as -state-max does by count.
type tableHolder struct{ p *Pipeline }

func (h tableHolder) Bytes() int { return h.p.t.bytes }

func (h tableHolder) Oldest() (int64, bool) {
	t := h.p.t
	if t.head == nilIdx {
		return 0, false
	}
	return t.e[t.head].times[0], true
}

func (h tableHolder) EvictOldest() {
	h.p.stats.MemEvicted++
	h.p.expireOne(h.p.now)
}

// newBudget shares max octets between the pair table, fragments and TCP buffers (nil: no
// shared bound), wiring the reassemblers' configurations to it.
func newBudget(max int, cfg *Config) *budget.Budget {
	if max <= 0 {
		return nil
	}
	b := budget.New(max)
	cfg.Defrag.Budget, cfg.TCP.Budget = b, b
	return b
}

// register puts the three holders under the budget once they exist.
func (p *Pipeline) registerBudget() {
	p.budget.Register(tableHolder{p})
	p.budget.Register(p.frag)
	p.budget.Register(p.tcp)
}

// reserveEntry makes room for a pending query of n octets before it is inserted, evicting the
// oldest state of any kind; false when it cannot fit at all (then it is dropped and counted).
func (p *Pipeline) reserveEntry(n int) bool {
	if p.budget.Reserve(n) {
		return true
	}
	p.stats.MemDropped++
	return false
}

// sizeEntry gives entry i a buffer of exactly n octets unless its reused one is large enough,
// keeping the table's byte count.
func (t *table) sizeEntry(i int32, n int) {
	e := &t.e[i]
	if cap(e.buf) >= n {
		return
	}
	t.bytes += n - cap(e.buf)
	e.buf = make([]byte, 0, n)
}

// shed drops a released entry's large buffer so it can be collected.
func (t *table) shed(i int32) {
	e := &t.e[i]
	if cap(e.buf) <= entryKeep {
		return
	}
	t.bytes -= cap(e.buf)
	e.buf, e.qname = nil, nil
	clear(e.pkts[:cap(e.pkts)])
}

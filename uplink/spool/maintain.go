package spool

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// maintain keeps the RAM tier small: segments the consumer has not taken
// within SpillAge, or beyond the RAM quota, are copied to the disk tier
// (all of them when final). With a healthy consumer every segment is
// acked long before SpillAge and this touches nothing but tmpfs. It also
// writes pending rejections to the ledger.
func (p *Producer) maintain(final bool) {
	horizon := p.flushRejected()
	p.mmu.Lock()
	defer p.mmu.Unlock()
	ents, err := p.ram.scan()
	if err != nil {
		p.logf("scan", "spool: scanning %s: %v", p.ram.dir, err)
		return
	}
	// Forget metadata of segments the consumer acked.
	present := make(map[uint64]bool, len(ents))
	for _, e := range ents {
		present[e.seq] = true
	}
	p.metaMu.Lock()
	for s := range p.meta {
		// Segments sealed after the scan began are not in present.
		if !present[s] && s < horizon {
			delete(p.meta, s)
		}
	}
	p.metaMu.Unlock()
	var used int64
	for _, e := range ents {
		used += e.size
	}
	now := p.opts.now().UnixNano()
	for _, e := range ents {
		over := used > p.opts.RAMQuota
		m, ok := p.ramMeta(e.seq)
		if !ok {
			continue // gone or quarantined
		}
		if !final && !over && now-m.Sealed < int64(p.opts.SpillAge) {
			// Sequence order is seal order: the rest are younger.
			break
		}
		if p.disk == nil {
			if !over {
				break
			}
			if p.dropFile(p.ram, e.seq, e.size) {
				used -= e.size
			}
			continue
		}
		switch p.spill(e, m) {
		case spilled, gone:
			used -= e.size
		case failed:
			if over && p.dropFile(p.ram, e.seq, e.size) {
				used -= e.size
			}
		}
	}
}

// ramMeta returns a RAM segment's header, from the cache when the
// producer sealed it in this run.
func (p *Producer) ramMeta(seq uint64) (Meta, bool) {
	p.metaMu.Lock()
	m, ok := p.meta[seq]
	p.metaMu.Unlock()
	if ok {
		return m, true
	}
	f, err := os.Open(p.ram.path(seq))
	if err != nil {
		return Meta{}, false
	}
	defer f.Close()
	m, err = readHeader(f)
	if err != nil {
		// spill quarantines it; treat it as old so spill looks at
		// it now.
		return Meta{Seq: seq}, true
	}
	p.metaMu.Lock()
	p.meta[seq] = m
	p.metaMu.Unlock()
	return m, true
}

type spillResult int

const (
	spilled spillResult = iota // on disk, RAM copy removed (or left to the consumer)
	gone                       // acked, dropped or quarantined meanwhile
	failed                     // still only in RAM
)

// spill copies one RAM segment to the disk tier. With an exclusive lock
// the RAM copy is removed afterwards; when the consumer holds the segment
// (shared lock) the copy is made anyway, so a power cut cannot take a
// segment whose delivery stalls, and the consumer's Ack removes both.
func (p *Producer) spill(e entry, m Meta) spillResult {
	exclusive := true
	f, err := openLocked(p.ram.path(e.seq), syscall.LOCK_EX)
	if err == errLocked {
		exclusive = false
		f, err = openLocked(p.ram.path(e.seq), syscall.LOCK_SH)
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return gone
		}
		p.logf("spill", "spool: opening %s: %v", p.ram.path(e.seq), err)
		return failed
	}
	defer f.Close()
	if _, err := os.Stat(p.disk.path(e.seq)); err == nil {
		// Copied before (the consumer held it, or we crashed after the
		// rename): only the RAM copy is left to remove.
		if exclusive {
			os.Remove(p.ram.path(e.seq))
		}
		return spilled
	}
	b, err := readAll(f, p.spillBuf[:0])
	p.spillBuf = b
	if err == nil {
		m, _, err = parseSegment(b, nil)
		if err == nil && m.Seq != e.seq {
			err = corrupt("header sequence %d in file %s", m.Seq, segName(e.seq))
		}
	}
	if err != nil {
		if errors.Is(err, ErrCorrupt) && exclusive {
			if quarantine(p.ram, p.disk, e.seq, e.size, m.Records, p.lg, err, p.opts.Logf) {
				p.countQuarantine(e.size, m.Records)
			}
			return gone
		}
		p.logf("spill", "spool: reading %s: %v", p.ram.path(e.seq), err)
		return failed
	}
	if !p.makeRoom(int64(len(b))) {
		p.spillErr = fmt.Errorf("disk quota %d octets full, all older segments in delivery", p.opts.DiskQuota)
		p.logf("quota", "spool: disk tier full (quota %d octets, all older segments in delivery)", p.opts.DiskQuota)
		if exclusive {
			if p.dropLocked(p.ram, e.seq, f, e.size) {
				return gone
			}
		}
		return failed
	}
	if err := p.writeDisk(p.disk.dir, e.seq, b, true); err != nil {
		p.statsMu.Lock()
		p.stats.SpillErrors++
		p.statsMu.Unlock()
		p.spillErr = err
		p.logf("spill", "spool: spilling %s to %s: %v", segName(e.seq), p.disk.dir, err)
		return failed
	}
	if !exclusive {
		// The consumer may have acked the segment while we copied
		// it: its Ack found no disk copy to remove yet. It unlinks
		// RAM before disk, so once the RAM copy is seen gone after
		// our rename, the disk copy is ours to remove.
		if _, err := os.Stat(p.ram.path(e.seq)); errors.Is(err, os.ErrNotExist) {
			os.Remove(p.disk.path(e.seq))
			return gone
		}
	}
	p.diskUsed += int64(len(b))
	p.statsMu.Lock()
	p.stats.Spilled++
	p.stats.SpilledBytes += uint64(len(b))
	p.statsMu.Unlock()
	if exclusive {
		os.Remove(p.ram.path(e.seq))
	}
	return spilled
}

// makeRoom deletes the oldest disk segments until size more octets fit in
// the disk quota. The usage estimate only grows between scans (the
// consumer's acks are invisible to the producer), so before deleting
// anything the tier is scanned again: nothing is dropped that acks have
// already made room for.
func (p *Producer) makeRoom(size int64) bool {
	if size > p.opts.DiskQuota {
		return false
	}
	if p.diskUsed+size <= p.opts.DiskQuota {
		return true
	}
	ents, err := p.disk.scan()
	if err != nil {
		p.logf("scan", "spool: scanning %s: %v", p.disk.dir, err)
		return false
	}
	p.diskUsed = 0
	for _, e := range ents {
		p.diskUsed += e.size
	}
	for _, e := range ents {
		if p.diskUsed+size <= p.opts.DiskQuota {
			return true
		}
		if _, err := os.Stat(p.ram.path(e.seq)); err == nil {
			// A RAM twin means the consumer is delivering it.
			continue
		}
		if p.dropFile(p.disk, e.seq, e.size) {
			p.diskUsed -= e.size
		}
	}
	return p.diskUsed+size <= p.opts.DiskQuota
}

// dropFile deletes a segment at a quota and counts it, unless the
// consumer holds it.
func (p *Producer) dropFile(t *tier, seq uint64, size int64) bool {
	f, err := openLocked(t.path(seq), syscall.LOCK_EX)
	if err != nil {
		return false
	}
	defer f.Close()
	return p.dropLocked(t, seq, f, size)
}

func (p *Producer) dropLocked(t *tier, seq uint64, f *os.File, size int64) bool {
	if _, err := f.Seek(0, 0); err != nil {
		return false
	}
	m, err := readHeader(f)
	if errors.Is(err, ErrCorrupt) {
		if quarantine(t, p.other(t), seq, size, m.Records, p.lg, err, p.opts.Logf) {
			p.countQuarantine(size, m.Records)
			return true
		}
		return false
	}
	if err != nil {
		return false
	}
	if err := os.Remove(t.path(seq)); err != nil {
		return false
	}
	if t.id == disk {
		syncDir(t.dir)
	}
	c := Counter{Segments: 1, Records: uint64(m.Records), Bytes: uint64(size)}
	p.lg.add(func(g *Ledger) { g.Dropped.add(c) })
	p.statsMu.Lock()
	p.stats.Dropped.add(c)
	p.statsMu.Unlock()
	p.logf("drop", "spool: %s tier full: dropped segment %d (%d records, %d octets), oldest first", t.id, seq, m.Records, size)
	return true
}

// flushRejected moves the producer's rejection counts into the ledger. It
// returns the next sequence number to be sealed.
func (p *Producer) flushRejected() uint64 {
	p.mu.Lock()
	c := p.rejected
	p.rejected = Counter{}
	next := p.nextSeq
	p.mu.Unlock()
	if c.Records != 0 {
		p.lg.add(func(g *Ledger) { g.Rejected.add(c) })
	}
	return next
}

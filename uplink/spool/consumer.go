package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/sie-europe/dnssensor/nmsg"
)

// ConsumerStats counts what a Consumer did since Open.
type ConsumerStats struct {
	Delivered   Counter // segments handed out by Next (again after a Release)
	Acked       Counter
	Released    uint64
	Quarantined Counter // damaged segments found before delivery
	Busy        uint64  // times Next waited for the producer to finish moving a segment
}

// Depth is how much data waits in the spool.
type Depth struct {
	Segments, Records, Bytes uint64
	RAMSegments, RAMBytes    uint64
	DiskSegments, DiskBytes  uint64
	// Oldest is the capture time of the oldest record waiting (zero
	// when the spool is empty); time.Since(Oldest) is the depth in
	// seconds of data.
	Oldest time.Time
	// OldestSealed is when the oldest waiting segment was sealed.
	OldestSealed time.Time
}

// Segment is a sealed segment handed out by Next. Its contents were
// verified (length, CRC32C, container framing) after it was locked, and
// stay valid until Ack or Release.
type Segment struct {
	Meta
	// Tier is "ram" or "disk", where the segment was read from.
	Tier string

	image      []byte
	containers [][]byte
	f          *os.File // holds the shared lock that keeps the producer off
}

// Containers returns the segment's NMSG containers, each a whole
// container with its header, in order. They alias the segment's buffer.
func (s *Segment) Containers() [][]byte { return s.containers }

// Body returns all containers, concatenated as in an NMSG file.
func (s *Segment) Body() []byte { return s.image[headerSize:] }

// Reader returns an NMSG reader over the body.
func (s *Segment) Reader() *nmsg.Reader {
	return nmsg.NewReader(bytes.NewReader(s.Body()), nmsg.ReaderOptions{})
}

// Consumer takes sealed segments out of the spool in sequence order. Its
// methods are safe for concurrent use; one process at a time may consume
// a spool.
type Consumer struct {
	opts Options
	ram  *tier
	disk *tier
	lock []*os.File

	mu     sync.Mutex
	queue  []uint64 // known sequence numbers not yet handed out, ascending
	held   map[uint64]*Segment
	bufs   [][]byte
	stats  ConsumerStats
	closed bool
	lg     *ledger
	// acked remembers recent Acks. A producer killed in the middle of
	// copying a held segment to disk can leave a disk copy of a segment
	// acked meanwhile; within this process's life such a copy is
	// deleted instead of delivered again.
	acked    map[uint64]bool
	ackedLog []uint64
	// foreign remembers files in the tiers that are not segments, so
	// that each is looked at once.
	foreign map[string]bool

	depthMu sync.Mutex
	meta    map[uint64]Meta
}

// OpenConsumer opens the spool for reading, creating its directories. It
// fails when another consumer holds the spool.
func OpenConsumer(opts Options) (*Consumer, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	c := &Consumer{
		opts:    opts,
		ram:     &tier{id: ram, dir: opts.Dir},
		held:    map[uint64]*Segment{},
		meta:    map[uint64]Meta{},
		acked:   map[uint64]bool{},
		foreign: map[string]bool{},
	}
	if opts.DiskDir != "" {
		c.disk = &tier{id: disk, dir: opts.DiskDir}
	}
	c.lg = &ledger{dir: opts.durableDir(), logf: opts.Logf, now: opts.now}
	for _, t := range c.tiers() {
		if err := os.MkdirAll(filepath.Join(t.dir, quarantineDir), 0o755); err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
	}
	l, err := lockFile(filepath.Join(opts.Dir, consumerLock), opts.lockWait)
	if err != nil {
		return nil, fmt.Errorf("spool: another consumer is running: %w", err)
	}
	c.lock = append(c.lock, l)
	return c, nil
}

func (c *Consumer) tiers() []*tier {
	if c.disk == nil {
		return []*tier{c.ram}
	}
	return []*tier{c.ram, c.disk}
}

// Next returns the oldest segment not yet handed out, waiting for one
// (polling every Options.PollInterval) until ctx is done. The caller must
// Ack the segment once it has been handed over, or Release it to have it
// delivered again. Segments held by the consumer are never spilled away
// from under it, dropped or counted as lost.
func (c *Consumer) Next(ctx context.Context) (*Segment, error) {
	var t *time.Timer
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if len(c.queue) == 0 {
			c.refill()
		}
		wait := c.opts.PollInterval
		if len(c.queue) > 0 {
			seq := c.queue[0]
			seg, res := c.open(seq)
			switch res {
			case openOK:
				c.queue = c.queue[1:]
				c.held[seq] = seg
				c.stats.Delivered.add(Counter{Segments: 1, Records: uint64(seg.Records), Bytes: uint64(len(seg.image))})
				c.mu.Unlock()
				return seg, nil
			case openGone:
				c.queue = c.queue[1:]
				c.mu.Unlock()
				continue
			case openBusy:
				// The producer is moving it to disk: a copy
				// takes milliseconds.
				c.stats.Busy++
				wait = min(wait, 2*time.Millisecond)
			}
		}
		c.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if t == nil {
			t = time.NewTimer(wait)
		} else {
			t.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// refill lists both tiers. Twins (a segment copied to disk while it was
// also still in RAM) are one segment.
func (c *Consumer) refill() {
	var seqs []uint64
	for _, t := range c.tiers() {
		ents, err := t.scanForeign(func(de fs.DirEntry) {
			key := filepath.Join(t.dir, de.Name())
			if c.foreign[key] {
				return
			}
			res, n := quarantineForeign(t, de, c.lg, c.opts.Logf, c.exists)
			switch {
			case res == foreignLost:
				c.stats.Quarantined.add(n)
			case res == foreignIgnored && !segmentLike(de.Name()):
				// Not a segment now; peeking at it on every poll
				// would cost a read each time.
				c.foreign[key] = true
			}
		})
		if err != nil {
			c.opts.Logf("spool: scanning %s: %v", t.dir, err)
			continue
		}
		for _, e := range ents {
			if c.held[e.seq] == nil {
				seqs = append(seqs, e.seq)
			}
		}
	}
	slices.Sort(seqs)
	c.queue = slices.Compact(seqs)
}

type openResult int

const (
	openOK openResult = iota
	openGone
	openBusy
)

// open locks and verifies segment seq, looking in the RAM tier first: a
// spill creates the disk copy before it removes the RAM one, so a
// segment moving between tiers is always found.
func (c *Consumer) open(seq uint64) (*Segment, openResult) {
	if c.acked[seq] {
		for _, t := range c.tiers() {
			os.Remove(t.path(seq))
		}
		return nil, openGone
	}
	for _, t := range c.tiers() {
		f, err := openLocked(t.path(seq), syscall.LOCK_SH)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			if err != errLocked {
				c.opts.Logf("spool: opening %s: %v", t.path(seq), err)
			}
			return nil, openBusy
		}
		var buf []byte
		if n := len(c.bufs); n > 0 {
			buf, c.bufs = c.bufs[n-1], c.bufs[:n-1]
		}
		img, err := readAll(f, buf)
		var m Meta
		var conts [][]byte
		if err == nil {
			m, conts, err = parseSegment(img, nil)
			if err == nil && m.Seq != seq {
				err = corrupt("header sequence %d in file %s", m.Seq, segName(seq))
			}
		}
		if err != nil {
			c.bufs = append(c.bufs, img)
			if errors.Is(err, ErrCorrupt) {
				size := int64(len(img))
				if quarantine(t, c.other(t), seq, size, m.Records, c.lg, err, c.opts.Logf) {
					c.stats.Quarantined.add(Counter{Segments: 1, Records: uint64(m.Records), Bytes: uint64(size)})
				}
				f.Close()
				continue // a twin in the other tier may be intact
			}
			f.Close()
			c.opts.Logf("spool: reading %s: %v", t.path(seq), err)
			return nil, openBusy
		}
		return &Segment{Meta: m, Tier: t.id.String(), image: img, containers: conts, f: f}, openOK
	}
	return nil, openGone
}

// Ack deletes a handed-over segment from every tier and releases it. Call
// it only once the data is handed over downstream: after Ack the spool
// no longer has it. The unlink is not fsynced, so a power cut right after
// Ack may deliver the segment once more (at-least-once).
func (c *Consumer) Ack(s *Segment) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held[s.Seq] != s {
		return fmt.Errorf("spool: segment %d is not held", s.Seq)
	}
	// RAM first: a spill that finds its RAM source gone after making the
	// disk copy leaves the disk copy for this second unlink.
	var first error
	for _, t := range c.tiers() {
		if err := os.Remove(t.path(s.Seq)); err != nil && !errors.Is(err, os.ErrNotExist) && first == nil {
			first = err
		}
	}
	c.stats.Acked.add(Counter{Segments: 1, Records: uint64(s.Records), Bytes: uint64(len(s.image))})
	c.acked[s.Seq] = true
	c.ackedLog = append(c.ackedLog, s.Seq)
	if len(c.ackedLog) > 4096 {
		delete(c.acked, c.ackedLog[0])
		c.ackedLog = c.ackedLog[1:]
	}
	c.drop(s)
	return first
}

// Release hands a segment back undelivered; Next returns it again before
// anything newer.
func (c *Consumer) Release(s *Segment) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held[s.Seq] != s {
		return
	}
	c.drop(s)
	c.stats.Released++
	i, _ := slices.BinarySearch(c.queue, s.Seq)
	c.queue = slices.Insert(c.queue, i, s.Seq)
}

func (c *Consumer) drop(s *Segment) {
	delete(c.held, s.Seq)
	s.f.Close()
	if len(c.bufs) < 4 {
		c.bufs = append(c.bufs, s.image[:0])
	}
	s.image, s.containers, s.f = nil, nil, nil
}

// Stats returns the counters so far.
func (c *Consumer) Stats() ConsumerStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Loss returns the spool's durable loss ledger.
func (c *Consumer) Loss() (Ledger, error) { return ReadLedger(c.opts.durableDir()) }

// Depth scans both tiers. Headers are read once per segment and cached
// (segments never change), so a full disk tier costs a directory listing
// per call.
func (c *Consumer) Depth() (Depth, error) {
	c.depthMu.Lock()
	defer c.depthMu.Unlock()
	var d Depth
	seen := map[uint64]bool{}
	for _, t := range c.tiers() {
		ents, err := t.scan()
		if err != nil {
			return d, err
		}
		for _, e := range ents {
			if seen[e.seq] {
				continue
			}
			seen[e.seq] = true
			if t.id == ram {
				d.RAMSegments++
				d.RAMBytes += uint64(e.size)
			} else {
				d.DiskSegments++
				d.DiskBytes += uint64(e.size)
			}
			d.Segments++
			d.Bytes += uint64(e.size)
			m, ok := c.meta[e.seq]
			if !ok {
				f, err := os.Open(t.path(e.seq))
				if err != nil {
					continue
				}
				m, err = readHeader(f)
				f.Close()
				if err != nil {
					continue
				}
				c.meta[e.seq] = m
			}
			d.Records += uint64(m.Records)
			if first := time.Unix(0, m.First); d.Oldest.IsZero() || first.Before(d.Oldest) {
				d.Oldest = first
			}
			if sealed := time.Unix(0, m.Sealed); d.OldestSealed.IsZero() || sealed.Before(d.OldestSealed) {
				d.OldestSealed = sealed
			}
		}
	}
	for s := range c.meta {
		if !seen[s] {
			delete(c.meta, s)
		}
	}
	return d, nil
}

// Close releases every held segment (they will be delivered again) and
// the spool.
func (c *Consumer) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	c.closed = true
	for _, s := range c.held {
		c.drop(s)
	}
	for _, l := range c.lock {
		l.Close()
	}
	return nil
}

// exists reports whether segment seq is in either tier, as a file.
func (c *Consumer) exists(seq uint64) bool {
	for _, t := range c.tiers() {
		if fi, err := os.Lstat(t.path(seq)); err == nil && fi.Mode().IsRegular() {
			return true
		}
	}
	return false
}

func (c *Consumer) other(t *tier) *tier { return otherTier(t, c.ram, c.disk) }

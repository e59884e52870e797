package spool

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/renameio/v2"

	"github.com/sie-europe/dnssensor/internal/logger"
	"github.com/sie-europe/dnssensor/nmsg"
)

// seqBlock is how many sequence numbers one durable reservation covers:
// the reservation file is rewritten once per seqBlock segments (about
// once a day at one segment per second), so a healthy link still causes
// no steady flash writes, yet a restarted producer never reuses a number
// even when the consumer has deleted every segment.
const seqBlock = 1 << 16

// payloadOverhead bounds what a container adds around one payload: the
// field tag and a length varint (3 octets below 2 MiB), and a CRC field
// (tag + 5-octet varint).
const payloadOverhead = 1 + 3 + 1 + 5

// ProducerStats counts what a Producer did since Open.
type ProducerStats struct {
	Records  uint64 // records sealed into segments
	Segments uint64 // segments published to the RAM tier
	Bytes    uint64 // octets of those segments

	Spilled      uint64 // segments copied to the disk tier
	SpilledBytes uint64
	SpillErrors  uint64 // failed copies (the segment stays in RAM)

	Dropped     Counter // segments this process deleted at a quota
	Quarantined Counter // damaged segments this process quarantined
	TempFiles   Counter // temp files removed at Open
	Rejected    Counter // records not spooled

	Stranded Counter // segments Close could not move to the disk tier

	RejectedTooLarge uint64 // records larger than a container
	RejectedWrite    uint64 // records lost because the RAM tier could not be written
}

// Producer writes NMSG payloads into sealed segments. It is safe for
// concurrent use. WritePayload never touches the disk tier: segments are
// published to the RAM tier, and a background goroutine moves them to
// disk only when the consumer falls behind.
type Producer struct {
	opts Options
	ram  *tier
	disk *tier // nil without a disk tier
	lg   *ledger
	lock []*os.File

	mu         sync.Mutex // guards the current segment and sequence
	buf        []byte     // header space followed by the body
	fw         *nmsg.FileWriter
	records    uint32
	first      int64
	last       int64
	opened     time.Time
	pend       int // estimated octets not yet flushed into buf
	contBase   uint64
	nextSeq    uint64
	reservedTo uint64
	closed     bool
	rejected   Counter // not yet in the ledger

	mmu      sync.Mutex // guards maintenance state; never held while taking mu
	metaMu   sync.Mutex // guards meta; a leaf, so sealing never waits for a spill
	meta     map[uint64]Meta
	diskUsed int64
	spillBuf []byte
	// writeDisk publishes a segment in the disk tier; a seam for tests
	// of a failing disk.
	writeDisk func(dir string, seq uint64, data []byte, durable bool) error
	spillErr  error // why the last spill failed

	log *logger.Limiter // by kind: a failing disk would otherwise log on every tick

	statsMu sync.Mutex
	stats   ProducerStats

	kick chan struct{}
	stop chan struct{}
	wg   sync.WaitGroup
}

// segWriter appends NMSG containers to the segment body.
type segWriter struct{ p *Producer }

func (w segWriter) Write(b []byte) (int, error) {
	w.p.buf = append(w.p.buf, b...)
	return len(b), nil
}

// OpenProducer opens (creating) the spool for writing. Only one producer
// may hold a spool; a second gets an error. At start-up it removes temp
// files a crashed writer left, quarantines damaged segments, and picks a
// sequence number above every earlier one.
func OpenProducer(opts Options) (*Producer, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	p := &Producer{
		opts: opts,
		ram:  &tier{id: ram, dir: opts.Dir},
		meta: map[uint64]Meta{},
		log:  logger.NewLimiter(opts.Logf, 10*time.Second),
		kick: make(chan struct{}, 1),
		stop: make(chan struct{}),

		writeDisk: writeSegment,
	}
	if opts.DiskDir != "" {
		p.disk = &tier{id: disk, dir: opts.DiskDir}
	}
	p.lg = &ledger{dir: opts.durableDir(), logf: opts.Logf, now: opts.now}
	for _, t := range p.tiers() {
		if err := os.MkdirAll(filepath.Join(t.dir, quarantineDir), 0o755); err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
		l, err := lockFile(filepath.Join(t.dir, producerLock), opts.lockWait)
		if err != nil {
			p.unlock()
			return nil, fmt.Errorf("spool: another producer is running: %w", err)
		}
		p.lock = append(p.lock, l)
	}
	var maxSeq uint64
	for _, t := range p.tiers() {
		before := p.ledgerTemps()
		cleanTemps(t.dir, p.lg, opts.Logf, p.exists)
		if d := p.ledgerTemps(); d.Segments > before.Segments {
			p.statsMu.Lock()
			p.stats.TempFiles.Segments += d.Segments - before.Segments
			p.stats.TempFiles.Bytes += d.Bytes - before.Bytes
			p.statsMu.Unlock()
		}
		if s := p.checkTier(t); s > maxSeq {
			maxSeq = s
		}
		if s := maxQuarantined(t); s > maxSeq {
			maxSeq = s
		}
	}
	reserved := readReservation(filepath.Join(opts.durableDir(), seqFile))
	p.nextSeq = max(maxSeq+1, reserved, 1)
	if err := p.reserve(); err != nil {
		p.unlock()
		return nil, err
	}
	// Every container gets this run's random sequence_id and a counter, so whoever receives a
	// segment twice (at-least-once delivery) can tell the repeated containers apart from new ones.
	var idb [8]byte
	rand.Read(idb[:])
	seqID := binary.BigEndian.Uint64(idb[:]) | 1
	fw, err := nmsg.NewFileWriter(segWriter{p}, nmsg.FileOptions{Zlib: opts.Zlib, CRC: true, MaxSize: opts.containerSize(), SequenceID: seqID})
	if err != nil {
		p.unlock()
		return nil, err
	}
	p.fw = fw
	p.buf = make([]byte, headerSize, headerSize+opts.SegmentSize)
	p.wg.Add(1)
	go p.loop()
	return p, nil
}

func (p *Producer) ledgerTemps() Counter {
	g, _ := ReadLedger(p.lg.dir)
	return g.TempFiles
}

func (p *Producer) tiers() []*tier {
	if p.disk == nil {
		return []*tier{p.ram}
	}
	return []*tier{p.ram, p.disk}
}

func (p *Producer) unlock() {
	for _, l := range p.lock {
		l.Close()
	}
	p.lock = nil
}

// checkTier quarantines damaged segments and removes RAM copies of
// segments that a crashed spill already made durable. The RAM tier is
// checked in full (it is small and in memory); the disk tier by header
// and length only, because reading gigabytes from flash would delay
// capture: the consumer checks every body's CRC before delivery. It
// returns the highest sequence seen.
func (p *Producer) checkTier(t *tier) uint64 {
	ents, err := t.scan()
	if err != nil {
		p.logf("scan", "spool: scanning %s: %v", t.dir, err)
		return 0
	}
	var maxSeq uint64
	for _, e := range ents {
		maxSeq = max(maxSeq, e.seq)
		f, err := openLocked(t.path(e.seq), syscall.LOCK_EX)
		if err != nil {
			continue // the consumer holds it, so it passed the consumer's checks
		}
		var m Meta
		if t.id == ram {
			var b []byte
			b, err = readAll(f, p.spillBuf[:0])
			p.spillBuf = b
			if err == nil {
				m, _, err = parseSegment(b, nil)
			}
		} else {
			m, err = readHeader(f)
		}
		if err == nil && m.Seq != e.seq {
			err = corrupt("header sequence %d in file %s", m.Seq, segName(e.seq))
		}
		if errors.Is(err, ErrCorrupt) {
			if quarantine(t, p.other(t), e.seq, e.size, m.Records, p.lg, err, p.opts.Logf) {
				p.countQuarantine(e.size, m.Records)
			}
		} else if err == nil && t.id == ram && p.disk != nil {
			if dm, ok := p.validDiskTwin(e.seq); ok && dm.Seq == e.seq {
				os.Remove(t.path(e.seq))
			}
		}
		f.Close()
	}
	return maxSeq
}

func (p *Producer) validDiskTwin(seq uint64) (Meta, bool) {
	f, err := os.Open(p.disk.path(seq))
	if err != nil {
		return Meta{}, false
	}
	defer f.Close()
	m, err := readHeader(f)
	return m, err == nil
}

// maxQuarantined keeps sequence numbers of quarantined segments from being
// reused, so a quarantined file and a delivered one never share a number.
func maxQuarantined(t *tier) uint64 {
	des, _ := os.ReadDir(filepath.Join(t.dir, quarantineDir))
	var m uint64
	for _, de := range des {
		name := de.Name()
		if i := strings.IndexByte(name, '-'); i >= 0 && len(name) >= i+25 {
			if s, ok := parseSegName(name[i+1 : i+25]); ok {
				m = max(m, s)
			}
		}
	}
	return m
}

func readReservation(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return v
}

// reserve makes nextSeq+seqBlock durable before any of those numbers is
// used.
func (p *Producer) reserve() error {
	to := p.nextSeq + seqBlock
	dir := p.opts.durableDir()
	if err := renameio.WriteFile(filepath.Join(dir, seqFile), []byte(strconv.FormatUint(to, 10)+"\n"), 0o644, renameio.WithTempDir(dir)); err != nil {
		return fmt.Errorf("spool: reserving sequence numbers: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("spool: reserving sequence numbers: %w", err)
	}
	p.reservedTo = to
	return nil
}

// WritePayload adds pl to the current segment, sealing it first when pl
// would push it past the size bound or when it is older than the age
// bound. The spool takes payloads of any vendor and type with their own
// envelope: sensord's records arrive through sensor/internal/output's adapter, and
// the SOC collector forwards what its sensors sent through a spool of its
// own. pl is copied before WritePayload returns, so the caller may reuse
// it. An error means pl was not spooled; it is counted as Rejected in the
// ledger.
func (p *Producer) WritePayload(pl *nmsg.Payload) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	return p.writeLocked(pl, pl.TimeSec*1e9+int64(pl.TimeNsec))
}

// writeLocked adds pl, captured at t, to the current segment. The
// container writer copies pl before it returns.
func (p *Producer) writeLocked(pl *nmsg.Payload, t int64) error {
	size := nmsg.PayloadSize(pl) + payloadOverhead
	if nmsgHeaderSize+size > p.opts.containerSize() {
		p.reject(uint64(len(pl.Data)), &p.stats.RejectedTooLarge)
		return fmt.Errorf("spool: record of %d octets: %w", len(pl.Data), nmsg.ErrTooLarge)
	}
	now := p.opts.now()
	if p.records > 0 && (len(p.buf)+p.pend+size > p.opts.SegmentSize || now.Sub(p.opened) >= p.opts.SegmentAge) {
		p.sealLocked()
	}
	if p.records == 0 {
		p.opened = now
		p.first, p.last = t, t
		p.pend = nmsgHeaderSize
	}
	if err := p.fw.Write(pl); err != nil {
		// Writes into memory cannot fail but for size, checked above.
		p.reject(uint64(len(pl.Data)), &p.stats.RejectedWrite)
		return fmt.Errorf("spool: %w", err)
	}
	if c := p.fw.Stats().Containers; c != p.contBase {
		// The writer flushed a full container into buf; only this
		// payload is pending now.
		p.contBase = c
		p.pend = nmsgHeaderSize + size
	} else {
		p.pend += size
	}
	p.records++
	p.first, p.last = min(p.first, t), max(p.last, t)
	return nil
}

func (p *Producer) reject(bytes uint64, reason *uint64) {
	p.rejected.Records++
	p.rejected.Bytes += bytes
	p.statsMu.Lock()
	p.stats.Rejected.Records++
	p.stats.Rejected.Bytes += bytes
	*reason++
	p.statsMu.Unlock()
}

// Flush seals the current segment now, if it holds any record.
func (p *Producer) Flush() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	return p.sealLocked()
}

// sealLocked writes the current segment to the RAM tier (write, fsync,
// rename: the file appears whole or not at all) and starts a new one.
func (p *Producer) sealLocked() error {
	if p.records == 0 {
		return nil
	}
	defer p.resetSegment()
	if err := p.fw.Flush(); err != nil {
		return p.sealFailed(err)
	}
	c := p.fw.Stats().Containers
	if p.nextSeq >= p.reservedTo {
		if err := p.reserve(); err != nil {
			// Keep going: the highest sequence on disk still
			// protects against reuse unless the spool drains
			// completely before a restart.
			p.logf("reserve", "%v", err)
		}
	}
	m := Meta{
		Seq:        p.nextSeq,
		Zlib:       p.opts.Zlib,
		BodyLen:    int64(len(p.buf) - headerSize),
		Records:    p.records,
		Containers: uint32(c - p.contBase),
		First:      p.first,
		Last:       p.last,
		Sealed:     p.opts.now().UnixNano(),
		BodyCRC:    crc32.Checksum(p.buf[headerSize:], castagnoli),
	}
	p.nextSeq++
	p.contBase = c
	putHeader(p.buf[:headerSize], m)
	if err := writeSegment(p.ram.dir, m.Seq, p.buf, false); err != nil {
		return p.sealFailed(err)
	}
	p.metaMu.Lock()
	p.meta[m.Seq] = m
	p.metaMu.Unlock()
	p.statsMu.Lock()
	p.stats.Records += uint64(m.Records)
	p.stats.Segments++
	p.stats.Bytes += uint64(len(p.buf))
	p.statsMu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
	return nil
}

func (p *Producer) sealFailed(err error) error {
	p.logf("seal", "spool: sealing a segment of %d records: %v", p.records, err)
	p.rejected.Records += uint64(p.records)
	p.rejected.Bytes += uint64(len(p.buf) - headerSize)
	p.statsMu.Lock()
	p.stats.Rejected.Records += uint64(p.records)
	p.stats.Rejected.Bytes += uint64(len(p.buf) - headerSize)
	p.stats.RejectedWrite += uint64(p.records)
	p.statsMu.Unlock()
	p.contBase = p.fw.Stats().Containers
	return fmt.Errorf("spool: sealing segment: %w", err)
}

func (p *Producer) resetSegment() {
	p.buf = p.buf[:headerSize]
	p.records = 0
	p.pend = 0
}

// writeSegment publishes data as segment seq in dir: temp file, fsync,
// rename, and for the disk tier an fsync of the directory so the rename
// survives a power cut.
func writeSegment(dir string, seq uint64, data []byte, durable bool) error {
	t, err := renameio.NewPendingFile(filepath.Join(dir, segName(seq)), renameio.WithTempDir(dir), renameio.WithStaticPermissions(0o644))
	if err != nil {
		return err
	}
	defer t.Cleanup()
	if _, err := t.Write(data); err != nil {
		return err
	}
	if err := t.CloseAtomicallyReplace(); err != nil {
		return err
	}
	if durable {
		return syncDir(dir)
	}
	return nil
}

// Stats returns the counters so far.
func (p *Producer) Stats() ProducerStats {
	p.statsMu.Lock()
	defer p.statsMu.Unlock()
	return p.stats
}

// Close seals the current segment, moves every RAM segment the consumer
// has not taken to the disk tier (a reboot, e.g. for an update, empties
// tmpfs), and releases the spool. It is what sensord calls on SIGTERM.
func (p *Producer) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	err := p.sealLocked()
	p.closed = true
	p.mu.Unlock()
	close(p.stop)
	p.wg.Wait()
	before := p.Stats()
	p.maintain(true)
	if serr := p.reportShutdown(before); err == nil {
		err = serr
	}
	p.unlock()
	return err
}

// ErrStranded is wrapped by Close's error when segments could not be
// moved to the disk tier and were left in the RAM tier.
var ErrStranded = errors.New("spool: segments left in the RAM tier at shutdown")

// reportShutdown makes what the final move to disk could not do visible:
// a shutdown happens once, so its report bypasses the rate limit that
// earlier messages of the same kind may have used up. Segments dropped
// at the disk quota are already in the ledger; segments still only in
// the RAM tier (a failing or full disk) are counted as stranded and make
// Close fail, so that sensord exits non-zero: the next reboot takes them.
func (p *Producer) reportShutdown(before ProducerStats) error {
	after := p.Stats()
	if d := after.Dropped; d.Segments > before.Dropped.Segments {
		p.opts.Logf("spool: at shutdown the disk tier %s had no room within its quota: dropped %d segments (%d records, %d octets), counted in the ledger",
			p.disk.dir, d.Segments-before.Dropped.Segments, d.Records-before.Dropped.Records, d.Bytes-before.Dropped.Bytes)
	}
	if p.disk == nil {
		return nil // no disk tier: the RAM tier is all there is, by configuration
	}
	ents, err := p.ram.scan()
	if err != nil {
		p.opts.Logf("spool: at shutdown: scanning %s: %v", p.ram.dir, err)
		return fmt.Errorf("spool: at shutdown: %w", err)
	}
	var c Counter
	var first, last uint64
	for _, e := range ents {
		if _, err := os.Stat(p.disk.path(e.seq)); err == nil {
			continue // copied while the consumer held it
		}
		m, ok := p.ramMeta(e.seq)
		if !ok {
			continue // acked meanwhile
		}
		if c.Segments == 0 {
			first = e.seq
		}
		last = e.seq
		c.Segments++
		c.Records += uint64(m.Records)
		c.Bytes += uint64(e.size)
	}
	if c.Segments == 0 {
		return nil
	}
	p.lg.add(func(g *Ledger) { g.Stranded.add(c) })
	p.statsMu.Lock()
	p.stats.Stranded.add(c)
	p.statsMu.Unlock()
	cause := "no room within the disk quota"
	if p.spillErr != nil {
		cause = p.spillErr.Error()
	}
	p.opts.Logf("spool: at shutdown %d segments (%d records, %d octets; sequence %d to %d) could not be moved to the disk tier %s (%s): "+
		"left in the RAM tier %s, lost at the next reboot unless uplinkd delivers them first; counted as stranded in the ledger",
		c.Segments, c.Records, c.Bytes, first, last, p.disk.dir, cause, p.ram.dir)
	return fmt.Errorf("%w: %d segments (%d records) could not be moved to the disk tier: %s", ErrStranded, c.Segments, c.Records, cause)
}

func (p *Producer) loop() {
	defer p.wg.Done()
	tick := min(p.opts.SegmentAge/10, p.opts.SpillAge/10, 100*time.Millisecond)
	t := time.NewTicker(max(tick, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.mu.Lock()
			if p.records > 0 && p.opts.now().Sub(p.opened) >= p.opts.SegmentAge {
				p.sealLocked()
			}
			p.mu.Unlock()
		case <-p.kick:
		}
		p.maintain(false)
	}
}

// logf rate-limits by kind: a failing disk would otherwise log on every
// tick.
func (p *Producer) logf(kind, format string, args ...any) { p.log.Printf(kind, format, args...) }

func (p *Producer) countQuarantine(size int64, records uint32) {
	p.statsMu.Lock()
	p.stats.Quarantined.Segments++
	p.stats.Quarantined.Records += uint64(records)
	p.stats.Quarantined.Bytes += uint64(size)
	p.statsMu.Unlock()
}

func readAll(f *os.File, buf []byte) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return buf, err
	}
	if fi.Size() > headerSize+maxBody {
		return buf, corrupt("file of %d octets", fi.Size())
	}
	n := int(fi.Size())
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	m, err := io.ReadFull(f, buf)
	if err == io.ErrUnexpectedEOF || err == io.EOF {
		// Shrank since the stat: only a damaged or foreign file does.
		return buf[:m], nil
	}
	return buf, err
}

func (p *Producer) other(t *tier) *tier { return otherTier(t, p.ram, p.disk) }

// exists reports whether segment seq is in either tier.
func (p *Producer) exists(seq uint64) bool {
	for _, t := range p.tiers() {
		if _, err := os.Stat(t.path(seq)); err == nil {
			return true
		}
	}
	return false
}

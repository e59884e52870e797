package nmsg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/klauspost/compress/zlib"
)

// Counters records what readers decoded and everything they dropped. A
// drop is counted once, under the first reason found.
type Counters struct {
	Containers uint64 // containers decoded (a reassembled one counts once)
	Payloads   uint64 // payloads returned
	Datagrams  uint64 // datagrams fed to a Reassembler

	BadMagic   uint64 // containers/datagrams not starting with "NMSG"
	BadVersion uint64 // version octet other than 2
	Oversize   uint64 // body, inflated body or reassembled body above the cap
	Truncated  uint64 // shorter than the header or the announced length
	BadLength  uint64 // datagram longer than its announced length
	BadZlib    uint64 // zlib body that does not inflate to its announced length
	Malformed  uint64 // protobuf that does not parse (whole container dropped)

	CRCValid         uint64 // payloads whose CRC matched
	CRCInvalid       uint64 // payloads whose CRC did not match (still returned)
	CRCCountMismatch uint64 // containers whose number of CRCs differs from payloads

	Fragments             uint64 // fragment datagrams accepted
	FragmentsDuplicate    uint64 // fragment already held for its message
	FragmentsInconsistent uint64 // last, flags or crc disagree with earlier fragments, or current > last
	FragmentsBadCRC       uint64 // reassembled messages failing the fragments' crc (dropped)
	Reassembled           uint64 // messages completed from fragments
	ExpiredMessages       uint64 // incomplete messages dropped after the timeout
	EvictedMessages       uint64 // incomplete messages dropped to stay within memory limits
}

// decoder turns container bodies into payloads, reusing its buffers.
type decoder struct {
	max      int
	cnt      *Counters
	c        container
	zr       io.ReadCloser
	zsrc     bytes.Reader
	inflated []byte
	out      []Payload
	one      [1]byte // read past the end (in d: a local would escape through the interface)
}

// decode decodes a non-fragment container body. The payloads and their
// Data alias body or d's buffers and are valid until the next call.
func (d *decoder) decode(flags byte, body []byte) ([]Payload, error) {
	if flags&flagZlib != 0 {
		var err error
		if body, err = d.inflate(body); err != nil {
			return nil, err
		}
	}
	if err := parseNmsg(body, &d.c); err != nil {
		d.cnt.Malformed++
		return nil, err
	}
	n := len(d.c.payloads)
	if cap(d.out) < n {
		d.out = make([]Payload, n)
	}
	out := d.out[:n]
	for i, raw := range d.c.payloads {
		// protobuf-c rejects the whole Nmsg when one payload is bad;
		// doing the same keeps CRC indexes aligned with payloads.
		if err := ParsePayload(raw, &out[i]); err != nil {
			d.cnt.Malformed++
			return nil, err
		}
	}
	switch {
	case len(d.c.crcs) == n:
		for i := range out {
			if payloadCRC(out[i].Data) == d.c.crcs[i] {
				out[i].CRC = CRCValid
				d.cnt.CRCValid++
			} else {
				out[i].CRC = CRCInvalid
				d.cnt.CRCInvalid++
			}
		}
	case len(d.c.crcs) != 0:
		// With counts that disagree there is no telling which CRC
		// belongs to which payload, so none is trusted.
		d.cnt.CRCCountMismatch++
	}
	d.cnt.Containers++
	d.cnt.Payloads += uint64(n)
	return out, nil
}

// inflate uses klauspost's inflater, a third faster than the standard
// library's on sensor output; the caps below do not depend on which
// inflater runs, since it is only ever asked for ulen+1 octets.
func (d *decoder) inflate(body []byte) ([]byte, error) {
	if len(body) < 4 {
		d.cnt.BadZlib++
		return nil, ErrBadZlib
	}
	ulen := binary.BigEndian.Uint32(body)
	if uint64(ulen) > uint64(d.max) {
		d.cnt.Oversize++
		return nil, fmt.Errorf("%w: inflated length %d", ErrOversize, ulen)
	}
	d.zsrc.Reset(body[4:])
	var err error
	if d.zr == nil {
		d.zr, err = zlib.NewReader(&d.zsrc)
	} else {
		err = d.zr.(zlib.Resetter).Reset(&d.zsrc, nil)
	}
	if err != nil {
		d.zr = nil
		d.cnt.BadZlib++
		return nil, fmt.Errorf("%w: %v", ErrBadZlib, err)
	}
	if cap(d.inflated) < int(ulen) {
		d.inflated = make([]byte, ulen)
	}
	out := d.inflated[:ulen]
	if _, err := io.ReadFull(d.zr, out); err != nil {
		d.cnt.BadZlib++
		return nil, fmt.Errorf("%w: %v", ErrBadZlib, err)
	}
	// Reading past the announced length both rejects longer streams and
	// makes the zlib reader verify the Adler-32 trailer.
	if n, err := d.zr.Read(d.one[:]); n != 0 || err != io.EOF {
		d.cnt.BadZlib++
		return nil, fmt.Errorf("%w: length mismatch or bad checksum", ErrBadZlib)
	}
	return out, nil
}

// ReassemblerOptions configures a Reassembler. Zero fields take the
// defaults.
type ReassemblerOptions struct {
	// MaxSize caps container bodies, inflated bodies and reassembled
	// messages; default MaxContainerSize.
	MaxSize int
	// Timeout drops incomplete messages this long after their first
	// fragment arrived; default 30 s, as in the C library.
	Timeout time.Duration
	// MaxPending caps the number of incomplete messages; default 1024.
	MaxPending int
	// MaxPendingBytes caps the memory held by incomplete messages
	// (data plus a fixed per-fragment cost); default 32 MiB.
	MaxPendingBytes int
}

const (
	defaultTimeout         = 30 * time.Second
	defaultMaxPending      = 1024
	defaultMaxPendingBytes = 32 << 20
	// perFragmentCost charges map and slice headers against
	// MaxPendingBytes, so that floods of empty fragments are bounded
	// too.
	perFragmentCost = 64
	// maxFragments bounds NmsgFragment.last. 1 MiB in fragments of a
	// MinMTU datagram needs about 12000.
	maxFragments = 1 << 16
)

type fragKey struct {
	src string
	id  uint32
}

type fragSet struct {
	first  time.Time
	last   uint32
	flags  byte
	crc    uint32
	hasCRC bool
	size   int // data octets held
	cost   int // charged against MaxPendingBytes
	parts  map[uint32][]byte
}

// Reassembler decodes datagrams from any number of senders, reassembling
// fragmented containers. Fragments are keyed by (fragment id, source), so
// the caller must pass a source string that identifies the sender, such
// as netip.AddrPort.String().
type Reassembler struct {
	opts      ReassemblerOptions
	d         decoder
	cnt       *Counters
	own       Counters
	sets      map[fragKey]*fragSet
	pending   int
	lastSweep time.Time
	asm       []byte
	decoded   bool // the last Feed returned a decoded container (Sequence)
}

// Sequence returns the sequence_id and sequence of the container the last Feed decoded; ok is
// false when it carried none, or when that Feed decoded nothing (an error, a fragment held). A
// receiver that validates containers with Feed reads them here rather than with
// ContainerSequence, which would inflate a zlib body a second time.
func (r *Reassembler) Sequence() (id uint64, seq uint32, ok bool) {
	c := &r.d.c
	if !r.decoded || !c.hasSeq || !c.hasSeqID {
		return 0, 0, false
	}
	return c.seqID, c.sequence, true
}

// NewReassembler returns a Reassembler with the given options.
func NewReassembler(opts ReassemblerOptions) *Reassembler {
	r := &Reassembler{}
	r.init(opts, &r.own)
	return r
}

func (r *Reassembler) init(opts ReassemblerOptions, cnt *Counters) {
	if opts.MaxSize <= 0 {
		opts.MaxSize = MaxContainerSize
	}
	if opts.Timeout <= 0 {
		opts.Timeout = defaultTimeout
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = defaultMaxPending
	}
	if opts.MaxPendingBytes <= 0 {
		opts.MaxPendingBytes = defaultMaxPendingBytes
	}
	r.opts = opts
	r.cnt = cnt
	r.d = decoder{max: opts.MaxSize, cnt: cnt}
	r.sets = make(map[fragKey]*fragSet)
}

// Feed decodes one datagram received from src at now.
//
// It returns the payloads of the container the datagram completes: none
// for a fragment of a message still incomplete. The returned slice and
// the payloads' Data alias datagram and the Reassembler's buffers; they
// are valid only until the next call to Feed, so the caller may reuse
// datagram after it has consumed them. Fragment data is copied, so the
// caller may reuse datagram after Feed returns even when the fragment is
// held for later.
//
// A dropped datagram returns an error and is counted. Payloads with a bad
// CRC are returned with CRC set to CRCInvalid and no error.
func (r *Reassembler) Feed(src string, datagram []byte, now time.Time) ([]Payload, error) {
	ps, err := r.feed(src, datagram, now)
	r.decoded = err == nil && ps != nil
	return ps, err
}

func (r *Reassembler) feed(src string, datagram []byte, now time.Time) ([]Payload, error) {
	r.cnt.Datagrams++
	if now.Sub(r.lastSweep) >= time.Second || now.Before(r.lastSweep) {
		r.Expire(now)
		r.lastSweep = now
	}
	h, err := parseHeader(datagram)
	if err != nil {
		r.countHeaderErr(err)
		return nil, err
	}
	body := datagram[HeaderSize:]
	switch {
	case uint64(h.length) > uint64(r.opts.MaxSize):
		r.cnt.Oversize++
		return nil, fmt.Errorf("%w: body length %d", ErrOversize, h.length)
	case uint64(h.length) > uint64(len(body)):
		r.cnt.Truncated++
		return nil, ErrTruncated
	case uint64(h.length) < uint64(len(body)):
		r.cnt.BadLength++
		return nil, fmt.Errorf("nmsg: datagram of %d octets announces %d", len(datagram), HeaderSize+int(h.length))
	}
	return r.container(src, h.flags, body, now)
}

func (r *Reassembler) countHeaderErr(err error) {
	switch err {
	case ErrBadMagic:
		r.cnt.BadMagic++
	case ErrBadVersion:
		r.cnt.BadVersion++
	case ErrTruncated:
		r.cnt.Truncated++
	}
}

func (r *Reassembler) container(src string, flags byte, body []byte, now time.Time) ([]Payload, error) {
	if flags&flagFragment == 0 {
		return r.d.decode(flags, body)
	}
	var fr fragment
	if err := parseFragment(body, &fr); err != nil {
		r.cnt.Malformed++
		return nil, err
	}
	if fr.current > fr.last || fr.last >= maxFragments {
		r.cnt.FragmentsInconsistent++
		return nil, errors.New("nmsg: fragment index out of range")
	}
	key := fragKey{src, fr.id}
	s := r.sets[key]
	if s == nil {
		for len(r.sets) >= r.opts.MaxPending {
			r.evictOldest()
		}
		s = &fragSet{first: now, last: fr.last, flags: flags, crc: fr.crc, hasCRC: fr.hasCRC,
			parts: make(map[uint32][]byte)}
		r.sets[key] = s
	} else if s.last != fr.last || s.flags != flags || s.hasCRC != fr.hasCRC || s.crc != fr.crc {
		r.cnt.FragmentsInconsistent++
		return nil, errors.New("nmsg: fragment disagrees with earlier fragments")
	}
	if _, dup := s.parts[fr.current]; dup {
		r.cnt.FragmentsDuplicate++
		return nil, errors.New("nmsg: duplicate fragment")
	}
	if s.size+len(fr.data) > r.opts.MaxSize {
		r.drop(key, s)
		r.cnt.Oversize++
		return nil, fmt.Errorf("%w: reassembled message", ErrOversize)
	}
	cost := len(fr.data) + perFragmentCost
	for r.pending+cost > r.opts.MaxPendingBytes && len(r.sets) > 1 {
		r.evictOldestExcept(s)
	}
	if r.pending+cost > r.opts.MaxPendingBytes {
		r.drop(key, s)
		r.cnt.EvictedMessages++
		return nil, errors.New("nmsg: reassembly memory exhausted")
	}
	s.parts[fr.current] = bytes.Clone(fr.data)
	s.size += len(fr.data)
	s.cost += cost
	r.pending += cost
	r.cnt.Fragments++
	if uint64(len(s.parts)) <= uint64(s.last) {
		return nil, nil
	}
	r.drop(key, s)
	r.cnt.Reassembled++
	r.asm = r.asm[:0]
	for i := uint32(0); i <= s.last; i++ {
		r.asm = append(r.asm, s.parts[i]...)
	}
	if s.hasCRC && payloadCRC(r.asm) != s.crc {
		r.cnt.FragmentsBadCRC++
		return nil, errors.New("nmsg: reassembled message fails its crc")
	}
	return r.d.decode(flags&^flagFragment, r.asm)
}

func (r *Reassembler) drop(key fragKey, s *fragSet) {
	delete(r.sets, key)
	r.pending -= s.cost
}

func (r *Reassembler) evictOldest() { r.evictOldestExcept(nil) }

// evictOldestExcept scans all pending messages; it only runs when a
// limit is hit, which a well-behaved sender population never does.
func (r *Reassembler) evictOldestExcept(keep *fragSet) {
	var oldest *fragSet
	var okey fragKey
	for k, s := range r.sets {
		if s != keep && (oldest == nil || s.first.Before(oldest.first)) {
			oldest, okey = s, k
		}
	}
	if oldest != nil {
		r.drop(okey, oldest)
		r.cnt.EvictedMessages++
	}
}

// Expire drops incomplete messages whose first fragment arrived more than
// Timeout before now and returns how many it dropped. Feed calls it at
// most once a second; call it directly when no datagrams arrive.
func (r *Reassembler) Expire(now time.Time) int {
	n := 0
	for k, s := range r.sets {
		if now.Sub(s.first) > r.opts.Timeout {
			r.drop(k, s)
			n++
		}
	}
	r.cnt.ExpiredMessages += uint64(n)
	return n
}

// Pending returns the number of incomplete messages held.
func (r *Reassembler) Pending() int { return len(r.sets) }

// Counters returns the counters so far.
func (r *Reassembler) Counters() Counters { return *r.cnt }

// ReaderOptions configures a Reader.
type ReaderOptions struct {
	// MaxSize caps container bodies and inflated bodies; default
	// MaxContainerSize.
	MaxSize int
}

// Reader reads payloads from a stream of containers (a file or a TCP
// stream). Fragment containers, which files do not normally hold, are
// reassembled as datagrams would be.
type Reader struct {
	r       io.Reader
	max     int
	hdr     [HeaderSize]byte
	body    []byte
	d       decoder
	reasm   *Reassembler
	cnt     Counters
	pending []Payload
	err     error
}

// NewReader returns a Reader reading from r.
func NewReader(r io.Reader, opts ReaderOptions) *Reader {
	if opts.MaxSize <= 0 {
		opts.MaxSize = MaxContainerSize
	}
	rd := &Reader{r: r, max: opts.MaxSize}
	rd.d = decoder{max: opts.MaxSize, cnt: &rd.cnt}
	return rd
}

// Next returns the next payload. The payload and its Data are valid only
// until the next call to Next; copy what must outlive it.
//
// At the end of a well-formed stream Next returns io.EOF; a stream that
// ends inside a container returns an error wrapping both ErrTruncated and
// io.ErrUnexpectedEOF. Errors that break the framing (truncation, bad
// magic or version, oversize, read errors) are sticky. A container whose
// contents do not decode (ErrMalformed, ErrBadZlib) is skipped: Next
// returns the error once and continues with the next container.
func (rd *Reader) Next() (*Payload, error) {
	for len(rd.pending) == 0 {
		if rd.err != nil {
			return nil, rd.err
		}
		if err := rd.readContainer(); err != nil {
			return nil, err
		}
	}
	p := &rd.pending[0]
	rd.pending = rd.pending[1:]
	return p, nil
}

func (rd *Reader) fail(err error) error {
	rd.err = err
	return err
}

func (rd *Reader) readContainer() error {
	n, err := io.ReadFull(rd.r, rd.hdr[:])
	switch {
	case n == 0 && err == io.EOF:
		return rd.fail(io.EOF)
	case err == io.ErrUnexpectedEOF:
		rd.cnt.Truncated++
		return rd.fail(fmt.Errorf("%w: header: %w", ErrTruncated, io.ErrUnexpectedEOF))
	case err != nil:
		return rd.fail(err)
	}
	h, err := parseHeader(rd.hdr[:])
	if err != nil {
		switch err {
		case ErrBadMagic:
			rd.cnt.BadMagic++
		case ErrBadVersion:
			rd.cnt.BadVersion++
		}
		return rd.fail(err)
	}
	if uint64(h.length) > uint64(rd.max) {
		rd.cnt.Oversize++
		return rd.fail(fmt.Errorf("%w: body length %d", ErrOversize, h.length))
	}
	if cap(rd.body) < int(h.length) {
		rd.body = make([]byte, h.length)
	}
	body := rd.body[:h.length]
	if _, err := io.ReadFull(rd.r, body); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			rd.cnt.Truncated++
			return rd.fail(fmt.Errorf("%w: body: %w", ErrTruncated, io.ErrUnexpectedEOF))
		}
		return rd.fail(err)
	}
	var ps []Payload
	if h.flags&flagFragment != 0 {
		if rd.reasm == nil {
			rd.reasm = &Reassembler{}
			rd.reasm.init(ReassemblerOptions{MaxSize: rd.max}, &rd.cnt)
		}
		// A stream has no clock; fragments never expire, and the
		// reassembler's memory limits bound what they can hold.
		ps, err = rd.reasm.container("", h.flags, body, time.Time{})
	} else {
		ps, err = rd.d.decode(h.flags, body)
	}
	rd.pending = ps
	return err
}

// Counters returns the counters so far.
func (rd *Reader) Counters() Counters { return rd.cnt }

package nmsg

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zlib"
)

// WriterStats counts what a writer produced.
type WriterStats struct {
	Containers uint64 // containers completed (a fragmented one counts once)
	Payloads   uint64 // payloads written
	Bytes      uint64 // octets handed to the io.Writer or send function
	Datagrams  uint64 // datagrams sent (DatagramWriter only)
	Fragments  uint64 // fragment datagrams sent (DatagramWriter only)
	Compressed uint64 // containers sent with the zlib flag
}

// builder accumulates one container. buf starts with HeaderSize octets
// reserved for the header so that a finished container is written with a
// single Write call and no copying.
type builder struct {
	buf      []byte
	crcs     []uint32
	crcBytes int
	n        int
	withCRC  bool
}

func (b *builder) reset() {
	if b.buf == nil {
		b.buf = make([]byte, HeaderSize, 4096)
	}
	b.buf = b.buf[:HeaderSize]
	b.crcs = b.crcs[:0]
	b.crcBytes = 0
	b.n = 0
}

// sizeWith returns the container size after adding p, given extra octets of
// trailing fields (sequence numbers) that the finished container carries.
func (b *builder) sizeWith(p *Payload, extra int) (size, psize int, crc uint32) {
	psize = PayloadSize(p)
	size = len(b.buf) + 1 + varintLen(uint64(psize)) + psize + b.crcBytes + extra
	if b.withCRC {
		crc = payloadCRC(p.Data)
		size += 1 + varintLen(uint64(crc))
	}
	return size, psize, crc
}

func (b *builder) add(p *Payload, psize int, crc uint32) {
	b.buf = append(b.buf, tag(1, wtBytes))
	b.buf = binary.AppendUvarint(b.buf, uint64(psize))
	b.buf = AppendPayload(b.buf, p)
	if b.withCRC {
		b.crcs = append(b.crcs, crc)
		b.crcBytes += 1 + varintLen(uint64(crc))
	}
	b.n++
}

// finish appends the CRCs (after all payloads, as protobuf-c orders
// fields by number) and the optional sequence fields.
func (b *builder) finish(seq bool, sequence uint32, seqID uint64) {
	for _, c := range b.crcs {
		b.buf = append(b.buf, tag(2, wtVarint))
		b.buf = binary.AppendUvarint(b.buf, uint64(c))
	}
	if seq {
		b.buf = append(b.buf, tag(3, wtVarint))
		b.buf = binary.AppendUvarint(b.buf, uint64(sequence))
		b.buf = append(b.buf, tag(4, wtVarint))
		b.buf = binary.AppendUvarint(b.buf, seqID)
	}
}

// zlibLevel trades CPU for size. On sensord's dnsqr output (README,
// "Benchmarks") level 2 costs a quarter to a sixth of the CPU of the
// standard library's default level for output at most a quarter larger;
// level 1 is no faster but a sixth larger, and levels 3 to 6 buy a few
// percent of size for 30-100% more CPU.
const zlibLevel = 2

// zlibWriters lends deflate state (some hundred KiB of tables) to whichever
// writer is flushing: a writer holds it only while compressing, so writers
// that are created often (one per spool segment) or sit idle keep none,
// and steady-state flushing allocates nothing.
var zlibWriters = sync.Pool{New: func() any {
	zw, err := zlib.NewWriterLevel(nil, zlibLevel)
	if err != nil {
		panic(err) // zlibLevel is a valid constant
	}
	return zw
}}

// compressor deflates container bodies into a reused buffer.
type compressor struct {
	out sliceWriter
}

type sliceWriter struct{ b []byte }

func (w *sliceWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// compress returns header space + BE32 uncompressed length + zlib stream
// of body. The result is valid until the next call.
func (c *compressor) compress(body []byte) []byte {
	// A body that does not shrink is sent uncompressed, so the stream
	// rarely needs more room than the body; reserving it up front saves
	// the doublings of growing from empty.
	if cap(c.out.b) < HeaderSize+4+len(body) {
		c.out.b = make([]byte, 0, HeaderSize+4+len(body)+len(body)/64)
	}
	c.out.b = c.out.b[:HeaderSize]
	c.out.b = binary.BigEndian.AppendUint32(c.out.b, uint32(len(body)))
	zw := zlibWriters.Get().(*zlib.Writer)
	zw.Reset(&c.out)
	// Writes to a sliceWriter cannot fail.
	zw.Write(body)
	zw.Close()
	// Drop the reference to c.out so the pooled writer does not keep this
	// writer's buffer alive.
	zw.Reset(nil)
	zlibWriters.Put(zw)
	return c.out.b
}

// FileOptions configures a FileWriter. The zero value writes
// uncompressed 1 MiB containers without CRCs.
type FileOptions struct {
	// Zlib compresses each container. A container that zlib would make
	// larger is written uncompressed; readers look at each container's
	// flags, so this is invisible to them.
	Zlib bool
	// MaxSize bounds every container, header included; 0 means
	// MaxContainerSize, which is also the upper limit because readers
	// (this package's and the C library's) reject larger containers.
	MaxSize int
	// CRC adds payload_crcs, as the C library does by default.
	CRC bool
	// SequenceID, when not zero, stamps every container with sequence_id
	// and a sequence counting from 0, as datagrams carry them. The C file
	// output has none (leave it zero for byte compatibility); the spool
	// sets it so that a receiver can recognise a container delivered twice.
	SequenceID uint64
}

// FileWriter writes a stream of containers, as the C library's file and
// stream outputs do: no fragmentation, and no sequence numbers unless
// FileOptions.SequenceID asks for them.
type FileWriter struct {
	w     io.Writer
	opts  FileOptions
	seq   uint32
	b     builder
	z     compressor
	stats WriterStats
	err   error
}

// NewFileWriter returns a FileWriter writing to w. Close must be called
// to write the last container; it does not close w.
func NewFileWriter(w io.Writer, opts FileOptions) (*FileWriter, error) {
	if opts.MaxSize == 0 {
		opts.MaxSize = MaxContainerSize
	}
	if opts.MaxSize < MinMTU || opts.MaxSize > MaxContainerSize {
		return nil, fmt.Errorf("nmsg: MaxSize %d outside [%d, %d]", opts.MaxSize, MinMTU, MaxContainerSize)
	}
	fw := &FileWriter{w: w, opts: opts}
	fw.b.withCRC = opts.CRC
	fw.b.reset()
	return fw, nil
}

// Write adds p to the current container, first writing the container out
// if p would not fit. p and p.Data are copied before Write returns, so
// the caller may reuse them immediately. In steady state Write does not
// allocate. A payload that cannot fit even in an empty container returns
// ErrTooLarge and leaves the writer usable; an error from the underlying
// io.Writer is sticky.
func (fw *FileWriter) Write(p *Payload) error {
	if fw.err != nil {
		return fw.err
	}
	size, psize, crc := fw.b.sizeWith(p, fw.seqBytes())
	if size > fw.opts.MaxSize {
		if fw.b.n == 0 {
			return ErrTooLarge
		}
		if err := fw.Flush(); err != nil {
			return err
		}
		size, psize, crc = fw.b.sizeWith(p, fw.seqBytes())
		if size > fw.opts.MaxSize {
			return ErrTooLarge
		}
	}
	fw.b.add(p, psize, crc)
	fw.stats.Payloads++
	return nil
}

// Flush writes the current container, if it holds any payload.
func (fw *FileWriter) Flush() error {
	if fw.err != nil {
		return fw.err
	}
	if fw.b.n == 0 {
		return nil
	}
	fw.b.finish(fw.opts.SequenceID != 0, fw.seq, fw.opts.SequenceID)
	fw.seq++
	out := fw.b.buf
	flags := byte(0)
	if fw.opts.Zlib {
		if z := fw.z.compress(out[HeaderSize:]); len(z) < len(out) {
			out, flags = z, flagZlib
			fw.stats.Compressed++
		}
	}
	putHeader(out, flags, len(out)-HeaderSize)
	n, err := fw.w.Write(out)
	fw.stats.Bytes += uint64(n)
	fw.b.reset()
	if err != nil {
		fw.err = err
		return err
	}
	fw.stats.Containers++
	return nil
}

func (fw *FileWriter) seqBytes() int {
	if fw.opts.SequenceID == 0 {
		return 0
	}
	return 1 + varintLen(uint64(fw.seq)) + 1 + varintLen(fw.opts.SequenceID)
}

// Close flushes the last container. Further writes return ErrClosed.
func (fw *FileWriter) Close() error {
	err := fw.Flush()
	if fw.err == nil {
		fw.err = ErrClosed
	}
	return err
}

// Stats returns the counters so far.
func (fw *FileWriter) Stats() WriterStats { return fw.stats }

// DatagramOptions configures a DatagramWriter.
type DatagramOptions struct {
	// MTU bounds every datagram (the UDP payload); 0 means DefaultMTU.
	MTU int
	// Zlib compresses each container (see FileOptions.Zlib).
	Zlib bool
	// CRC adds payload_crcs to containers and, to fragments, the crc of
	// the whole fragmented body, as the C library does.
	CRC bool
	// Rand supplies the random sequence_id and first fragment id;
	// nil means crypto/rand. Tests inject a deterministic reader.
	Rand io.Reader
}

// DatagramWriter turns payloads into UDP datagrams, one container per
// datagram, with sequence numbers so receivers can detect loss.
// Containers larger than the MTU are split into fragment datagrams.
type DatagramWriter struct {
	send     func([]byte) error
	opts     DatagramOptions
	b        builder
	z        compressor
	dgram    []byte
	sequence uint32
	seqID    uint64
	fragID   uint32
	stats    WriterStats
}

// NewDatagramWriter returns a DatagramWriter that hands each datagram to
// send. The slice passed to send is reused after send returns, so send
// must not retain it (net.UDPConn.Write does not).
func NewDatagramWriter(send func([]byte) error, opts DatagramOptions) (*DatagramWriter, error) {
	if opts.MTU == 0 {
		opts.MTU = DefaultMTU
	}
	if opts.MTU < MinMTU || opts.MTU > MaxMTU {
		return nil, fmt.Errorf("nmsg: MTU %d outside [%d, %d]", opts.MTU, MinMTU, MaxMTU)
	}
	r := opts.Rand
	if r == nil {
		r = rand.Reader
	}
	var seed [12]byte
	if _, err := io.ReadFull(r, seed[:]); err != nil {
		return nil, fmt.Errorf("nmsg: reading random seed: %w", err)
	}
	dw := &DatagramWriter{
		send:   send,
		opts:   opts,
		seqID:  binary.BigEndian.Uint64(seed[:8]),
		fragID: binary.BigEndian.Uint32(seed[8:]),
		dgram:  make([]byte, 0, opts.MTU),
	}
	dw.b.withCRC = opts.CRC
	dw.b.reset()
	return dw, nil
}

func (dw *DatagramWriter) seqBytes() int {
	return 1 + varintLen(uint64(dw.sequence)) + 1 + varintLen(dw.seqID)
}

// Write adds p to the current container, first sending the container if
// p would not fit in one datagram. A payload too big for a datagram on
// its own is sent at once as fragments. p is copied before Write
// returns. Errors from send are returned but not sticky: the container
// is dropped, as a lost datagram would be.
func (dw *DatagramWriter) Write(p *Payload) error {
	size, psize, crc := dw.b.sizeWith(p, dw.seqBytes())
	if size > dw.opts.MTU && dw.b.n > 0 {
		if err := dw.Flush(); err != nil {
			return err
		}
		size, psize, crc = dw.b.sizeWith(p, dw.seqBytes())
	}
	if size > MaxContainerSize {
		return ErrTooLarge
	}
	dw.b.add(p, psize, crc)
	dw.stats.Payloads++
	if size > dw.opts.MTU {
		return dw.Flush()
	}
	return nil
}

// Flush sends the current container, if it holds any payload.
func (dw *DatagramWriter) Flush() error {
	if dw.b.n == 0 {
		return nil
	}
	defer dw.b.reset()
	dw.b.finish(true, dw.sequence, dw.seqID)
	dw.sequence++
	dw.stats.Containers++
	out := dw.b.buf
	flags := byte(0)
	if dw.opts.Zlib {
		if z := dw.z.compress(out[HeaderSize:]); len(z) < len(out) {
			out, flags = z, flagZlib
			dw.stats.Compressed++
		}
	}
	if len(out) <= dw.opts.MTU {
		putHeader(out, flags, len(out)-HeaderSize)
		return dw.emit(out)
	}
	return dw.fragment(out[HeaderSize:], flags|flagFragment)
}

func (dw *DatagramWriter) emit(d []byte) error {
	dw.stats.Datagrams++
	dw.stats.Bytes += uint64(len(d))
	return dw.send(d)
}

// fragment splits body into NmsgFragment datagrams. Every fragment is
// non-empty and the count is ceil(len/fragsz): go-nmsg v0.2.0 sends an
// empty trailing fragment (which makes the C reader abort) and the C
// writer never sends the last fragment of a body that is an exact
// multiple of the fragment size.
func (dw *DatagramWriter) fragment(body []byte, flags byte) error {
	fragsz := dw.opts.MTU - HeaderSize - fragOverhead
	last := uint32((len(body)+fragsz-1)/fragsz - 1)
	// Successive ids rather than fresh random ones: receivers key
	// reassembly by (id, sender), so ids must not repeat within the
	// 30 s reassembly window, which a counter guarantees.
	id := dw.fragID
	dw.fragID++
	var crc uint32
	if dw.opts.CRC {
		crc = payloadCRC(body)
	}
	var firstErr error
	for i := uint32(0); len(body) > 0; i++ {
		n := min(fragsz, len(body))
		d := appendHeader(dw.dgram[:0], flags, 0)
		d = appendFragment(d, id, i, last, body[:n], dw.opts.CRC, crc)
		putHeader(d, flags, len(d)-HeaderSize)
		dw.dgram = d
		body = body[n:]
		dw.stats.Fragments++
		if err := dw.emit(d); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// Stats returns the counters so far.
func (dw *DatagramWriter) Stats() WriterStats { return dw.stats }

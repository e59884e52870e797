// Package dnstap reads dnstap (Frame Streams, content type protobuf:dnstap.Dnstap) from a
// resolver's socket or a recorded file and turns the resolver's own upstream messages into DNS
// messages with addresses and times, for the pipeline to pair like captured traffic. CLIENT_*
// messages (end users talking to the resolver) are counted and dropped here; they never reach the
// pipeline.
//
// The Frame Streams decoder is ours rather than golang-framestream's: a writer is hostile input
// like any packet, and an oversized or broken frame must be skipped and counted while the
// connection (and every other writer's) keeps being served.
package dnstap

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ContentType is the only content type the sensor accepts.
const ContentType = "protobuf:dnstap.Dnstap"

// Frame Streams control frame types.
const (
	ctrlAccept = 1
	ctrlStart  = 2
	ctrlStop   = 3
	ctrlReady  = 4
	ctrlFinish = 5

	fieldContentType = 1

	// maxControl bounds control frames; the reference implementation (fstrm) uses 512.
	maxControl = 512
)

// DefaultMaxFrame bounds a data frame. A dnstap message holds at most two DNS messages (≤ 64 KiB
// each) and a few addresses, so anything larger is not dnstap and is skipped.
const DefaultMaxFrame = 256 << 10

// ErrProtocol is wrapped by errors for streams that break Frame Streams itself (not a bad data
// frame, which is skipped): the connection cannot be resynchronised and is closed.
var ErrProtocol = errors.New("frame streams protocol error")

// Reader decodes one Frame Streams stream. It is owned by one goroutine.
type Reader struct {
	br        *bufio.Reader
	w         io.Writer // bidirectional: where ACCEPT and FINISH go; nil for files
	max       int
	buf       []byte
	started   bool
	Oversized uint64 // data frames longer than the limit, skipped
	Frames    uint64 // data frames returned
}

// NewReader reads a unidirectional stream (a file) from r. maxFrame ≤ 0 means DefaultMaxFrame.
func NewReader(r io.Reader, maxFrame int) *Reader {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	return &Reader{br: bufio.NewReaderSize(r, 64<<10), max: maxFrame}
}

// NewBidirectionalReader reads from a writer that expects the READY/ACCEPT and STOP/FINISH
// handshakes (a resolver connected to the socket); replies go to w.
func NewBidirectionalReader(rw io.ReadWriter, maxFrame int) *Reader {
	r := NewReader(rw, maxFrame)
	r.w = rw
	return r
}

// Next returns the next data frame, valid until the following call. It returns io.EOF after the
// writer's STOP (or a clean end of input between frames), and an error wrapping ErrProtocol or
// io.ErrUnexpectedEOF when the stream is broken. Oversized frames are skipped and counted.
func (r *Reader) Next() ([]byte, error) {
	if !r.started {
		if err := r.handshake(); err != nil {
			return nil, err
		}
		r.started = true
	}
	for {
		n, err := r.u32()
		if err != nil {
			if err == io.EOF {
				return nil, io.EOF // a writer that vanished between frames lost nothing
			}
			return nil, err
		}
		if n == 0 {
			typ, _, err := r.control()
			if err != nil {
				return nil, err
			}
			if typ != ctrlStop {
				return nil, fmt.Errorf("%w: control frame %d inside the data phase", ErrProtocol, typ)
			}
			if r.w != nil {
				if err := writeControl(r.w, ctrlFinish, false); err != nil {
					return nil, fmt.Errorf("sending FINISH: %w", err)
				}
			}
			return nil, io.EOF
		}
		if uint64(n) > uint64(r.max) {
			r.Oversized++
			if _, err := r.br.Discard(int(n)); err != nil {
				return nil, unexpected(err)
			}
			continue
		}
		if cap(r.buf) < int(n) {
			r.buf = make([]byte, n)
		}
		r.buf = r.buf[:n]
		if _, err := io.ReadFull(r.br, r.buf); err != nil {
			return nil, unexpected(err)
		}
		r.Frames++
		return r.buf, nil
	}
}

func (r *Reader) handshake() error {
	if r.w != nil {
		if err := r.expect(ctrlReady); err != nil {
			return err
		}
		if err := writeControl(r.w, ctrlAccept, true); err != nil {
			return fmt.Errorf("sending ACCEPT: %w", err)
		}
	}
	return r.expect(ctrlStart)
}

// expect reads one control frame of type want whose content types, if any are listed, include ours.
func (r *Reader) expect(want uint32) error {
	n, err := r.u32()
	if err != nil {
		return unexpected(err)
	}
	if n != 0 {
		return fmt.Errorf("%w: data frame before the handshake", ErrProtocol)
	}
	typ, types, err := r.control()
	if err != nil {
		return err
	}
	if typ != want {
		return fmt.Errorf("%w: control frame %d, want %d", ErrProtocol, typ, want)
	}
	if len(types) == 0 {
		return nil
	}
	for _, t := range types {
		if t == ContentType {
			return nil
		}
	}
	return fmt.Errorf("%w: content types %q do not include %q", ErrProtocol, types, ContentType)
}

// control reads a control frame after its escape: length, type, and content-type fields.
func (r *Reader) control() (typ uint32, types []string, err error) {
	n, err := r.u32()
	if err != nil {
		return 0, nil, unexpected(err)
	}
	if n < 4 || n > maxControl {
		return 0, nil, fmt.Errorf("%w: control frame length %d", ErrProtocol, n)
	}
	var b [maxControl]byte
	if _, err := io.ReadFull(r.br, b[:n]); err != nil {
		return 0, nil, unexpected(err)
	}
	typ = binary.BigEndian.Uint32(b[:])
	f := b[4:n]
	for len(f) > 0 {
		if len(f) < 8 {
			return 0, nil, fmt.Errorf("%w: control field cut short", ErrProtocol)
		}
		ft, fl := binary.BigEndian.Uint32(f), binary.BigEndian.Uint32(f[4:])
		if uint64(fl) > uint64(len(f)-8) {
			return 0, nil, fmt.Errorf("%w: control field length %d beyond the frame", ErrProtocol, fl)
		}
		if ft == fieldContentType {
			types = append(types, string(f[8:8+fl]))
		}
		f = f[8+fl:]
	}
	return typ, types, nil
}

func (r *Reader) u32() (uint32, error) {
	var b [4]byte
	if _, err := io.ReadFull(r.br, b[:]); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(b[:]), nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// writeControl writes a control frame, with our content type when withType is set.
func writeControl(w io.Writer, typ uint32, withType bool) error {
	b := make([]byte, 0, 12+8+len(ContentType))
	n := 4
	if withType {
		n += 8 + len(ContentType)
	}
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	b = binary.BigEndian.AppendUint32(b, typ)
	if withType {
		b = binary.BigEndian.AppendUint32(b, fieldContentType)
		b = binary.BigEndian.AppendUint32(b, uint32(len(ContentType)))
		b = append(b, ContentType...)
	}
	_, err := w.Write(b)
	return err
}

// Writer writes a Frame Streams stream of dnstap frames; tests and tools use it to make files and
// to play a resolver. It is not used on the device's data path.
type Writer struct {
	w  io.Writer
	rd *bufio.Reader // bidirectional: ACCEPT and FINISH come back here
}

// NewWriter starts a unidirectional stream (START) on w.
func NewWriter(w io.Writer) (*Writer, error) {
	return &Writer{w: w}, writeControl(w, ctrlStart, true)
}

// NewBidirectionalWriter performs READY/ACCEPT, then START, on rw.
func NewBidirectionalWriter(rw io.ReadWriter) (*Writer, error) {
	fw := &Writer{w: rw, rd: bufio.NewReader(rw)}
	if err := writeControl(rw, ctrlReady, true); err != nil {
		return nil, err
	}
	r := &Reader{br: fw.rd}
	if err := r.expect(ctrlAccept); err != nil {
		return nil, fmt.Errorf("waiting for ACCEPT: %w", err)
	}
	return fw, writeControl(rw, ctrlStart, true)
}

// Write sends one data frame.
func (w *Writer) Write(frame []byte) error {
	b := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(frame)), uint32(len(frame)))
	_, err := w.w.Write(append(b, frame...))
	return err
}

// Close sends STOP and, on a bidirectional stream, waits for FINISH.
func (w *Writer) Close() error {
	if err := writeControl(w.w, ctrlStop, false); err != nil {
		return err
	}
	if w.rd == nil {
		return nil
	}
	r := &Reader{br: w.rd}
	return r.expect(ctrlFinish)
}

// Package source reads captured frames from pcap and pcapng files (and, on Linux, from AF_PACKET
// rings) and hands them to a callback with the capture timestamp.
package source

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/sie-europe/dnssensor/sensor/internal/decode"
)

// Handler receives one frame. frame is valid only during the call; wireLen is the frame's length
// on the wire (larger than len(frame) when the capture cut it); ts is in ns since the epoch.
type Handler func(link decode.LinkType, ts int64, frame []byte, wireLen int)

// ErrUnsupportedLink is returned for captures of a link type the decoder does not know.
var ErrUnsupportedLink = errors.New("unsupported link type")

// MaxFrame is the longest frame a capture file may hold: libpcap's MAXIMUM_SNAPLEN. A record
// that claims more is refused before its bytes are buffered, whatever snap length the file
// declares: its header comes from the file, and a compressed file can back a 512 MiB claim
// with a few hundred KiB.
const MaxFrame = 262144

const (
	// readBuf is the buffer between the file and the capture reader.
	readBuf = 256 << 10
	// recordBudget is the most one record (with the blocks before it and one buffer refill)
	// may read from the file: beyond it the record cannot be a frame of at most MaxFrame
	// octets, and the reader stops instead of growing its buffer with the record.
	recordBudget = readBuf + MaxFrame + 64<<10
)

var errRecordTooLong = fmt.Errorf("a record is longer than any frame (%d octets, libpcap's largest snap length)", MaxFrame)

// ReadFile reads a pcap or pcapng file and calls h for each frame. A file that ends inside a
// record returns an error after every complete frame before it has been handled.
func ReadFile(path string, h Handler) (frames int, err error) {
	return ReadFileContext(context.Background(), path, h)
}

// ReadFileContext is ReadFile that stops when ctx ends, even while a pipe or FIFO has nothing to
// read: it then returns the frames handled so far and ctx's error.
func ReadFileContext(ctx context.Context, path string, h Handler) (frames int, err error) {
	f, err := open(ctx, path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// Pipes and FIFOs are pollable, so a deadline in the past wakes a blocked read; regular
	// files are not (and never block for long): Read checks ctx between reads for them.
	stop := context.AfterFunc(ctx, func() { f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	return Read(ctx, f, h)
}

// open opens path, giving up when ctx ends: opening a FIFO waits for its writer.
func open(ctx context.Context, path string) (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	opened := make(chan result, 1)
	go func() {
		f, err := os.Open(path)
		opened <- result{f, err}
	}()
	select {
	case r := <-opened:
		return r.f, r.err
	case <-ctx.Done():
		unblockOpen(path)
		go func() {
			if r := <-opened; r.f != nil {
				r.f.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

type zeroCopyReader interface {
	ZeroCopyReadPacketData() ([]byte, gopacket.CaptureInfo, error)
}

// Read reads a pcap or pcapng stream, gzip-compressed or not, until its end or until ctx ends
// (then it returns ctx's error).
func Read(ctx context.Context, rd io.Reader, h Handler) (frames int, err error) {
	frames, err = read(ctx, rd, h)
	if err != nil && ctx.Err() != nil {
		return frames, ctx.Err()
	}
	return frames, err
}

func read(ctx context.Context, rd io.Reader, h Handler) (frames int, err error) {
	// ctx is checked below every buffer, so what was read before it ended is still handled.
	src := bufio.NewReaderSize(ctxReader{ctx, rd}, 64<<10)
	if magic, err := src.Peek(2); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(src)
		if err != nil {
			return 0, fmt.Errorf("reading gzip header: %w", noEOF(err))
		}
		rd = gz
	} else {
		rd = src
	}
	lim := &budgetReader{r: rd, left: recordBudget}
	// The capture readers take this buffer as theirs (it is larger than bufio's default), so
	// every byte they read passes through lim.
	r := bufio.NewReaderSize(lim, readBuf)
	magic, err := r.Peek(4)
	if err != nil {
		return 0, fmt.Errorf("reading capture header: %w", noEOF(err))
	}
	var zr zeroCopyReader
	var linkOf func(ifIndex int) decode.LinkType
	if magic[0] == 0x0a && magic[1] == 0x0d && magic[2] == 0x0d && magic[3] == 0x0a {
		// Interfaces of different link types are common (tshark -i eth0 -i any); each frame
		// is decoded with its own interface's link type.
		ng, err := pcapgo.NewNgReader(r, pcapgo.NgReaderOptions{WantMixedLinkType: true})
		if err != nil {
			return 0, fmt.Errorf("reading pcapng section header: %w", tooLong(err))
		}
		zr = ng
		linkOf = func(ifIndex int) decode.LinkType {
			ifc, err := ng.Interface(ifIndex)
			if err != nil {
				return decode.LinkType(0xffffffff)
			}
			return decode.LinkType(ifc.LinkType)
		}
	} else {
		pr, err := pcapgo.NewReader(r)
		if err != nil {
			return 0, fmt.Errorf("reading pcap header: %w", err)
		}
		link := decode.LinkType(pr.LinkType())
		if !decode.Supported(link) {
			return 0, fmt.Errorf("%w %d", ErrUnsupportedLink, link)
		}
		if pr.Snaplen() > MaxFrame {
			// pcapgo takes records up to the declared snap length.
			pr.SetSnaplen(MaxFrame)
		}
		zr = pr
		linkOf = func(int) decode.LinkType { return link }
	}
	for {
		lim.left = recordBudget
		data, ci, err := zr.ZeroCopyReadPacketData()
		if err == io.EOF {
			return frames, nil
		}
		if err == nil && ci.CaptureLength > MaxFrame {
			err = errRecordTooLong
		}
		if err != nil {
			return frames, fmt.Errorf("after %d frames: %w", frames, tooLong(noEOF(err)))
		}
		frames++
		// Passing the index, not &ci, keeps ci off the heap: one allocation per frame otherwise.
		h(linkOf(ci.InterfaceIndex), ci.Timestamp.UnixNano(), data, ci.Length)
	}
}

// ctxReader stops reading once ctx has ended.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// budgetReader fails once a record has read more than it may.
type budgetReader struct {
	r    io.Reader
	left int
}

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errRecordTooLong
	}
	if len(p) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= n
	return n, err
}

// tooLong names the limit for pcapgo's own refusal of a record longer than the snap length.
func tooLong(err error) error {
	if errors.Is(err, errRecordTooLong) || err == nil {
		return err
	}
	if strings.HasPrefix(err.Error(), "capture length exceeds snap length") {
		return fmt.Errorf("%v: %w", err, errRecordTooLong)
	}
	return err
}

// noEOF turns a bare io.EOF in the middle of a structure into the truncation it is.
func noEOF(err error) error {
	if err == io.EOF {
		return fmt.Errorf("file truncated: %w", io.ErrUnexpectedEOF)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("file truncated: %w", err)
	}
	return err
}

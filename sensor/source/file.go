// Package source reads captured frames from pcap and pcapng files (and, on Linux, from AF_PACKET
// rings) and hands them to a callback with the capture timestamp.
package source

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/sie-europe/dnssensor/sensor/decode"
)

// Handler receives one frame. frame is valid only during the call; wireLen is the frame's length
// on the wire (larger than len(frame) when the capture cut it); ts is in ns since the epoch.
type Handler func(link decode.LinkType, ts int64, frame []byte, wireLen int)

// ErrUnsupportedLink is returned for captures of a link type the decoder does not know.
var ErrUnsupportedLink = errors.New("unsupported link type")

// ReadFile reads a pcap or pcapng file and calls h for each frame. A file that ends inside a
// record returns an error after every complete frame before it has been handled.
func ReadFile(path string, h Handler) (frames int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return Read(bufio.NewReaderSize(f, 1<<20), h)
}

type zeroCopyReader interface {
	ZeroCopyReadPacketData() ([]byte, gopacket.CaptureInfo, error)
}

// Read reads a pcap or pcapng stream.
func Read(r *bufio.Reader, h Handler) (frames int, err error) {
	magic, err := r.Peek(4)
	if err != nil {
		return 0, fmt.Errorf("reading capture header: %w", noEOF(err))
	}
	var zr zeroCopyReader
	var linkOf func(ifIndex int) decode.LinkType
	if magic[0] == 0x0a && magic[1] == 0x0d && magic[2] == 0x0d && magic[3] == 0x0a {
		ng, err := pcapgo.NewNgReader(r, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			return 0, fmt.Errorf("reading pcapng section header: %w", err)
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
		zr = pr
		linkOf = func(int) decode.LinkType { return link }
	}
	for {
		data, ci, err := zr.ZeroCopyReadPacketData()
		if err == io.EOF {
			return frames, nil
		}
		if err != nil {
			return frames, fmt.Errorf("after %d frames: %w", frames, noEOF(err))
		}
		frames++
		// Passing the index, not &ci, keeps ci off the heap: one allocation per frame otherwise.
		h(linkOf(ci.InterfaceIndex), ci.Timestamp.UnixNano(), data, ci.Length)
	}
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

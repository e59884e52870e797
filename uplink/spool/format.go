package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// A segment file is a fixed header followed by a body of whole NMSG
// containers:
//
//	off len
//	  0   4  magic "DSPL"
//	  4   1  version (1)
//	  5   1  flags (flagZlib: containers may be compressed)
//	  6   2  reserved, zero
//	  8   8  sequence number (big-endian, as every field)
//	 16   8  body length
//	 24   4  records (NMSG payloads)
//	 28   4  containers
//	 32   8  first record time, Unix ns
//	 40   8  last record time, Unix ns
//	 48   8  seal time, Unix ns
//	 56   4  CRC32C of the body
//	 60   4  CRC32C of octets 0–59
//
// The header comes first rather than as a trailer because the producer
// holds the whole segment in memory and writes it with one call: a reader
// learns everything it needs (sequence, counts, age) from 64 octets, which
// keeps depth metrics and start-up checks cheap even with thousands of
// segments on disk. The file length must be exactly headerSize + body
// length, so truncation and appended garbage are both detected.
const (
	headerSize = 64
	formatV1   = 1
	flagZlib   = 0x01

	// maxBody caps what a reader loads: producers seal far below it, so
	// anything larger is damage, not data.
	maxBody = 256 << 20

	nmsgHeaderSize = 10
)

var segMagic = [4]byte{'D', 'S', 'P', 'L'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Meta is what a segment's header says about it.
type Meta struct {
	Seq        uint64
	Zlib       bool
	BodyLen    int64
	Records    uint32
	Containers uint32
	First      int64 // Unix ns of the first record
	Last       int64 // Unix ns of the last record
	Sealed     int64 // Unix ns when the producer sealed it
	BodyCRC    uint32
}

// FirstTime is the capture time of the segment's first record.
func (m Meta) FirstTime() time.Time { return time.Unix(0, m.First) }

// Errors from segment parsing; all wrap ErrCorrupt so callers can
// quarantine on errors.Is(err, ErrCorrupt).
var (
	ErrCorrupt = errors.New("spool: corrupt segment")
	ErrClosed  = errors.New("spool: closed")
)

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

func putHeader(b []byte, m Meta) {
	_ = b[headerSize-1]
	copy(b, segMagic[:])
	b[4] = formatV1
	b[5] = 0
	if m.Zlib {
		b[5] = flagZlib
	}
	b[6], b[7] = 0, 0
	be := binary.BigEndian
	be.PutUint64(b[8:], m.Seq)
	be.PutUint64(b[16:], uint64(m.BodyLen))
	be.PutUint32(b[24:], m.Records)
	be.PutUint32(b[28:], m.Containers)
	be.PutUint64(b[32:], uint64(m.First))
	be.PutUint64(b[40:], uint64(m.Last))
	be.PutUint64(b[48:], uint64(m.Sealed))
	be.PutUint32(b[56:], m.BodyCRC)
	be.PutUint32(b[60:], crc32.Checksum(b[:60], castagnoli))
}

// parseHeader checks the header's own integrity; it does not look at the
// body.
func parseHeader(b []byte) (Meta, error) {
	var m Meta
	if len(b) < headerSize {
		return m, corrupt("%d octets, shorter than the %d-octet header", len(b), headerSize)
	}
	if [4]byte(b[:4]) != segMagic {
		return m, corrupt("bad magic %q", b[:4])
	}
	be := binary.BigEndian
	if got, want := crc32.Checksum(b[:60], castagnoli), be.Uint32(b[60:]); got != want {
		return m, corrupt("header CRC %08x, want %08x", got, want)
	}
	if b[4] != formatV1 {
		return m, corrupt("version %d", b[4])
	}
	if b[5]&^flagZlib != 0 || b[6] != 0 || b[7] != 0 {
		return m, corrupt("unknown flags %02x%02x%02x", b[5], b[6], b[7])
	}
	m.Seq = be.Uint64(b[8:])
	bl := be.Uint64(b[16:])
	if bl > maxBody {
		return m, corrupt("body length %d above the %d cap", bl, maxBody)
	}
	m.Zlib = b[5]&flagZlib != 0
	m.BodyLen = int64(bl)
	m.Records = be.Uint32(b[24:])
	m.Containers = be.Uint32(b[28:])
	m.First = int64(be.Uint64(b[32:]))
	m.Last = int64(be.Uint64(b[40:]))
	m.Sealed = int64(be.Uint64(b[48:]))
	m.BodyCRC = be.Uint32(b[56:])
	return m, nil
}

// parseSegment verifies a whole segment file image: header, exact length,
// body CRC, and that the body is a sequence of NMSG container headers
// whose lengths tile it exactly, as many as the header says. It returns
// the containers (aliasing b). It never allocates from a length it has
// not checked against len(b).
func parseSegment(b []byte, containers [][]byte) (Meta, [][]byte, error) {
	m, err := parseHeader(b)
	if err != nil {
		return m, nil, err
	}
	if int64(len(b)) != headerSize+m.BodyLen {
		return m, nil, corrupt("file is %d octets, header says %d", len(b), headerSize+m.BodyLen)
	}
	body := b[headerSize:]
	if got := crc32.Checksum(body, castagnoli); got != m.BodyCRC {
		return m, nil, corrupt("body CRC %08x, want %08x", got, m.BodyCRC)
	}
	containers = containers[:0]
	for len(body) > 0 {
		if len(body) < nmsgHeaderSize || string(body[:4]) != "NMSG" {
			return m, nil, corrupt("container %d: not an NMSG header", len(containers))
		}
		n := nmsgHeaderSize + int64(binary.BigEndian.Uint32(body[6:10]))
		if n > int64(len(body)) {
			return m, nil, corrupt("container %d: length %d beyond the body", len(containers), n)
		}
		containers = append(containers, body[:n])
		body = body[n:]
	}
	if uint32(len(containers)) != m.Containers {
		return m, nil, corrupt("%d containers, header says %d", len(containers), m.Containers)
	}
	if m.Records == 0 || m.Containers == 0 {
		return m, nil, corrupt("empty segment")
	}
	return m, containers, nil
}

// segName is the file name of sequence seq: fixed width so that a
// directory listing sorts in FIFO order.
func segName(seq uint64) string {
	var b [24]byte
	s := fmt.Appendf(b[:0], "%020d.seg", seq)
	return string(s)
}

// parseSegName accepts exactly what segName produces.
func parseSegName(name string) (uint64, bool) {
	if len(name) != 24 || name[20:] != ".seg" {
		return 0, false
	}
	var v uint64
	for i := 0; i < 20; i++ {
		c := name[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (1<<64-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}

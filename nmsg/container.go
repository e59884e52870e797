package nmsg

import (
	"encoding/binary"
	"sync"
)

const (
	// HeaderSize is the size of the container header: magic, flags,
	// version and the big-endian body length.
	HeaderSize = 10

	// MaxContainerSize is the largest container (header included) the
	// writers produce and the largest body or inflated body the readers
	// accept. It is the C library's NMSG_WBUFSZ_MAX.
	MaxContainerSize = 1 << 20

	// DefaultMTU is the C library's default datagram size for socket
	// outputs (NMSG_WBUFSZ_ETHER is larger, but 1280 survives any IPv6
	// path without IP fragmentation).
	DefaultMTU = 1280

	// MinMTU leaves room for the header, a fragment's protobuf overhead
	// and a useful amount of data.
	MinMTU = 128

	// MaxMTU is the largest UDP payload over IPv4.
	MaxMTU = 65507

	version = 2

	flagZlib     = 0x01
	flagFragment = 0x02
)

var magic = [4]byte{'N', 'M', 'S', 'G'}

func appendHeader(b []byte, flags byte, bodyLen int) []byte {
	b = append(b, magic[:]...)
	b = append(b, flags, version)
	return binary.BigEndian.AppendUint32(b, uint32(bodyLen))
}

func putHeader(b []byte, flags byte, bodyLen int) {
	copy(b, magic[:])
	b[4] = flags
	b[5] = version
	binary.BigEndian.PutUint32(b[6:], uint32(bodyLen))
}

// header is a decoded container header.
type header struct {
	flags   byte
	version byte
	length  uint32
}

func parseHeader(b []byte) (h header, err error) {
	if len(b) < HeaderSize {
		return h, ErrTruncated
	}
	if [4]byte(b[:4]) != magic {
		return h, ErrBadMagic
	}
	h.flags = b[4]
	h.version = b[5]
	h.length = binary.BigEndian.Uint32(b[6:10])
	if h.version != version {
		return h, ErrBadVersion
	}
	return h, nil
}

// container is a decoded Nmsg message. payloads hold the raw encoded
// NmsgPayload messages (aliasing the parsed buffer).
type container struct {
	payloads [][]byte
	crcs     []uint32
	sequence uint32
	seqID    uint64
	hasSeq   bool
	hasSeqID bool
	// seqOnly checks the payloads and CRCs but does not keep them: ContainerSequence wants the
	// sequence fields only, for each container a collector publishes or archives.
	seqOnly bool
}

// parseNmsg decodes an Nmsg message, reusing c's slices.
func parseNmsg(b []byte, c *container) error {
	c.payloads = c.payloads[:0]
	c.crcs = c.crcs[:0]
	c.hasSeq, c.hasSeqID = false, false
	for len(b) > 0 {
		f, rest, err := nextField(b)
		if err != nil {
			return err
		}
		b = rest
		switch f.num {
		case 1:
			if f.wt != wtBytes {
				return ErrMalformed
			}
			if !c.seqOnly {
				c.payloads = append(c.payloads, f.data)
			}
		case 2:
			switch f.wt {
			case wtVarint:
				if !c.seqOnly {
					c.crcs = append(c.crcs, uint32(f.val))
				}
			case wtBytes:
				// protobuf-c writes unpacked, but a proto2 parser
				// must accept the packed form too.
				d := f.data
				for len(d) > 0 {
					v, n := binary.Uvarint(d)
					if n <= 0 {
						return ErrMalformed
					}
					if !c.seqOnly {
						c.crcs = append(c.crcs, uint32(v))
					}
					d = d[n:]
				}
			default:
				return ErrMalformed
			}
		case 3:
			if f.wt != wtVarint {
				return ErrMalformed
			}
			c.sequence, c.hasSeq = uint32(f.val), true
		case 4:
			if f.wt != wtVarint {
				return ErrMalformed
			}
			c.seqID, c.hasSeqID = f.val, true
		}
	}
	return nil
}

// fragment is a decoded NmsgFragment; data aliases the parsed buffer.
type fragment struct {
	id, current, last uint32
	data              []byte
	crc               uint32
	hasCRC            bool
}

func parseFragment(b []byte, fr *fragment) error {
	*fr = fragment{}
	var seen uint8
	for len(b) > 0 {
		f, rest, err := nextField(b)
		if err != nil {
			return err
		}
		b = rest
		switch f.num {
		case 1, 2, 3, 5:
			if f.wt != wtVarint {
				return ErrMalformed
			}
		case 4:
			if f.wt != wtBytes {
				return ErrMalformed
			}
		}
		switch f.num {
		case 1:
			fr.id = uint32(f.val)
			seen |= 1
		case 2:
			fr.current = uint32(f.val)
			seen |= 2
		case 3:
			fr.last = uint32(f.val)
			seen |= 4
		case 4:
			fr.data = f.data
			seen |= 8
		case 5:
			fr.crc, fr.hasCRC = uint32(f.val), true
		}
	}
	if seen != 15 {
		return ErrMalformed
	}
	return nil
}

// fragOverhead is the worst-case protobuf overhead of one NmsgFragment
// around its data: id, current and last as 5-octet varints, the fragment
// tag with a 3-octet length (data is below 2 MiB), and a crc.
const fragOverhead = (1+5)*3 + (1 + 3) + (1 + 5)

// appendFragment encodes an NmsgFragment. crc, when withCRC, is the
// payloadCRC of the whole message, not of this fragment's data: the C
// library repeats the same value in every fragment and checks it after
// reassembly.
func appendFragment(b []byte, id, current, last uint32, data []byte, withCRC bool, crc uint32) []byte {
	b = append(b, tag(1, wtVarint))
	b = binary.AppendUvarint(b, uint64(id))
	b = append(b, tag(2, wtVarint))
	b = binary.AppendUvarint(b, uint64(current))
	b = append(b, tag(3, wtVarint))
	b = binary.AppendUvarint(b, uint64(last))
	b = append(b, tag(4, wtBytes))
	b = binary.AppendUvarint(b, uint64(len(data)))
	b = append(b, data...)
	if withCRC {
		b = append(b, tag(5, wtVarint))
		b = binary.AppendUvarint(b, uint64(crc))
	}
	return b
}

// ContainerSequence returns the sequence_id and sequence of one whole, unfragmented container (a
// datagram, a spool or sielink container), inflating a zlib body if needed. ok is false when the
// container carries no sequence fields or does not parse. Receivers use it to recognise a
// container delivered twice (at-least-once delivery resends whole containers).
func ContainerSequence(b []byte) (id uint64, seq uint32, ok bool) {
	h, err := parseHeader(b)
	if err != nil || h.flags&flagFragment != 0 || uint64(h.length) > uint64(len(b)-HeaderSize) {
		return 0, 0, false
	}
	body := b[HeaderSize : HeaderSize+int(h.length)]
	if h.flags&flagZlib != 0 {
		d := seqDecoders.Get().(*decoder)
		defer seqDecoders.Put(d)
		if body, err = d.inflate(body); err != nil {
			return 0, 0, false
		}
	}
	c := container{seqOnly: true}
	if parseNmsg(body, &c) != nil || !c.hasSeq || !c.hasSeqID {
		return 0, 0, false
	}
	return c.seqID, c.sequence, true
}

// seqDecoders lend ContainerSequence an inflater and its output buffer: a new one per zlib
// container cost 66 allocations and some 100 KB.
var seqDecoders = sync.Pool{New: func() any { return &decoder{max: MaxContainerSize, cnt: new(Counters)} }}

package source

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/net/bpf"
)

// Kernel filter for a capture port, built from the resolver (or authority) list: the frames that
// can matter are IPv4/IPv6 datagrams with a listed address as source or destination (queries,
// responses, every IP fragment, ICMP errors sent to the resolver) and frames whose outer
// ethertype is a tag or label the filter cannot see through (VLAN not offloaded, QinQ, MPLS).
// Everything else (ARP, LLDP, other hosts' traffic on a shared segment) stays in the kernel. The
// pipeline checks the same rule again in user space for both families, so the filter only saves
// work; it never decides privacy on its own.

// Offsets in an untagged Ethernet frame. A tag the NIC stripped into the ring metadata does not
// shift them: the kernel runs the filter on the frame without it.
const (
	offEtherType = 12
	offIPv4Src   = 14 + 12
	offIPv4Dst   = 14 + 16
	offIPv6Src   = 14 + 8
	offIPv6Dst   = 14 + 24
)

// maxFilterLen is the kernel's BPF_MAXINSNS.
const maxFilterLen = 4096

// ResolverFilter assembles the filter; accepted frames are cut at snaplen. An empty list
// accepts every IP frame.
func ResolverFilter(prefixes []netip.Prefix, snaplen int) ([]bpf.RawInstruction, error) {
	accept := bpf.RetConstant{Val: uint32(snaplen)}
	reject := bpf.RetConstant{Val: 0}
	var v4, v6 []netip.Prefix
	for _, p := range prefixes {
		p = p.Masked()
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	if len(prefixes) == 0 {
		v4 = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
		v6 = []netip.Prefix{netip.MustParsePrefix("::/0")}
	}
	var sec4, sec6 []bpf.Instruction
	for _, off := range []uint32{offIPv4Src, offIPv4Dst} {
		for _, p := range v4 {
			sec4 = append(sec4, prefixTest(p, off, accept)...)
		}
	}
	if len(prefixes) > 0 {
		sec4 = append(sec4, queryTest4(accept)...)
	}
	sec4 = append(sec4, reject)
	for _, off := range []uint32{offIPv6Src, offIPv6Dst} {
		for _, p := range v6 {
			sec6 = append(sec6, prefixTest(p, off, accept)...)
		}
	}
	if len(prefixes) > 0 {
		sec6 = append(sec6, queryTest6(accept)...)
	}
	sec6 = append(sec6, reject)

	// Header: dispatch on the ethertype. Long jumps use ja, whose offset is 32 bits; conditional
	// jumps only ever skip one instruction, so the program assembles for any list length.
	head := []bpf.Instruction{
		bpf.LoadAbsolute{Off: offEtherType, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0x0800, SkipFalse: 1},
		nil, // ja sec4
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0x86dd, SkipFalse: 1},
		nil, // ja sec6
	}
	for _, et := range []uint32{0x8100, 0x88a8, 0x9100, 0x8847, 0x8848} {
		head = append(head, bpf.JumpIf{Cond: bpf.JumpEqual, Val: et, SkipFalse: 1}, accept)
	}
	head = append(head, reject)
	head[2] = bpf.Jump{Skip: uint32(len(head) - 3)}
	head[4] = bpf.Jump{Skip: uint32(len(head) - 5 + len(sec4))}
	prog := append(append(head, sec4...), sec6...)
	if len(prog) > maxFilterLen {
		return nil, fmt.Errorf("%d prefixes need %d BPF instructions, more than the kernel's %d", len(prefixes), len(prog), maxFilterLen)
	}
	return bpf.Assemble(prog)
}

// queryTest4 is a block that accepts an unfragmented IPv4 UDP datagram to port 53 carrying a DNS
// query (QR=0) whoever sends it, and falls through to the next block (the reject) otherwise. It
// lets sensord see who sends queries on the tap when its resolver list is wrong, so the status
// page can suggest the right addresses (sensor/internal/candidates); the pipeline refuses these
// queries as not_resolver unless a resolver sent them. Responses, TCP and fragments of
// non-resolvers stay in the kernel.
func queryTest4(accept bpf.Instruction) []bpf.Instruction {
	return []bpf.Instruction{
		bpf.LoadAbsolute{Off: 14 + 9, Size: 1}, // protocol
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 17, SkipFalse: 8},
		bpf.LoadAbsolute{Off: 14 + 6, Size: 2},                      // flags, fragment offset
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff, SkipTrue: 6}, // a later fragment
		bpf.LoadMemShift{Off: 14},                                   // X = IPv4 header length
		bpf.LoadIndirect{Off: 14 + 2, Size: 2},                      // UDP destination port
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 53, SkipFalse: 3},
		bpf.LoadIndirect{Off: 14 + 8 + 2, Size: 1}, // DNS flags, QR in the top bit
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x80, SkipTrue: 1},
		accept,
	}
}

// queryTest6 is queryTest4 for IPv6 without extension headers.
func queryTest6(accept bpf.Instruction) []bpf.Instruction {
	return []bpf.Instruction{
		bpf.LoadAbsolute{Off: 14 + 6, Size: 1}, // next header
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 17, SkipFalse: 5},
		bpf.LoadAbsolute{Off: 14 + 40 + 2, Size: 2}, // UDP destination port
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 53, SkipFalse: 3},
		bpf.LoadAbsolute{Off: 14 + 40 + 8 + 2, Size: 1}, // DNS flags
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x80, SkipTrue: 1},
		accept,
	}
}

// prefixTest is a block that accepts when the address at off lies in p and falls through to
// the next block otherwise.
func prefixTest(p netip.Prefix, off uint32, accept bpf.Instruction) []bpf.Instruction {
	a := p.Addr().AsSlice()
	bits := p.Bits()
	var words []bpf.Instruction
	for w := 0; w*32 < bits; w++ {
		n := min(bits-w*32, 32)
		mask := uint32(0xffffffff) << (32 - n)
		val := binary.BigEndian.Uint32(a[w*4:]) & mask
		words = append(words, bpf.LoadAbsolute{Off: off + uint32(w*4), Size: 4})
		if mask != 0xffffffff {
			words = append(words, bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: mask})
		}
		words = append(words, bpf.JumpIf{Cond: bpf.JumpEqual, Val: val}) // SkipFalse set below
	}
	// A mismatch skips the rest of the block including the accept.
	for i, ins := range words {
		if j, ok := ins.(bpf.JumpIf); ok {
			j.SkipFalse = uint8(len(words) - i)
			words[i] = j
		}
	}
	return append(words, accept)
}

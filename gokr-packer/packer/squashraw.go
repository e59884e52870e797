package packer

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// SquashFS layout constants this file relies on (the format's, as the kernel reads it).
const (
	sqMagic          = 0x73717368
	sqZlib           = 1
	sqFlagNoInodes   = 1 << 0 // metadata stored uncompressed
	sqFlagNoData     = 1 << 1 // data stored uncompressed
	sqBlockRaw       = 1 << 24
	sqMetaRaw        = 0x8000
	sqNoFragment     = 0xFFFFFFFF
	sqSuperblockSize = 96
	sqNoTable        = ^uint64(0)
)

// storeUncompressed rewrites a SquashFS image as gokrazy's writer makes it (zlib data blocks,
// uncompressed metadata, no fragments, basic inodes) so that every data block is stored as it
// is, not compressed. Under software emulation the guest kernel inflating the programs'
// blocks as they are paged in was most of their start (system time 2-3.4 s a program while
// seven start at once, against 0.3-0.9 s of user time); stored raw, a page-in is a copy. The
// image grows (64 to 114 MB for sensor-amd64) and stays reproducible: the result is a
// function of the input bytes.
//
// Only the data region and the offsets that point into or past it change: each file's start
// and block sizes in its inode (fixed-size fields, so the inode table keeps its layout), the
// table starts in the superblock and the id table's block pointers. Directory and inode
// references are relative to their tables and stay as they are.
func storeUncompressed(img []byte) ([]byte, error) {
	if len(img) < sqSuperblockSize {
		return nil, errors.New("squashfs: shorter than a superblock")
	}
	le := binary.LittleEndian
	sb := img[:sqSuperblockSize]
	if le.Uint32(sb[0:]) != sqMagic || le.Uint16(sb[28:]) != 4 {
		return nil, errors.New("squashfs: not a version 4 image")
	}
	blockSize := le.Uint32(sb[12:])
	flags := le.Uint16(sb[24:])
	switch {
	case le.Uint16(sb[20:]) != sqZlib:
		return nil, fmt.Errorf("squashfs: compressor %d, want zlib (%d)", le.Uint16(sb[20:]), sqZlib)
	case le.Uint32(sb[16:]) != 0:
		return nil, errors.New("squashfs: fragments are not supported")
	case flags&sqFlagNoInodes == 0:
		return nil, errors.New("squashfs: compressed metadata is not supported")
	case blockSize == 0 || blockSize > 1<<20:
		return nil, fmt.Errorf("squashfs: block size %d", blockSize)
	}
	noIDs := uint64(le.Uint16(sb[26:]))
	bytesUsed, idStart := le.Uint64(sb[40:]), le.Uint64(sb[48:])
	inodeStart, dirStart, fragStart := le.Uint64(sb[64:]), le.Uint64(sb[72:]), le.Uint64(sb[80:])
	if !(sqSuperblockSize <= inodeStart && inodeStart <= dirStart && dirStart <= fragStart &&
		fragStart <= idStart && idStart+8*((noIDs+2047)/2048) <= bytesUsed && bytesUsed <= uint64(len(img))) {
		return nil, errors.New("squashfs: tables out of order or past the end")
	}
	for _, off := range []int{56, 88} { // xattr and export tables: never written
		if le.Uint64(sb[off:]) != sqNoTable {
			return nil, errors.New("squashfs: xattr and export tables are not supported")
		}
	}

	// The inode table as one byte slice, and where each of its bytes sits in img.
	tail := append([]byte(nil), img[inodeStart:bytesUsed]...)
	var inodes []byte
	var at []int // at[i]: index in tail of inodes[i]
	for p := uint64(0); p < dirStart-inodeStart; {
		if p+2 > dirStart-inodeStart {
			return nil, errors.New("squashfs: inode table cut short")
		}
		h := le.Uint16(tail[p:])
		n := uint64(h &^ sqMetaRaw)
		if h&sqMetaRaw == 0 {
			return nil, errors.New("squashfs: compressed inode table block")
		}
		if p+2+n > dirStart-inodeStart {
			return nil, errors.New("squashfs: inode table block past its end")
		}
		for i := uint64(0); i < n; i++ {
			at = append(at, int(p+2+i))
		}
		inodes = append(inodes, tail[p+2:p+2+n]...)
		p += 2 + n
	}
	put32 := func(i int, v uint32) {
		var b [4]byte
		le.PutUint32(b[:], v)
		for k := range b {
			tail[at[i+k]] = b[k]
		}
	}

	type file struct {
		inode  int    // index in inodes of the file's inode
		start  uint64 // its data's offset in img
		size   uint64
		blocks int // count of block sizes after the inode's fixed part
	}
	var files []file
	for i := 0; i < len(inodes); {
		need := func(n int) error {
			if i+n > len(inodes) {
				return errors.New("squashfs: inode cut short")
			}
			return nil
		}
		if err := need(16); err != nil {
			return nil, err
		}
		switch t := le.Uint16(inodes[i:]); t {
		case 1: // directory
			if err := need(32); err != nil {
				return nil, err
			}
			i += 32
		case 2: // regular file
			if err := need(32); err != nil {
				return nil, err
			}
			f := file{inode: i, start: uint64(le.Uint32(inodes[i+16:])), size: uint64(le.Uint32(inodes[i+28:]))}
			if le.Uint32(inodes[i+20:]) != sqNoFragment {
				return nil, errors.New("squashfs: a file with a fragment")
			}
			f.blocks = int((f.size + uint64(blockSize) - 1) / uint64(blockSize))
			if err := need(32 + 4*f.blocks); err != nil {
				return nil, err
			}
			files = append(files, f)
			i += 32 + 4*f.blocks
		case 3: // symlink
			if err := need(24); err != nil {
				return nil, err
			}
			i += 24 + int(le.Uint32(inodes[i+20:]))
		case 4, 5: // block, character device
			i += 24
		case 6, 7: // fifo, socket
			i += 20
		default:
			return nil, fmt.Errorf("squashfs: inode type %d is not supported", t)
		}
		if i > len(inodes) {
			return nil, errors.New("squashfs: inode cut short")
		}
	}

	// Files' data lie one after the other from the superblock to the inode table, in the
	// order written; anything else would be data this rewrite does not know about.
	sortFiles := func(fs []file) {
		for a := 1; a < len(fs); a++ { // insertion sort, stable: empty files keep their place
			for b := a; b > 0 && fs[b].start < fs[b-1].start; b-- {
				fs[b], fs[b-1] = fs[b-1], fs[b]
			}
		}
	}
	sortFiles(files)
	out := make([]byte, sqSuperblockSize, inodeStart*2)
	next := uint64(sqSuperblockSize)
	zr := io.ReadCloser(nil)
	for _, f := range files {
		if f.start != next {
			return nil, fmt.Errorf("squashfs: data at %d, want %d (a gap or an overlap)", f.start, next)
		}
		put32(f.inode+16, uint32(len(out)))
		left := f.size
		for b := 0; b < f.blocks; b++ {
			sizeAt := f.inode + 32 + 4*b
			size := le.Uint32(inodes[sizeAt:])
			want := min(left, uint64(blockSize))
			left -= want
			stored := uint64(size &^ sqBlockRaw)
			if next+stored > inodeStart {
				return nil, errors.New("squashfs: a block past the data")
			}
			block := img[next : next+stored]
			next += stored
			switch {
			case stored == 0: // a hole: zeros, nothing stored
				continue
			case size&sqBlockRaw != 0:
				out = append(out, block...)
			default:
				var err error
				if zr == nil {
					zr, err = zlib.NewReader(bytes.NewReader(block))
				} else {
					err = zr.(zlib.Resetter).Reset(bytes.NewReader(block), nil)
				}
				if err != nil {
					return nil, fmt.Errorf("squashfs: block at %d: %w", next-stored, err)
				}
				n := len(out)
				out = append(out, make([]byte, want)...)
				if _, err := io.ReadFull(zr, out[n:]); err != nil {
					return nil, fmt.Errorf("squashfs: block at %d: %w", next-stored, err)
				}
				if m, _ := zr.Read(make([]byte, 1)); m != 0 {
					return nil, fmt.Errorf("squashfs: block at %d inflates past %d bytes", next-stored, want)
				}
			}
			if want > sqBlockRaw-1 {
				return nil, fmt.Errorf("squashfs: block of %d bytes", want)
			}
			put32(sizeAt, uint32(want)|sqBlockRaw)
		}
		if uint64(len(out)) > 1<<32-1 {
			return nil, errors.New("squashfs: data past 4 GiB")
		}
	}
	if next != inodeStart {
		return nil, fmt.Errorf("squashfs: %d bytes of data belong to no file", inodeStart-next)
	}

	delta := uint64(len(out)) - inodeStart
	for k := uint64(0); k < (noIDs+2047)/2048; k++ { // the id table's pointers to its blocks
		p := idStart - inodeStart + 8*k
		le.PutUint64(tail[p:], le.Uint64(tail[p:])+delta)
	}
	out = append(out, tail...)
	copy(out, sb)
	le.PutUint16(out[24:], flags|sqFlagNoData)
	for _, off := range []int{40, 48, 64, 72, 80} {
		le.PutUint64(out[off:], le.Uint64(out[off:])+delta)
	}
	if pad := len(out) % 4096; pad > 0 { // the kernel reads whole pages
		out = append(out, make([]byte, 4096-pad)...)
	}
	return out, nil
}

package packer

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"strings"
	"unicode/utf16"
)

// The partition layout the gokrazy device side expects (it finds partitions by
// number): 1 FAT16 boot, 2 and 3 SquashFS roots (A/B), 4 ext4 /perm.
const (
	sectorSize    = 512
	bootStartLBA  = 8192            // 4 MiB: leaves room for GPT and firmware blobs
	bootSectors   = 100 << 20 / 512 // 100 MiB (the FAT16 writer's limit is ~127 MB)
	rootSectors   = 500 << 20 / 512 // 500 MiB each
	gptEntries    = 128             // entries in the partition array
	gptEntrySize  = 128             // bytes per entry
	gptArraySects = gptEntries * gptEntrySize / sectorSize
)

// Partition GUID types.
var (
	typeESP   = mustGUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B") // EFI System: OVMF/firmware look here
	typeLinux = mustGUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4") // Linux filesystem data
)

// Partition is one GPT entry.
type Partition struct {
	Name     string
	Type     GUID
	GUID     GUID
	FirstLBA uint64
	LastLBA  uint64 // inclusive
}

// Sectors returns the partition size in sectors.
func (p Partition) Sectors() uint64 { return p.LastLBA - p.FirstLBA + 1 }

// Offset returns the partition's byte offset on the disk.
func (p Partition) Offset() int64 { return int64(p.FirstLBA) * sectorSize }

// Layout is a whole disk.
type Layout struct {
	DiskSectors   uint64
	DiskGUID      GUID
	DiskSignature uint32 // MBR offset 440
	Parts         [4]Partition
}

// NewLayout computes the layout of a disk of size bytes. GUIDs derive from seed
// alone, so every image built with the same seed (any hostname, any version)
// agrees on root=PARTUUID=…: push updates depend on that.
func NewLayout(size int64, seed string) (Layout, error) {
	sectors := uint64(size / sectorSize)
	permStart := uint64(bootStartLBA + bootSectors + 2*rootSectors)
	lastUsable := sectors - 1 - 1 - gptArraySects // backup header + backup array
	// End /perm on a 1 MiB boundary (sgdisk warns otherwise; some tools care).
	permLast := (lastUsable+1)/2048*2048 - 1
	const minPerm = 64 << 20 / sectorSize
	if sectors < permStart+minPerm+34 {
		return Layout{}, fmt.Errorf("disk of %d bytes too small: need at least %d for boot, two roots and 64 MiB /perm",
			size, int64(permStart+minPerm+34)*sectorSize)
	}
	l := Layout{
		DiskSectors:   sectors,
		DiskGUID:      seedGUID(seed, "disk"),
		DiskSignature: binary.LittleEndian.Uint32(seedHash(seed, "mbr-signature")),
	}
	l.Parts[0] = Partition{"gokrazy boot", typeESP, seedGUID(seed, "part1"), bootStartLBA, bootStartLBA + bootSectors - 1}
	l.Parts[1] = Partition{"gokrazy root A", typeLinux, seedGUID(seed, "part2"), l.Parts[0].LastLBA + 1, l.Parts[0].LastLBA + rootSectors}
	l.Parts[2] = Partition{"gokrazy root B", typeLinux, seedGUID(seed, "part3"), l.Parts[1].LastLBA + 1, l.Parts[1].LastLBA + rootSectors}
	l.Parts[3] = Partition{"gokrazy perm", typeLinux, seedGUID(seed, "part4"), l.Parts[2].LastLBA + 1, permLast}
	return l, nil
}

// RootArg is the kernel's root= value: partition 2, found relative to partition
// 1's GUID (gokrazy's /update/switch rewrites the PARTNROFF to pick root B).
func (l Layout) RootArg() string {
	return "PARTUUID=" + l.Parts[0].GUID.String() + "/PARTNROFF=1"
}

// MBR returns sector 0: the given boot code, a hybrid MBR and the signature.
// Entry 1 is the boot partition, active, type 0x0C (FAT32 LBA; the Raspberry Pi
// firmware only reads MBR partitions); entry 2 is type 0xEE over the GPT
// structures, so GPT-aware software (Linux, OVMF, sgdisk) uses the GPT.
func (l Layout) MBR(bootCode [446]byte) [512]byte {
	var s [512]byte
	copy(s[:446], bootCode[:])
	binary.LittleEndian.PutUint32(s[440:], l.DiskSignature)
	entry := func(i int, status, typ byte, first, count uint64) {
		e := s[446+16*i : 446+16*(i+1)]
		e[0] = status
		// CHS fields: "use LBA" (0xFE 0xFF 0xFF), as for any disk beyond 8 GiB.
		copy(e[1:4], []byte{0xFE, 0xFF, 0xFF})
		e[4] = typ
		copy(e[5:8], []byte{0xFE, 0xFF, 0xFF})
		binary.LittleEndian.PutUint32(e[8:], uint32(first))
		binary.LittleEndian.PutUint32(e[12:], uint32(count))
	}
	entry(0, 0x80, 0x0C, l.Parts[0].FirstLBA, l.Parts[0].Sectors())
	entry(1, 0x00, 0xEE, 1, l.Parts[0].FirstLBA-1)
	s[510], s[511] = 0x55, 0xAA
	return s
}

// GPT returns the primary header (LBA 1), the partition array (LBA 2…33), and
// the backup header for the disk's last sector (the array is repeated before it).
func (l Layout) GPT() (primary [512]byte, array []byte, backup [512]byte) {
	array = make([]byte, gptEntries*gptEntrySize)
	for i, p := range l.Parts {
		e := array[i*gptEntrySize:]
		copy(e[0:16], p.Type[:])
		copy(e[16:32], p.GUID[:])
		binary.LittleEndian.PutUint64(e[32:], p.FirstLBA)
		binary.LittleEndian.PutUint64(e[40:], p.LastLBA)
		// attributes (48:56) stay 0
		for j, r := range utf16.Encode([]rune(p.Name)) {
			binary.LittleEndian.PutUint16(e[56+2*j:], r)
		}
	}
	arrayCRC := crc32.ChecksumIEEE(array)
	last := l.DiskSectors - 1
	header := func(current, other, arrayLBA uint64) [512]byte {
		var h [512]byte
		copy(h[0:8], "EFI PART")
		binary.LittleEndian.PutUint32(h[8:], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:], 92)
		binary.LittleEndian.PutUint64(h[24:], current)
		binary.LittleEndian.PutUint64(h[32:], other)
		binary.LittleEndian.PutUint64(h[40:], 2+gptArraySects)      // first usable
		binary.LittleEndian.PutUint64(h[48:], last-1-gptArraySects) // last usable
		copy(h[56:72], l.DiskGUID[:])
		binary.LittleEndian.PutUint64(h[72:], arrayLBA)
		binary.LittleEndian.PutUint32(h[80:], gptEntries)
		binary.LittleEndian.PutUint32(h[84:], gptEntrySize)
		binary.LittleEndian.PutUint32(h[88:], arrayCRC)
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
		return h
	}
	primary = header(1, last, 2)
	backup = header(last, 1, last-gptArraySects)
	return primary, array, backup
}

// GUID is a GUID in its on-disk (mixed-endian) byte order.
type GUID [16]byte

// String formats the GUID as text (upper case, as sgdisk prints it; the kernel
// compares PARTUUIDs case-insensitively).
func (g GUID) String() string {
	return fmt.Sprintf("%08X-%04X-%04X-%04X-%X",
		binary.LittleEndian.Uint32(g[0:4]),
		binary.LittleEndian.Uint16(g[4:6]),
		binary.LittleEndian.Uint16(g[6:8]),
		binary.BigEndian.Uint16(g[8:10]),
		g[10:16])
}

func mustGUID(s string) GUID {
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		panic(fmt.Sprintf("GUID %q: %v", s, err))
	}
	// Text order is big-endian; on disk the first three fields are little-endian.
	var g GUID
	copy(g[:], b)
	g[0], g[1], g[2], g[3] = b[3], b[2], b[1], b[0]
	g[4], g[5] = b[5], b[4]
	g[6], g[7] = b[7], b[6]
	return g
}

func seedHash(seed, purpose string) []byte {
	h := sha256.Sum256([]byte("dnssensor disk seed\x00" + seed + "\x00" + purpose))
	return h[:]
}

// seedGUID is a random-looking (version 4, RFC 4122 variant) GUID derived from
// the seed.
func seedGUID(seed, purpose string) GUID {
	var g GUID
	copy(g[:], seedHash(seed, purpose))
	g[7] = g[7]&0x0F | 0x40 // version 4 (byte 7 is the high byte of the LE third field)
	g[8] = g[8]&0x3F | 0x80 // variant
	return g
}

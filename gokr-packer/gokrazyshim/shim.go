// Package shim gives gokr-packer (module github.com/sie-europe/dnssensor) the three
// on-disk formats the gokrazy device side reads — FAT16B for the boot partition,
// SquashFS for the root partitions and the stage-1 MBR boot code — without copying
// gokrazy's code into our tree.
//
// Why a shim module: those writers live in github.com/gokrazy/internal, and Go's
// internal-package rule lets only packages under github.com/gokrazy/ import them.
// This module's path is under that prefix, the main module requires it through a
// `replace` directive pointing at this folder, and it holds nothing but thin
// wrappers. Using gokrazy's own writers (rather than re-implementing FAT16 and
// SquashFS) guarantees that what we write is exactly what the device's minimal
// FAT reader (cmdline.txt edits on update) and its kernel expect.
//
// The wrapped version is pinned in go.mod (InternalVersion below must match it);
// gokr-packer's tests build real images through this package and check them with
// fsck.vfat, mtools and unsquashfs, so an API or format change fails loudly.
package shim

import (
	"io"
	"os"
	"time"

	"github.com/gokrazy/internal/fat"
	"github.com/gokrazy/internal/mbr"
	"github.com/gokrazy/internal/squashfs"
)

// InternalVersion is the github.com/gokrazy/internal version these wrappers were
// written and tested against (see go.mod).
const InternalVersion = "v0.0.0-20251208203110-3c1aa9087c82"

// FATWriter writes a FAT16B file system image in which every file is contiguous
// (the BIOS boot code and the device's cmdline editor rely on that).
type FATWriter struct{ w *fat.Writer }

// NewFATWriter returns a writer that emits the image to w on Flush.
func NewFATWriter(w io.Writer) (*FATWriter, error) {
	fw, err := fat.NewWriter(w)
	if err != nil {
		return nil, err
	}
	return &FATWriter{w: fw}, nil
}

// File creates path (directories are created as needed); the returned writer is
// valid until the next call on fw.
func (fw *FATWriter) File(path string, modTime time.Time) (io.Writer, error) {
	return fw.w.File(path, modTime)
}

// Mkdir creates an empty directory.
func (fw *FATWriter) Mkdir(path string, modTime time.Time) error { return fw.w.Mkdir(path, modTime) }

// Flush writes the file system; fw must not be used afterwards.
func (fw *FATWriter) Flush() error { return fw.w.Flush() }

// TotalSectors is the file system size in 512-byte sectors, known after Flush.
// It can exceed what Flush wrote: the writer declares at least 4085 clusters
// (the FAT16 minimum) without writing the unused ones.
func (fw *FATWriter) TotalSectors() int { return fw.w.TotalSectors }

// FATExtents returns the byte offset and length of a file inside a FAT image
// written by FATWriter (path starts with "/").
func FATExtents(r io.ReadSeeker, path string) (offset, length int64, err error) {
	rd, err := fat.NewReader(r)
	if err != nil {
		return 0, 0, err
	}
	return rd.Extents(path)
}

// SquashfsWriter writes an uncompressed-metadata, zlib-data SquashFS image.
type SquashfsWriter struct{ w *squashfs.Writer }

// NewSquashfsWriter starts an image in w; mkfsTime is stored in the superblock
// (pass a fixed time for reproducible images).
func NewSquashfsWriter(w io.WriteSeeker, mkfsTime time.Time) (*SquashfsWriter, error) {
	sw, err := squashfs.NewWriter(w, mkfsTime)
	if err != nil {
		return nil, err
	}
	return &SquashfsWriter{w: sw}, nil
}

// Root is the file system root.
func (sw *SquashfsWriter) Root() *SquashfsDir { return &SquashfsDir{d: sw.w.Root} }

// Flush finishes the image; call it after Root().Flush().
func (sw *SquashfsWriter) Flush() error { return sw.w.Flush() }

// SquashfsDir is a directory being written. Entries must be added in sorted name
// order, and a directory's Flush must come after all its children were flushed or
// closed and before its parent's.
type SquashfsDir struct{ d *squashfs.Directory }

// Directory creates a subdirectory.
func (d *SquashfsDir) Directory(name string, modTime time.Time) *SquashfsDir {
	return &SquashfsDir{d: d.d.Directory(name, modTime)}
}

// File creates a regular file; close the writer when done.
func (d *SquashfsDir) File(name string, modTime time.Time, mode os.FileMode) (io.WriteCloser, error) {
	return d.d.File(name, modTime, mode)
}

// Symlink creates name pointing at target.
func (d *SquashfsDir) Symlink(target, name string, modTime time.Time, mode os.FileMode) error {
	return d.d.Symlink(target, name, modTime, mode)
}

// Flush writes the directory's entries.
func (d *SquashfsDir) Flush() error { return d.d.Flush() }

// MBRBootCode returns the 446 bytes of gokrazy's stage-1 BIOS boot loader,
// configured to load the kernel from vmlinuzLBA and the command line from
// cmdlineLBA (absolute disk sectors), with diskSignature at offset 440.
func MBRBootCode(vmlinuzLBA, cmdlineLBA, diskSignature uint32) [446]byte {
	return mbr.Configure(vmlinuzLBA, cmdlineLBA, diskSignature)
}

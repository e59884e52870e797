package packer

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStoreUncompressed: a root file system written by gokrazy's writer and rewritten with
// every data block stored as it is reads back the same through unsquashfs (files of no, one
// and several blocks, a last block cut short, a symlink, an empty directory), and the
// compressible contents now lie in the image byte for byte.
func TestStoreUncompressed(t *testing.T) {
	unsquashfs := requireTool(t, "unsquashfs", "squashfs-tools")
	mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	big := bytes.Repeat([]byte("compressible text of a program "), 20000) // 620000 bytes: 5 blocks, the last short
	one := bytes.Repeat([]byte{'x'}, 131072)                              // exactly one block
	rt := newTree()
	rt.dir("/dev")
	for _, err := range []error{
		rt.bytes("/gokrazy/init", []byte("#!init"), 0o755),
		rt.bytes("/etc/empty", nil, 0o644),
		rt.bytes("/etc/hostname", []byte("box"), 0o644),
		rt.symlink("/etc/resolv.conf", "/tmp/resolv.conf"),
		rt.bytes("/lib/big", big, 0o644),
		rt.bytes("/lib/one", one, 0o644),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "zlib.img")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeSquashfs(f, rt, mtime); err != nil {
		t.Fatal(err)
	}
	f.Close()
	in, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(in, big[:4096]) {
		t.Fatal("gokrazy's writer stored the compressible file as it is: nothing left to test")
	}
	out, err := storeUncompressed(in)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, big) || !bytes.Contains(out, one) {
		t.Error("the files' contents are not in the rewritten image as they are")
	}
	if len(out)%4096 != 0 {
		t.Errorf("image of %d bytes, want whole pages", len(out))
	}
	again, err := storeUncompressed(out)
	if err != nil || !bytes.Equal(again, out) {
		t.Errorf("rewriting the rewritten image changed it (err %v): the rewrite must be idempotent", err)
	}
	raw := filepath.Join(dir, "raw.img")
	if err := os.WriteFile(raw, out, 0o644); err != nil {
		t.Fatal(err)
	}
	if s := runTool(t, unsquashfs, "-s", raw); !strings.Contains(s, "Data is uncompressed") {
		t.Errorf("unsquashfs -s does not say the data is uncompressed:\n%s", s)
	}
	if want, got := runTool(t, unsquashfs, "-lls", src), runTool(t, unsquashfs, "-lls", raw); got != want {
		t.Errorf("listing differs:\n%s\nwant\n%s", got, want)
	}
	ext := filepath.Join(dir, "x")
	runTool(t, unsquashfs, "-d", ext, raw)
	for name, want := range map[string][]byte{"lib/big": big, "lib/one": one, "etc/hostname": []byte("box"), "gokrazy/init": []byte("#!init"), "etc/empty": {}} {
		if b, err := os.ReadFile(filepath.Join(ext, name)); err != nil || !bytes.Equal(b, want) {
			t.Errorf("%s after unsquashfs: %d bytes (err %v), want %d", name, len(b), err, len(want))
		}
	}
	if l, err := os.Readlink(filepath.Join(ext, "etc/resolv.conf")); err != nil || l != "/tmp/resolv.conf" {
		t.Errorf("etc/resolv.conf -> %q (%v)", l, err)
	}
}

// TestStoreUncompressedRefuses: what the rewrite does not understand is an error, never an
// image with data it skipped.
func TestStoreUncompressedRefuses(t *testing.T) {
	rt := newTree()
	if err := rt.bytes("/a", bytes.Repeat([]byte("a"), 300000), 0o644); err != nil {
		t.Fatal(err)
	}
	var img seekBuffer
	if err := writeSquashfs(&img, rt, time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	good := img.b
	le := binary.LittleEndian
	for _, tc := range []struct {
		name   string
		mutate func(b []byte)
		want   string
	}{
		{"not squashfs", func(b []byte) { b[0] = 0 }, "not a version 4"},
		{"xz", func(b []byte) { le.PutUint16(b[20:], 4) }, "compressor 4"},
		{"fragments", func(b []byte) { le.PutUint32(b[16:], 1) }, "fragments"},
		{"compressed metadata", func(b []byte) { le.PutUint16(b[24:], le.Uint16(b[24:])&^sqFlagNoInodes) }, "metadata"},
		{"stray data", func(b []byte) { // the inode table said to start later: bytes no file owns
			le.PutUint64(b[64:], le.Uint64(b[64:])+2)
		}, "table"},
		{"broken block", func(b []byte) { b[sqSuperblockSize] ^= 0xFF }, "block at 96"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := append([]byte(nil), good...)
			tc.mutate(b)
			if _, err := storeUncompressed(b); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("storeUncompressed = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// seekBuffer is an in-memory io.WriteSeeker.
type seekBuffer struct {
	b   []byte
	off int64
}

func (s *seekBuffer) Write(p []byte) (int, error) {
	if need := s.off + int64(len(p)); need > int64(len(s.b)) {
		s.b = append(s.b, make([]byte, need-int64(len(s.b)))...)
	}
	copy(s.b[s.off:], p)
	s.off += int64(len(p))
	return len(p), nil
}

func (s *seekBuffer) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case 1:
		off += s.off
	case 2:
		off += int64(len(s.b))
	}
	s.off = off
	return off, nil
}

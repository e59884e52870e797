package packer

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sie-europe/dnssensor/hardware"
)

func TestGUIDRoundTrip(t *testing.T) {
	for _, s := range []string{"C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"} {
		if got := mustGUID(s).String(); got != s {
			t.Errorf("mustGUID(%s).String() = %s", s, got)
		}
	}
	// On-disk order of the ESP type GUID, as the UEFI spec prints it.
	want := []byte{0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B}
	if g := mustGUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"); !bytes.Equal(g[:], want) {
		t.Errorf("ESP GUID bytes % x, want % x", g[:], want)
	}
}

// TestLayoutStable: the GUIDs depend on the seed only. A later build (other
// hostname, other size) must produce the same root= argument, or a pushed boot
// partition would name a partition the device does not have.
func TestLayoutStable(t *testing.T) {
	a, err := NewLayout(2<<30, "box-1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewLayout(8<<30, "box-1")
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewLayout(2<<30, "box-2")
	if err != nil {
		t.Fatal(err)
	}
	if a.RootArg() != b.RootArg() || a.Parts[1] != b.Parts[1] {
		t.Errorf("same seed, different layout: %s vs %s", a.RootArg(), b.RootArg())
	}
	if a.RootArg() == c.RootArg() || a.DiskGUID == c.DiskGUID {
		t.Errorf("different seeds share GUIDs")
	}
	if !strings.HasSuffix(a.RootArg(), "/PARTNROFF=1") {
		t.Errorf("root= %s must point at partition 1 + 1", a.RootArg())
	}
	if _, err := NewLayout(1<<30, "x"); err == nil {
		t.Error("1 GiB disk accepted")
	}
	for i, p := range a.Parts {
		if p.FirstLBA%2048 != 0 || (p.LastLBA+1)%2048 != 0 {
			t.Errorf("partition %d [%d, %d] not 1 MiB aligned", i+1, p.FirstLBA, p.LastLBA)
		}
		if g := p.GUID; g[7]>>4 != 4 || g[8]>>6 != 2 {
			t.Errorf("partition %d GUID %s is not version 4 / RFC 4122", i+1, g)
		}
	}
}

func TestMBRBytes(t *testing.T) {
	l, err := NewLayout(2<<30, "seed")
	if err != nil {
		t.Fatal(err)
	}
	var code [446]byte
	for i := range code {
		code[i] = 0x90
	}
	m := l.MBR(code)
	if m[510] != 0x55 || m[511] != 0xAA {
		t.Fatal("no boot signature")
	}
	if got := binary.LittleEndian.Uint32(m[440:]); got != l.DiskSignature {
		t.Errorf("disk signature %08x, want %08x", got, l.DiskSignature)
	}
	e1, e2 := m[446:462], m[462:478]
	if e1[0] != 0x80 || e1[4] != 0x0C || binary.LittleEndian.Uint32(e1[8:]) != bootStartLBA || binary.LittleEndian.Uint32(e1[12:]) != bootSectors {
		t.Errorf("entry 1 (Pi firmware's FAT) = % x", e1)
	}
	if e2[0] != 0 || e2[4] != 0xEE || binary.LittleEndian.Uint32(e2[8:]) != 1 || binary.LittleEndian.Uint32(e2[12:]) != bootStartLBA-1 {
		t.Errorf("entry 2 (GPT protective) = % x", e2)
	}
	if !bytes.Equal(m[478:510], make([]byte, 32)) {
		t.Error("entries 3 and 4 not empty")
	}
}

func TestGPTBytes(t *testing.T) {
	l, err := NewLayout(2<<30, "seed")
	if err != nil {
		t.Fatal(err)
	}
	primary, array, backup := l.GPT()
	for name, h := range map[string][512]byte{"primary": primary, "backup": backup} {
		if string(h[:8]) != "EFI PART" {
			t.Errorf("%s: signature %q", name, h[:8])
		}
		crc := binary.LittleEndian.Uint32(h[16:])
		var z [512]byte
		copy(z[:], h[:])
		binary.LittleEndian.PutUint32(z[16:], 0)
		if crc32.ChecksumIEEE(z[:92]) != crc {
			t.Errorf("%s: header CRC wrong", name)
		}
		if binary.LittleEndian.Uint32(h[88:]) != crc32.ChecksumIEEE(array) {
			t.Errorf("%s: array CRC wrong", name)
		}
	}
	last := l.DiskSectors - 1
	if binary.LittleEndian.Uint64(primary[24:]) != 1 || binary.LittleEndian.Uint64(primary[32:]) != last ||
		binary.LittleEndian.Uint64(backup[24:]) != last || binary.LittleEndian.Uint64(backup[72:]) != last-32 {
		t.Error("header LBAs wrong")
	}
	if got := binary.LittleEndian.Uint64(array[128+32:]); got != l.Parts[1].FirstLBA {
		t.Errorf("entry 2 first LBA %d, want %d", got, l.Parts[1].FirstLBA)
	}
}

// TestDiskWithHostTools writes the partition structures into a sparse file and
// lets sgdisk and fdisk judge them.
func TestDiskWithHostTools(t *testing.T) {
	sgdisk := requireTool(t, "sgdisk", "gdisk")
	fdisk := requireTool(t, "fdisk", "fdisk")
	l, err := NewLayout(2<<30, "host-tools")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	boot, root := filepath.Join(t.TempDir(), "boot"), filepath.Join(t.TempDir(), "root")
	os.WriteFile(boot, []byte("boot"), 0o644)
	os.WriteFile(root, []byte("root"), 0o644)
	if err := writeDisk(&target{f: f}, l, l.MBR([446]byte{}), boot, root); err != nil {
		t.Fatal(err)
	}
	f.Close()

	out := runTool(t, sgdisk, "-v", p)
	if !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}
	if strings.Contains(out, "Caution") || strings.Contains(out, "Warning") {
		t.Errorf("sgdisk -v warns:\n%s", out)
	}
	info := runTool(t, sgdisk, "-i", "1", p)
	if !strings.Contains(info, l.Parts[0].GUID.String()) || !strings.Contains(info, "EFI system partition") {
		t.Errorf("sgdisk -i 1:\n%s", info)
	}
	out = runTool(t, fdisk, "-l", p)
	for _, want := range []string{"Disklabel type: gpt", l.DiskGUID.String(), "EFI System", "disk.img4"} {
		if !strings.Contains(out, want) {
			t.Errorf("fdisk -l lacks %q:\n%s", want, out)
		}
	}
	// The hybrid MBR as the Pi firmware sees it.
	mbr := runTool(t, sgdisk, "-O", p)
	if !strings.Contains(mbr, "0x0C") || !strings.Contains(mbr, "0xEE") {
		t.Errorf("sgdisk -O (MBR view):\n%s", mbr)
	}
}

// TestKernelCmdlineExtra: the image's arguments come after the profile's, so they change the
// boot partition and nothing else of the command line.
func TestKernelCmdlineExtra(t *testing.T) {
	l, err := NewLayout(2<<30, "box-1")
	if err != nil {
		t.Fatal(err)
	}
	prof, err := hardware.Get("qemu-amd64")
	if err != nil {
		t.Fatal(err)
	}
	base, extra := kernelCmdline(prof, l, ""), kernelCmdline(prof, l, " dnssensor.release=4 ")
	if extra != base+" dnssensor.release=4" {
		t.Errorf("with the image's arguments %q, without %q", extra, base)
	}
}

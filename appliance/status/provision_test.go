package status

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sie-europe/dnssensor/appliance/boxconfig"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

// fatPartition makes a FAT file system holding files (mkfs.vfat, mcopy) and attaches it to a loop
// device, as the boot partition of a freshly flashed card. It returns the device and a function
// reading a file back from the image (through mtools, not the code under test).
func fatPartition(t *testing.T, files map[string]string) (dev string, read func(name string) (string, bool)) {
	t.Helper()
	testenv.NeedRoot(t, "provisioning from a FAT partition (loop device, mount)")
	for _, tool := range []string{"mkfs.vfat", "mcopy", "mtype", "mdir", "mdel", "losetup"} {
		_, err := exec.LookPath(tool)
		testenv.Need(t, err == nil, "%s not installed (Debian: dosfstools, mtools, mount)", tool)
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "boot.img")
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %q: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	run("mkfs.vfat", "-C", "-n", "GOKRAZY", img, "8192")
	for name, content := range files {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o644)
		run("mcopy", "-i", img, p, "::"+name)
	}
	dev = strings.TrimSpace(run("losetup", "--find", "--show", img))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	read = func(name string) (string, bool) {
		out, err := exec.Command("mtype", "-i", img, "::"+name).Output()
		return string(out), err == nil
	}
	return dev, read
}

func provisioner(t *testing.T, dev string) (*Provisioner, *bytes.Buffer, *strings.Builder) {
	console := &bytes.Buffer{}
	logs := &strings.Builder{}
	p := &Provisioner{Device: dev, MountDir: filepath.Join(t.TempDir(), "boot"), Layout: boxconfig.Layout{Perm: t.TempDir()},
		Console: console, Logf: func(f string, a ...any) { logs.WriteString(strings.TrimSpace(sprintf(f, a...)) + "\n") }}
	if fs, _ := os.ReadFile("/proc/filesystems"); !bytes.Contains(fs, []byte("\tvfat\n")) {
		// This kernel cannot mount FAT (a container's); gokrazy's kernel can, and mounts its boot
		// partition so itself. The partition is then reached through mtools: copied out on
		// mount, written back on unmount.
		t.Logf("the kernel has no vfat: the FAT partition is mounted through mtools")
		p.Mount = mtoolsMount
		p.Writable = func(dev, dir string) error { mtoolsWritable.Store(dir, true); return nil }
	}
	return p, console, logs
}

// mtoolsMount stands in for a vfat mount: the partition's top-level files are copied into dir and,
// on unmount, what changed is written back and what was removed is deleted from the partition.
// Like the kernel's mount, it is read-only until Writable: only then is anything written back.
var mtoolsWritable sync.Map

func mtoolsMount(dev, dir string) (func() error, error) {
	out, err := exec.Command("mdir", "-b", "-i", dev, "::").Output()
	if err != nil {
		return nil, fmt.Errorf("mdir: %v", err)
	}
	var names []string
	for _, l := range strings.Fields(string(out)) {
		name := strings.TrimPrefix(l, "::/")
		names = append(names, name)
		if out, err := exec.Command("mcopy", "-i", dev, "::"+name, filepath.Join(dir, name)).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("mcopy: %v: %s", err, out)
		}
	}
	return func() error {
		if _, ok := mtoolsWritable.LoadAndDelete(dir); !ok {
			for _, name := range names {
				os.Remove(filepath.Join(dir, name))
			}
			return nil
		}
		for _, name := range names {
			if _, err := os.Stat(filepath.Join(dir, name)); os.IsNotExist(err) {
				if out, err := exec.Command("mdel", "-i", dev, "::"+name).CombinedOutput(); err != nil {
					return fmt.Errorf("mdel: %v: %s", err, out)
				}
			}
		}
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if out, err := exec.Command("mcopy", "-o", "-i", dev, filepath.Join(dir, e.Name()), "::"+e.Name()).CombinedOutput(); err != nil {
				return fmt.Errorf("mcopy: %v: %s", err, out)
			}
			os.Remove(filepath.Join(dir, e.Name()))
		}
		return nil
	}, nil
}

// TestProvisionGood: a good dnssensor.json on the boot partition is applied to /perm (split into
// the daemons' files, the API key in its own) and removed from the partition.
func TestProvisionGood(t *testing.T) {
	dev, read := fatPartition(t, map[string]string{ProvisionFile: `{"sensor": {"resolver": "192.0.2.53"},
		"uplink": {"destinations": [{"type": "sielink", "url": "wss://sie.example.net", "sensor": "s1", "api_key": "k-123"}]}}`})
	p, console, _ := provisioner(t, dev)
	res := p.Run()
	if res == nil || !res.OK {
		t.Fatalf("Run: %+v", res)
	}
	if got := strings.Join(res.Changed, ","); got != "uplinkd,sensord" {
		t.Errorf("changed %q", got)
	}
	if b, err := os.ReadFile(p.Layout.SensorFile()); err != nil || !strings.Contains(string(b), "192.0.2.53") {
		t.Errorf("sensord's file: %s %v", b, err)
	}
	if b, _ := os.ReadFile(p.Layout.APIKeyFile("sielink0")); string(b) != "k-123\n" {
		t.Errorf("API key file %q", b)
	}
	if _, ok := read(ProvisionFile); ok {
		t.Error("dnssensor.json is still on the boot partition")
	}
	if !strings.Contains(console.String(), "applied") {
		t.Errorf("console: %q", console.String())
	}
	if out, _ := exec.Command("findmnt", "-n", p.MountDir).Output(); len(out) > 0 {
		t.Errorf("boot partition still mounted:\n%s", out)
	}
	// Nothing left: the next boot does nothing.
	if res := p.Run(); res != nil {
		t.Errorf("second run: %+v", res)
	}
}

// TestProvisionNothingLeavesBytes: a boot without dnssensor.json leaves the boot partition byte
// for byte (updated compares its hash across an update; a read-write mount writes it).
func TestProvisionNothingLeavesBytes(t *testing.T) {
	dev, _ := fatPartition(t, map[string]string{"cmdline.txt": "root=/dev/sda2\n"})
	sum := func() [32]byte { b, _ := os.ReadFile(dev); return sha256.Sum256(b) }
	before := sum()
	p, _, _ := provisioner(t, dev)
	if w := p.Writable; w != nil {
		p.Writable = func(dev, dir string) error { t.Error("made writable without a file to provision"); return w(dev, dir) }
	}
	if res := p.Run(); res != nil {
		t.Fatalf("Run: %+v", res)
	}
	if sum() != before {
		t.Error("the boot partition changed though there was nothing to provision")
	}
}

// TestProvisionBad: a dnssensor.json with mistakes applies nothing, stays on the partition with
// the reasons beside it, and is reported on the console, one line per wrong key.
func TestProvisionBad(t *testing.T) {
	bad := `{"sensor": {"resolver": "not-an-ip", "rd": "2"}, "network": {"static": {"address": "198.51.100.10"}}}`
	dev, read := fatPartition(t, map[string]string{ProvisionFile: bad})
	p, console, logs := provisioner(t, dev)
	res := p.Run()
	if res == nil || res.OK || len(res.Errors) != 3 {
		t.Fatalf("Run: %+v", res)
	}
	if ents, _ := os.ReadDir(p.Layout.Perm); len(ents) != 0 {
		t.Errorf("/perm has %d entries after a refused file", len(ents))
	}
	if got, ok := read(ProvisionFile); !ok || got != bad {
		t.Errorf("dnssensor.json on the partition: %q %v, want it kept as it was", got, ok)
	}
	why, ok := read(ProvisionErrorsFile)
	for _, k := range []string{"sensor.resolver", "sensor.rd", "network.static.address"} {
		if !ok || !strings.Contains(why, k) {
			t.Errorf("%s does not name %s: %q", ProvisionErrorsFile, k, why)
		}
		if !strings.Contains(console.String(), k) || !strings.Contains(logs.String(), k) {
			t.Errorf("console/log does not name %s:\n%s", k, console.String())
		}
	}
}

func sprintf(f string, a ...any) string { return fmt.Sprintf(f, a...) }

// TestBootPartition: the boot partition is partition 1 of the root file system's disk, for each
// form of root= gokrazy writes: a device name, an MBR disk signature, a GPT partition GUID (the
// last two found by reading the disks, here loop devices with just those bytes).
func TestBootPartition(t *testing.T) {
	dir := t.TempDir()
	check := func(cmdline, want string) {
		t.Helper()
		p := filepath.Join(dir, "cmdline")
		os.WriteFile(p, []byte("console=ttyS0,115200 "+cmdline+" init=/gokrazy/init rootwait\n"), 0o644)
		got, err := BootPartition(p)
		if err != nil || got != want {
			t.Errorf("%s: %q %v, want %q", cmdline, got, err, want)
		}
	}
	check("root=/dev/mmcblk0p2", "/dev/mmcblk0p1")
	check("root=/dev/sda3", "/dev/sda1")
	check("root=/dev/nvme0n1p2", "/dev/nvme0n1p1")
	check("root=/dev/vda2", "/dev/vda1")

	testenv.NeedRoot(t, "PARTUUID forms (loop devices)")
	_, err := exec.LookPath("losetup")
	testenv.Need(t, err == nil, "losetup not installed (Debian: mount)")
	loop := func(name string, img []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, img, 0o644)
		out, err := exec.Command("losetup", "--find", "--show", p).Output()
		if err != nil {
			t.Fatalf("losetup: %v", err)
		}
		dev := strings.TrimSpace(string(out))
		t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
		return dev
	}
	mbr := make([]byte, 64<<10)
	copy(mbr[440:], []byte{0x78, 0x56, 0x34, 0x12})
	check("root=PARTUUID=12345678-02", loop("mbr.img", mbr)+"p1")
	gpt := make([]byte, 64<<10)
	copy(gpt[512:], "EFI PART")
	gpt[512+72] = 2 // partition entries at LBA 2
	copy(gpt[1024+16:], []byte{0x44, 0x33, 0x22, 0x11, 0x66, 0x55, 0x88, 0x77, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00})
	check("root=PARTUUID=11223344-5566-7788-99aa-bbccddeeff00/PARTNROFF=1", loop("gpt.img", gpt)+"p1")
}

package status

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sie-europe/dnssensor/appliance/boxconfig"
)

// ProvisionFile is the box file an operator puts on the FAT boot partition right after flashing.
const ProvisionFile = "dnssensor.json"

// ProvisionErrorsFile is written beside a refused ProvisionFile, so the operator reads why on the
// laptop that wrote it.
const ProvisionErrorsFile = "dnssensor-errors.txt"

// ProvisionResult is what the provisioning did, for the page.
type ProvisionResult struct {
	Time    time.Time
	OK      bool
	Summary string
	Errors  []string
	Changed []string
}

// Provisioner applies dnssensor.json from the boot partition (partition 1 of the disk the root
// file system is on): checked whole by boxconfig, applied to /perm, then removed. A file that
// does not check out changes nothing and stays, with the reasons beside it, on the console and on
// the page.
type Provisioner struct {
	// Device is the boot partition's block device; "" finds it from the kernel command line.
	Device   string
	Cmdline  string // default /proc/cmdline
	MountDir string // default /run/statusd/boot
	Layout   boxconfig.Layout
	// Console is where the outcome is also written: the serial console (/dev/console), since a
	// gokrazy service's own output goes only to its log ring.
	Console io.Writer
	Logf    func(format string, args ...any)
	Now     func() time.Time
	// Mount mounts the partition dev on dir; nil: the kernel's vfat (KernelMount).
	Mount func(dev, dir string) (unmount func() error, err error)
}

// KernelMount mounts a FAT partition with the kernel's vfat, without suid, devices or programs,
// and readable by root only (the file may hold an API key).
func KernelMount(dev, dir string) (func() error, error) {
	if err := unix.Mount(dev, dir, "vfat", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "umask=077"); err != nil {
		return nil, err
	}
	return func() error { return unix.Unmount(dir, 0) }, nil
}

// Run provisions once. It returns nil when there is nothing to provision (no file).
func (p *Provisioner) Run() *ProvisionResult {
	now := time.Now
	if p.Now != nil {
		now = p.Now
	}
	res := &ProvisionResult{Time: now()}
	report := func(format string, args ...any) *ProvisionResult {
		res.Summary = fmt.Sprintf(format, args...)
		p.say(res)
		return res
	}
	dev := p.Device
	if dev == "" {
		cmdline := p.Cmdline
		if cmdline == "" {
			cmdline = "/proc/cmdline"
		}
		var err error
		if dev, err = BootPartition(cmdline); err != nil {
			return report("provisioning: cannot find the boot partition: %v", err)
		}
	}
	dir := p.MountDir
	if dir == "" {
		dir = "/run/statusd/boot"
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return report("provisioning: %v", err)
	}
	mount := p.Mount
	if mount == nil {
		mount = KernelMount
	}
	unmount, err := mount(dev, dir)
	if err != nil {
		return report("provisioning: mounting the boot partition %s: %v", dev, err)
	}
	defer func() {
		if err := unmount(); err != nil {
			p.logf("statusd: provisioning: unmounting %s: %v", dir, err)
		}
	}()
	file := filepath.Join(dir, ProvisionFile)
	data, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return report("provisioning: reading %s on the boot partition: %v", ProvisionFile, err)
	}
	changed, err := boxconfig.CheckAndApply(p.Layout, data)
	errsFile := filepath.Join(dir, ProvisionErrorsFile)
	if err != nil {
		var es boxconfig.Errors
		if errors.As(err, &es) {
			for _, e := range es {
				res.Errors = append(res.Errors, e.Error())
			}
		} else {
			res.Errors = []string{err.Error()}
		}
		// Beside the file, for the laptop: CRLF, since it may well be Notepad that opens it.
		text := "dnssensor.json was NOT applied; nothing changed on the box. Fix these and boot again:\r\n" +
			strings.Join(res.Errors, "\r\n") + "\r\n"
		if werr := os.WriteFile(errsFile, []byte(text), 0o600); werr != nil {
			p.logf("statusd: provisioning: writing %s: %v", ProvisionErrorsFile, werr)
		}
		unix.Sync()
		return report("provisioning: %s on the boot partition was refused and left there; nothing was applied. Fix every line below and boot again, or configure the box here.", ProvisionFile)
	}
	res.OK, res.Changed = true, changed
	// Applied first, removed second: a power cut in between applies the same file again.
	rmErr := os.Remove(file)
	os.Remove(errsFile)
	unix.Sync()
	if rmErr != nil {
		return report("provisioning: %s applied, but removing it from the boot partition failed (%v): remove it, or it is applied again at every boot", ProvisionFile, rmErr)
	}
	return report("provisioning: %s from the boot partition applied (%s) and removed from it", ProvisionFile, strings.Join(changed, ", "))
}

func (p *Provisioner) logf(format string, args ...any) {
	if p.Logf != nil {
		p.Logf(format, args...)
	}
}

// say writes the outcome to the log and the serial console; the errors name keys and say what is
// wrong, never a value that could be a secret beyond what the operator wrote in that key.
func (p *Provisioner) say(res *ProvisionResult) {
	var b bytes.Buffer
	b.WriteString("statusd: " + res.Summary + "\n")
	for _, e := range res.Errors {
		b.WriteString("statusd:   " + e + "\n")
	}
	p.logf("%s", strings.TrimSuffix(b.String(), "\n"))
	if p.Console != nil {
		p.Console.Write(b.Bytes())
	}
}

var (
	rootDev  = regexp.MustCompile(`(?:^|\s)root=(/dev/[a-z0-9]+?)(p?)([0-9]+)(?:\s|$)`)
	rootMBR  = regexp.MustCompile(`(?:^|\s)root=PARTUUID=([0-9a-fA-F]{8})-([0-9]{2})(?:\s|$)`)
	rootGPT  = regexp.MustCompile(`(?:^|\s)root=PARTUUID=([0-9a-fA-F-]{36})/PARTNROFF=([0-9]+)(?:\s|$)`)
	sysBlock = "/sys/block"
)

// BootPartition finds the boot partition, partition 1 of the disk holding the root file system, as
// gokrazy does from the kernel command line: root=/dev/mmcblk0p2 (or sda2, nvme0n1p2, vda2),
// root=PARTUUID=<MBR disk signature>-02, or root=PARTUUID=<GPT GUID of partition 1>/PARTNROFF=1.
func BootPartition(cmdlinePath string) (string, error) {
	b, err := os.ReadFile(cmdlinePath)
	if err != nil {
		return "", err
	}
	cmdline := string(b)
	if m := rootDev.FindStringSubmatch(cmdline); m != nil {
		return m[1] + m[2] + "1", nil
	}
	if m := rootMBR.FindStringSubmatch(cmdline); m != nil {
		disk, err := findDisk(func(f *os.File) bool {
			var sig [4]byte
			if _, err := f.ReadAt(sig[:], 440); err != nil {
				return false
			}
			return fmt.Sprintf("%08x", binary.LittleEndian.Uint32(sig[:])) == strings.ToLower(m[1])
		})
		if err != nil {
			return "", err
		}
		return partition(disk, 1), nil
	}
	if m := rootGPT.FindStringSubmatch(cmdline); m != nil {
		disk, err := findDisk(func(f *os.File) bool { return firstGPTPartition(f) == strings.ToLower(m[1]) })
		if err != nil {
			return "", err
		}
		return partition(disk, 1), nil
	}
	return "", fmt.Errorf("%s: no root= this knows (%q)", cmdlinePath, strings.TrimSpace(cmdline))
}

func findDisk(match func(*os.File) bool) (string, error) {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		dev := "/dev/" + e.Name()
		f, err := os.Open(dev)
		if err != nil {
			continue
		}
		ok := match(f)
		f.Close()
		if ok {
			return dev, nil
		}
	}
	return "", errors.New("no disk with the root's PARTUUID")
}

// partition names a disk's partition as the kernel does: a disk name ending in a digit takes "p".
func partition(disk string, n int) string {
	if last := disk[len(disk)-1]; last >= '0' && last <= '9' {
		return fmt.Sprintf("%sp%d", disk, n)
	}
	return fmt.Sprintf("%s%d", disk, n)
}

// firstGPTPartition returns the unique GUID of a GPT disk's first partition entry (512-byte
// sectors, as gokrazy's images use), lower case, or "".
func firstGPTPartition(f *os.File) string {
	var hdr [92]byte
	if _, err := f.ReadAt(hdr[:], 512); err != nil || string(hdr[:8]) != "EFI PART" {
		return ""
	}
	lba := binary.LittleEndian.Uint64(hdr[72:80])
	var ent [32]byte
	if _, err := f.ReadAt(ent[:], int64(lba)*512); err != nil {
		return ""
	}
	g := ent[16:32]
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(g[0:4]), binary.LittleEndian.Uint16(g[4:6]),
		binary.LittleEndian.Uint16(g[6:8]), g[8:10], g[10:16])
}

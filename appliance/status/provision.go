package status

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sie-europe/dnssensor/appliance/bootdev"
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
	// Mount mounts the partition dev on dir read-only; nil: the kernel's vfat (KernelMount).
	Mount func(dev, dir string) (unmount func() error, err error)
	// Writable makes the mounted partition writable, once there is a file to apply or refuse;
	// nil: KernelRemount with the kernel's mount, nothing otherwise.
	Writable func(dev, dir string) error
}

const mountFlags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC

// KernelMount mounts a FAT partition read-only with the kernel's vfat, without suid, devices or
// programs, and readable by root only (the file may hold an API key). Read-only, because a
// read-write vfat mount writes the partition even when nothing changes (the FAT's dirty mark, set
// at mount and cleared at unmount), and updated compares the boot partition's bytes across an
// update (appliance/update/bootcopy.go): a boot without a file to provision must leave them.
func KernelMount(dev, dir string) (func() error, error) {
	if err := unix.Mount(dev, dir, "vfat", mountFlags|unix.MS_RDONLY, "umask=077"); err != nil {
		return nil, err
	}
	return func() error { return unix.Unmount(dir, 0) }, nil
}

// KernelRemount makes a KernelMount writable.
func KernelRemount(dev, dir string) error {
	return unix.Mount(dev, dir, "vfat", mountFlags|unix.MS_REMOUNT, "umask=077")
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
	mount, writable := p.Mount, p.Writable
	if mount == nil {
		mount = KernelMount
		if writable == nil {
			writable = KernelRemount
		}
	}
	if writable == nil {
		writable = func(string, string) error { return nil }
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
	if err := writable(dev, dir); err != nil {
		return report("provisioning: making the boot partition writable: %v", err)
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

// BootPartition finds the boot partition, partition 1 of the disk holding the root file system
// (appliance/bootdev, shared with updated, which keeps a copy of it across an update).
func BootPartition(cmdlinePath string) (string, error) { return bootdev.Find(cmdlinePath) }

// Package hardware holds the device profiles an image can be built for, as data:
// one JSON file per device in this folder, embedded at build time. A profile says
// what the packer needs (GOARCH, kernel/firmware/EEPROM modules, how the device
// boots, the kernel command line and serial console, storage minimum) and what the
// programs on the device need (which interfaces are management and which are tap
// ports). Invariants are checked by Validate and by this package's tests.
package hardware

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"strings"
)

//go:embed *.json
var files embed.FS

// Boot methods a profile can list.
const (
	BootBIOS   = "bios"   // gokrazy's stage-1 MBR boot code loads vmlinuz from the FAT partition
	BootUEFI   = "uefi"   // systemd-boot as EFI/BOOT/BOOTX64.EFI with loader/entries/gokrazy.conf
	BootRPi    = "rpi"    // Raspberry Pi firmware reads config.txt, cmdline.txt, vmlinuz, DTBs
	BootDirect = "direct" // an emulator loads vmlinuz itself (QEMU -kernel); testing only
)

// How a push update restarts the box (Profile.Reboot).
const (
	RebootKexec    = "kexec"    // the new kernel loaded by the old one: no firmware, no boot loader
	RebootFirmware = "firmware" // a reset: firmware, boot loader, kernel, as at power-on
)

// Profile describes one kind of device.
type Profile struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	GOARCH      string `json:"goarch"`

	// Kernel is the Go module holding vmlinuz, lib/modules and (for the Pi) DTBs
	// and overlays; Firmware and EEPROM are optional modules copied to the boot
	// partition. All must be required by images/deps/go.mod.
	Kernel   string `json:"kernel"`
	Firmware string `json:"firmware,omitempty"`
	EEPROM   string `json:"eeprom,omitempty"`

	// Boot lists the boot methods the image must support, in preference order.
	Boot []string `json:"boot"`

	// Cmdline is the kernel command line without console= and root= (the packer
	// adds those). SerialConsole is e.g. "ttyS0,115200", empty for none.
	Cmdline       string `json:"cmdline"`
	SerialConsole string `json:"serial_console,omitempty"`

	// Management interfaces get DHCP and the status page; Tap interfaces come up
	// without an address and are only ever captured from. Disjoint.
	Management []string `json:"management"`
	Tap        []string `json:"tap"`

	// Drivers are the kernel drivers the ports need, as named in the kernel's modules.builtin
	// (igb, r8152); each must be built into Kernel (TestDriversBuiltIn): gokrazy loads no
	// modules, so a driver that is only shipped as a module leaves its port missing.
	Drivers []string `json:"drivers"`
	// Adapters are the NICs known to work (chipset and driver), for the README's buying list.
	Adapters []string `json:"adapters,omitempty"`

	// MinStorageBytes is the smallest disk/SD card the image may be written to.
	MinStorageBytes int64 `json:"min_storage_bytes"`

	// QEMU, when set, says how ci/qemu-run boots this profile.
	QEMU *QEMU `json:"qemu,omitempty"`

	// Reboot is how `gokr-packer update` restarts the box after a push, and updated into a
	// test boot and back (its -reboot, filled in by the images' {{reboot}}): RebootKexec (the
	// default when empty) or RebootFirmware. A real box's firmware takes seconds to start, so
	// kexec, which skips it, is the fast way there; under software emulation it is the slow
	// one: the kexec purgatory checks the loaded kernel's SHA-256 on an emulated CPU, while
	// SeaBIOS costs almost nothing (numbers in gokr-packer/README.md). gokrazy has no kexec
	// but on amd64; elsewhere it always reboots through the firmware.
	Reboot string `json:"reboot,omitempty"`

	// UncompressedRoot stores the root file system's data blocks as they are instead of
	// zlib-compressed. Under software emulation the kernel inflating each program's blocks as
	// they are paged in is most of the programs' start (seven start at once after every boot);
	// a real CPU inflates them in a fraction of a second, and the smaller root is the quicker
	// download, so real boxes keep compression.
	UncompressedRoot bool `json:"uncompressed_root,omitempty"`
}

// RebootMethod is Reboot with the default filled in.
func (p Profile) RebootMethod() string {
	if p.Reboot == "" {
		return RebootKexec
	}
	return p.Reboot
}

// QEMU describes the emulated machine for qemu-* profiles; ci/qemu-run uses the
// same values (checked by TestQEMUProfilesMatchRunner).
type QEMU struct {
	Binary  string `json:"binary"`  // qemu-system-x86_64, qemu-system-aarch64
	Machine string `json:"machine"` // -machine
	CPU     string `json:"cpu,omitempty"`
	NIC     string `json:"nic"` // -device model for every interface
}

// kernelArch maps a kernel module to the GOARCH its vmlinuz is built for.
var kernelArch = map[string]string{
	"github.com/gokrazy/kernel.amd64": "amd64",
	"github.com/gokrazy/kernel.arm64": "arm64",
	"github.com/gokrazy/kernel.rpi":   "arm64",
}

// All returns every profile, sorted by name.
func All() ([]Profile, error) {
	entries, err := files.ReadDir(".")
	if err != nil {
		return nil, err
	}
	var ps []Profile
	for _, e := range entries {
		p, err := parse(e.Name())
		if err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].Name < ps[j].Name })
	return ps, nil
}

// Get returns the named profile.
func Get(name string) (Profile, error) {
	ps, err := All()
	if err != nil {
		return Profile{}, err
	}
	var names []string
	for _, p := range ps {
		if p.Name == name {
			return p, nil
		}
		names = append(names, p.Name)
	}
	return Profile{}, fmt.Errorf("unknown hardware profile %q (known: %s)", name, strings.Join(names, ", "))
}

func parse(file string) (Profile, error) {
	b, err := files.ReadFile(file)
	if err != nil {
		return Profile{}, err
	}
	var p Profile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Profile{}, fmt.Errorf("hardware/%s: %w", file, err)
	}
	if want := strings.TrimSuffix(path.Base(file), ".json"); p.Name != want {
		return Profile{}, fmt.Errorf("hardware/%s: name %q must equal the file name %q", file, p.Name, want)
	}
	if err := p.Validate(); err != nil {
		return Profile{}, fmt.Errorf("hardware/%s: %w", file, err)
	}
	return p, nil
}

// Has reports whether the profile boots with method m.
func (p Profile) Has(m string) bool {
	for _, b := range p.Boot {
		if b == m {
			return true
		}
	}
	return false
}

// Validate checks a profile's invariants.
func (p Profile) Validate() error {
	if p.Name == "" {
		return fmt.Errorf("empty name")
	}
	if p.GOARCH != "amd64" && p.GOARCH != "arm64" {
		return fmt.Errorf("goarch %q: only amd64 and arm64 are supported", p.GOARCH)
	}
	arch, ok := kernelArch[p.Kernel]
	if !ok {
		return fmt.Errorf("unknown kernel module %q", p.Kernel)
	}
	if arch != p.GOARCH {
		return fmt.Errorf("kernel %s is for %s, profile says goarch %s", p.Kernel, arch, p.GOARCH)
	}
	if len(p.Boot) == 0 {
		return fmt.Errorf("no boot method")
	}
	for _, b := range p.Boot {
		switch b {
		case BootBIOS, BootUEFI:
			if p.GOARCH != "amd64" {
				return fmt.Errorf("boot method %s needs amd64", b)
			}
		case BootRPi:
			if p.Firmware == "" {
				return fmt.Errorf("boot method rpi needs a firmware module")
			}
		case BootDirect:
			if p.QEMU == nil {
				return fmt.Errorf("boot method direct is for emulators only (no qemu section)")
			}
		default:
			return fmt.Errorf("unknown boot method %q", b)
		}
	}
	switch p.Reboot {
	case "", RebootKexec, RebootFirmware:
	default:
		return fmt.Errorf("reboot %q: want %q or %q", p.Reboot, RebootKexec, RebootFirmware)
	}
	if strings.Contains(p.Cmdline, "root=") || strings.Contains(p.Cmdline, "console=") {
		return fmt.Errorf("cmdline must not set root= or console= (the packer does)")
	}
	if strings.Contains(p.Cmdline, "rootdelay") {
		return fmt.Errorf("cmdline: use rootwait, not rootdelay (costs seconds at every boot)")
	}
	if len(p.Management) == 0 {
		return fmt.Errorf("no management interface")
	}
	seen := map[string]string{}
	for _, l := range []struct {
		kind  string
		names []string
	}{{"management", p.Management}, {"tap", p.Tap}} {
		for _, n := range l.names {
			if n == "" {
				return fmt.Errorf("empty %s interface name", l.kind)
			}
			if prev, dup := seen[n]; dup {
				return fmt.Errorf("interface %s is listed as %s and %s (tap and management must be disjoint)", n, prev, l.kind)
			}
			seen[n] = l.kind
		}
	}
	if len(p.Drivers) == 0 {
		return fmt.Errorf("no drivers: name the kernel drivers the ports need (checked against the kernel's modules.builtin)")
	}
	if p.MinStorageBytes < 2<<30 {
		return fmt.Errorf("min_storage_bytes %d below 2 GiB (boot + two roots + /perm)", p.MinStorageBytes)
	}
	return nil
}

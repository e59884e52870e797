package hardware

import (
	"os"
	"strings"
	"testing"
)

// TestProfiles loads every profile (which runs Validate) and checks the set the
// product ships for.
func TestProfiles(t *testing.T) {
	ps, err := All()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, p := range ps {
		if names[p.Name] {
			t.Errorf("duplicate profile name %q", p.Name)
		}
		names[p.Name] = true
	}
	for _, want := range []string{"qemu-amd64", "generic-amd64", "apu2", "rpi4", "rpi5", "qemu-arm64"} {
		if !names[want] {
			t.Errorf("profile %q missing", want)
		}
	}
}

// TestKernelModulesPinned: every module a profile names must be required by the
// image build module, or the packer cannot find its files.
func TestKernelModulesPinned(t *testing.T) {
	gomod, err := os.ReadFile("../images/deps/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	ps, err := All()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		for _, m := range []string{p.Kernel, p.Firmware, p.EEPROM} {
			if m != "" && !strings.Contains(string(gomod), m+" ") {
				t.Errorf("%s: module %s is not required by images/deps/go.mod", p.Name, m)
			}
		}
	}
}

func TestValidateRejects(t *testing.T) {
	good, err := Get("qemu-amd64")
	if err != nil {
		t.Fatal(err)
	}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(p *Profile)
		want   string
	}{
		{"tap overlaps management", func(p *Profile) { p.Tap = []string{"eth0"} }, "disjoint"},
		{"goarch mismatch", func(p *Profile) { p.GOARCH = "arm64" }, "is for amd64"},
		{"unknown kernel", func(p *Profile) { p.Kernel = "example.com/kernel" }, "unknown kernel"},
		{"bios on arm64", func(p *Profile) { p.GOARCH, p.Kernel = "arm64", "github.com/gokrazy/kernel.arm64" }, "needs amd64"},
		{"rootdelay", func(p *Profile) { p.Cmdline += " rootdelay=10" }, "rootwait"},
		{"root in cmdline", func(p *Profile) { p.Cmdline += " root=/dev/sda2" }, "root="},
		{"no management", func(p *Profile) { p.Management = nil }, "management"},
		{"unknown reboot", func(p *Profile) { p.Reboot = "warm" }, `reboot "warm"`},
		{"tiny storage", func(p *Profile) { p.MinStorageBytes = 1 << 20 }, "min_storage_bytes"},
		{"rpi without firmware", func(p *Profile) {
			p.GOARCH, p.Kernel, p.Boot = "arm64", "github.com/gokrazy/kernel.rpi", []string{BootRPi}
		}, "firmware"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := good
			p.Tap = append([]string(nil), good.Tap...)
			tc.mutate(&p)
			err := p.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestGetUnknown(t *testing.T) {
	_, err := Get("nope")
	if err == nil || !strings.Contains(err.Error(), "qemu-amd64") {
		t.Errorf("Get(nope) = %v, want an error listing the known profiles", err)
	}
}

// TestQEMUProfilesMatchRunner: ci/qemu-run boots the qemu-* profiles; keep the
// machine, binary and NIC model it uses equal to the profile data.
func TestQEMUProfilesMatchRunner(t *testing.T) {
	script, err := os.ReadFile("../ci/qemu-run")
	if err != nil {
		t.Fatal(err)
	}
	ps, err := All()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if p.QEMU == nil {
			continue
		}
		for _, want := range []string{p.QEMU.Binary, "-machine " + p.QEMU.Machine, p.QEMU.NIC} {
			if !strings.Contains(string(script), want) {
				t.Errorf("%s: ci/qemu-run does not use %q", p.Name, want)
			}
		}
		if p.QEMU.CPU != "" && !strings.Contains(string(script), "-cpu "+p.QEMU.CPU) {
			t.Errorf("%s: ci/qemu-run does not use -cpu %s", p.Name, p.QEMU.CPU)
		}
	}
}

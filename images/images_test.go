package images

import (
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sie-europe/dnssensor/hardware"
)

func TestAllImagesLoad(t *testing.T) {
	names := Names()
	if len(names) == 0 {
		t.Fatal("no images")
	}
	for _, n := range names {
		im, err := Load(n)
		if err != nil {
			t.Errorf("%s: %v", n, err)
			continue
		}
		if im.Name != n {
			t.Errorf("%s: name %q differs from the file name", n, im.Name)
		}
		for _, prog := range im.Programs {
			for dst, src := range prog.Files {
				if _, err := os.Stat(filepath.Join("..", src)); err != nil {
					t.Errorf("%s: %s → %s: %v", n, src, dst, err)
				}
			}
		}
	}
}

// StatusPort is where statusd serves the status page on the management port (gokrazy's web UI
// keeps :80 for push updates); ci/qemu-run forwards it.
const statusPort = "8080"

// TestNetworkDaemons: netconfd owns every port of the box, the management port by DHCP or static
// configuration and exactly the profile's tap ports as silent ones; gokrazy's dhcp, which brings a
// port up with IPv6 (router solicitations, DAD) and sends DHCP, runs nowhere. statusd serves on
// the management port only.
func TestNetworkDaemons(t *testing.T) {
	for _, n := range Names() {
		im, err := Load(n)
		if err != nil {
			t.Fatal(err)
		}
		p, err := hardware.Get(im.Profile)
		if err != nil {
			t.Fatal(err)
		}
		flagsOf := map[string][]string{}
		for _, prog := range im.Programs {
			if strings.HasSuffix(prog.Package, "/cmd/dhcp") {
				t.Errorf("%s: %s: netconfd configures the management port", n, prog.Package)
			}
			flags, err := Expand(prog.Flags, p)
			if err != nil {
				t.Fatal(err)
			}
			flagsOf[path.Base(prog.Package)] = flags
		}
		value := func(prog, flag string) string {
			fs := flagsOf[prog]
			for i, f := range fs {
				if f == flag && i+1 < len(fs) {
					return fs[i+1]
				}
			}
			return ""
		}
		if _, ok := flagsOf["netconfd"]; !ok {
			t.Errorf("%s: no netconfd", n)
		} else if mgmt, taps := value("netconfd", "-mgmt"), value("netconfd", "-tap"); mgmt != p.Management[0] || taps != strings.Join(p.Tap, ",") {
			t.Errorf("%s: netconfd -mgmt %q -tap %q, want the profile's %q and %q", n, mgmt, taps, p.Management[0], strings.Join(p.Tap, ","))
		}
		if _, ok := flagsOf["statusd"]; !ok {
			t.Errorf("%s: no statusd", n)
		} else if li := value("statusd", "-listen-iface"); li != p.Management[0]+":"+statusPort {
			t.Errorf("%s: statusd -listen-iface %q, want %s:%s (the management port)", n, li, p.Management[0], statusPort)
		} else if value("statusd", "-listen") != "" {
			t.Errorf("%s: statusd -listen: a literal address is not known when the image is built", n)
		}
	}
}

func TestExpand(t *testing.T) {
	p := hardware.Profile{Name: "x", Management: []string{"eth0"}, Tap: []string{"eth1", "eth2"}}
	got, err := Expand([]string{"-i", "{{taps}}", "-m={{mgmt}}", "-reboot", "{{reboot}}"}, p)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "-i eth1,eth2 -m=eth0 -reboot kexec" {
		t.Errorf("Expand = %q", got)
	}
	if _, err := Expand([]string{"{{nope}}"}, p); err == nil {
		t.Error("unknown placeholder accepted")
	}
	p.Reboot = hardware.RebootFirmware
	if got, err := Expand([]string{"{{reboot}}"}, p); err != nil || got[0] != "firmware" {
		t.Errorf("Expand({{reboot}}) on a firmware profile = %q, %v", got, err)
	}
	p.Tap = nil
	if _, err := Expand([]string{"{{taps}}"}, p); err == nil {
		t.Error("{{taps}} accepted on a profile without tap ports")
	}
}

func TestUnknownImage(t *testing.T) {
	if _, err := Load("nope"); err == nil || !strings.Contains(err.Error(), "sensor-amd64") {
		t.Errorf("Load(nope) = %v, want error listing known images", err)
	}
}

// TestCmdline: an image's own kernel arguments are accepted, the packer's own refused by name.
func TestCmdline(t *testing.T) {
	im, err := Load("sensor-amd64")
	if err != nil {
		t.Fatal(err)
	}
	im.Cmdline = "dnssensor.release=4 quiet"
	if err := im.Validate(); err != nil {
		t.Errorf("extra arguments refused: %v", err)
	}
	for _, bad := range []string{"root=/dev/sda2", "quiet console=ttyS0"} {
		im.Cmdline = bad
		if err := im.Validate(); err == nil || !strings.Contains(err.Error(), "cmdline") {
			t.Errorf("cmdline %q: %v", bad, err)
		}
	}
}

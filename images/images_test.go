package images

import (
	"os"
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

// TestDHCPOnlyOnManagement: a box whose eth0 may be a tap port must never run
// DHCP anywhere but on its management interface.
func TestDHCPOnlyOnManagement(t *testing.T) {
	for _, n := range Names() {
		im, err := Load(n)
		if err != nil {
			t.Fatal(err)
		}
		p, err := hardware.Get(im.Profile)
		if err != nil {
			t.Fatal(err)
		}
		for _, prog := range im.Programs {
			if !strings.HasSuffix(prog.Package, "/cmd/dhcp") {
				continue
			}
			flags, err := Expand(prog.Flags, p)
			if err != nil {
				t.Fatal(err)
			}
			var iface string
			for i, f := range flags {
				if f == "-interface" && i+1 < len(flags) {
					iface = flags[i+1]
				}
			}
			if iface == "" {
				t.Errorf("%s: dhcp without -interface would default to eth0", n)
			}
			for _, tap := range p.Tap {
				if iface == tap {
					t.Errorf("%s: dhcp on tap port %s", n, tap)
				}
			}
		}
	}
}

func TestExpand(t *testing.T) {
	p := hardware.Profile{Name: "x", Management: []string{"eth0"}, Tap: []string{"eth1", "eth2"}}
	got, err := Expand([]string{"-i", "{{taps}}", "-m={{mgmt}}"}, p)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "-i eth1,eth2 -m=eth0" {
		t.Errorf("Expand = %q", got)
	}
	if _, err := Expand([]string{"{{nope}}"}, p); err == nil {
		t.Error("unknown placeholder accepted")
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

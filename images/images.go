// Package images holds the image definitions gokr-packer builds, as data: one JSON
// file per image in this folder (embedded), naming the hardware profile, the
// hostname and the programs with their flags, environment and extra files.
//
// Flags may use placeholders that the profile fills in, so one program line
// serves every device: {{mgmt}} (first management interface), {{mgmt_all}} and
// {{taps}} (comma-separated lists), {{reboot}} (how the profile restarts the box after an
// update: kexec or firmware, hardware.Profile.Reboot). Adding a program (uplinkd, when it lands) is
// one more entry; "optional": true lets an image name a program that may not
// exist in the tree yet (it is skipped with a warning instead of failing).
package images

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/sie-europe/dnssensor/hardware"
)

//go:embed *.json
var files embed.FS

// Image is one image definition.
type Image struct {
	Name     string `json:"name"`
	Profile  string `json:"profile"`
	Hostname string `json:"hostname"`
	// DiskSeed derives the disk and partition GUIDs. It must stay the same for the
	// life of a device: push updates carry a cmdline naming partition 1's GUID.
	// It is deliberately not the hostname (renaming a box must not brick it).
	// Empty means the image name.
	DiskSeed string `json:"disk_seed,omitempty"`
	// StorageBytes is the size of the image file (sparse); 0 means the profile's
	// minimum. /perm takes what the boot and root partitions leave.
	StorageBytes int64 `json:"storage_bytes,omitempty"`
	// Cmdline is appended to the profile's kernel command line (root= and console= are the
	// packer's). ci/qemu-tuf-test uses it for a release whose boot partition differs.
	Cmdline  string    `json:"cmdline,omitempty"`
	Programs []Program `json:"programs"`
}

// Program is one supervised process on the device.
type Program struct {
	// Package is a Go import path of a main package: in this module (built from
	// the checkout) or a gokrazy program required by images/deps/go.mod.
	Package string   `json:"package"`
	Flags   []string `json:"flags,omitempty"`
	Env     []string `json:"env,omitempty"`
	// Files maps a path in the root file system to a file in this repository
	// (relative to the repository root), e.g. a configuration file.
	Files map[string]string `json:"files,omitempty"`
	// WaitForClock delays the start until NTP has set the clock.
	WaitForClock bool `json:"wait_for_clock,omitempty"`
	// Optional programs that do not exist in the tree are skipped with a warning.
	Optional bool `json:"optional,omitempty"`
}

// Load returns the named embedded image, or reads a definition from a file
// when name ends in ".json".
func Load(name string) (Image, error) {
	var (
		b   []byte
		err error
		src = name
	)
	if strings.HasSuffix(name, ".json") {
		b, err = os.ReadFile(name)
	} else {
		src = "images/" + name + ".json"
		b, err = files.ReadFile(name + ".json")
		if err != nil {
			return Image{}, fmt.Errorf("unknown image %q (known: %s)", name, strings.Join(Names(), ", "))
		}
	}
	if err != nil {
		return Image{}, err
	}
	var im Image
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&im); err != nil {
		return Image{}, fmt.Errorf("%s: %w", src, err)
	}
	if err := im.Validate(); err != nil {
		return Image{}, fmt.Errorf("%s: %w", src, err)
	}
	return im, nil
}

// Names lists the embedded images.
func Names() []string {
	entries, _ := files.ReadDir(".")
	var names []string
	for _, e := range entries {
		names = append(names, strings.TrimSuffix(e.Name(), ".json"))
	}
	sort.Strings(names)
	return names
}

// Validate checks the definition against its profile.
func (im Image) Validate() error {
	if im.Name == "" || im.Hostname == "" {
		return fmt.Errorf("name and hostname are required")
	}
	p, err := hardware.Get(im.Profile)
	if err != nil {
		return err
	}
	if im.StorageBytes != 0 && im.StorageBytes < p.MinStorageBytes {
		return fmt.Errorf("storage_bytes %d below profile %s minimum %d", im.StorageBytes, p.Name, p.MinStorageBytes)
	}
	for _, f := range strings.Fields(im.Cmdline) {
		if strings.HasPrefix(f, "root=") || strings.HasPrefix(f, "console=") {
			return fmt.Errorf("cmdline: %s is set by the packer, remove it", f)
		}
	}
	bases := map[string]bool{}
	for _, prog := range im.Programs {
		if prog.Package == "" {
			return fmt.Errorf("program without package")
		}
		base := path.Base(prog.Package)
		if base == "init" || bases[base] {
			return fmt.Errorf("program %s: binary name %q is reserved or used twice", prog.Package, base)
		}
		bases[base] = true
		for dst := range prog.Files {
			if !strings.HasPrefix(dst, "/etc/") {
				return fmt.Errorf("program %s: extra file %s must live under /etc/", prog.Package, dst)
			}
		}
		if _, err := Expand(prog.Flags, p); err != nil {
			return fmt.Errorf("program %s: %w", prog.Package, err)
		}
	}
	return nil
}

// Seed returns the disk seed.
func (im Image) Seed() string {
	if im.DiskSeed != "" {
		return im.DiskSeed
	}
	return im.Name
}

// Expand fills the {{…}} placeholders in flags from the profile.
func Expand(flags []string, p hardware.Profile) ([]string, error) {
	repl := strings.NewReplacer(
		"{{mgmt}}", p.Management[0],
		"{{mgmt_all}}", strings.Join(p.Management, ","),
		"{{taps}}", strings.Join(p.Tap, ","),
		"{{reboot}}", p.RebootMethod(),
	)
	out := make([]string, len(flags))
	for i, f := range flags {
		out[i] = repl.Replace(f)
		if strings.Contains(out[i], "{{") {
			return nil, fmt.Errorf("unknown placeholder in flag %q", f)
		}
		if strings.Contains(f, "{{taps}}") && len(p.Tap) == 0 {
			return nil, fmt.Errorf("flag %q needs tap ports, profile %s has none", f, p.Name)
		}
	}
	return out, nil
}

package hardware

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

// builtinDrivers returns the drivers built into a pinned kernel module (from its modules.builtin),
// fetching the module as the packer does.
func builtinDrivers(t *testing.T, kernel string) map[string]bool {
	t.Helper()
	cmd := exec.Command("go", "mod", "download", "-json", kernel)
	cmd.Dir = "../images/deps"
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var m struct{ Dir, Error string }
	if err == nil {
		err = json.Unmarshal(out, &m)
	}
	if err == nil && m.Dir == "" {
		err = os.ErrNotExist
	}
	if err != nil {
		testenv.Missing(t, err)
	}
	files, _ := filepath.Glob(filepath.Join(m.Dir, "lib/modules/*/modules.builtin"))
	if len(files) != 1 {
		t.Fatalf("%s: want one lib/modules/*/modules.builtin, found %v", kernel, files)
	}
	f, err := os.Open(files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	drivers := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// kernel/drivers/net/usb/r8152.ko
		drivers[strings.TrimSuffix(filepath.Base(sc.Text()), ".ko")] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return drivers
}

// TestDriversBuiltIn: every driver a profile's ports need is built into the profile's pinned
// kernel. gokrazy loads no modules, so a driver shipped only as a module is as good as missing:
// the port would never appear, and a tap port without its interface captures nothing.
func TestDriversBuiltIn(t *testing.T) {
	ps, err := All()
	if err != nil {
		t.Fatal(err)
	}
	kernels := map[string]map[string]bool{}
	for _, p := range ps {
		if kernels[p.Kernel] == nil {
			kernels[p.Kernel] = builtinDrivers(t, p.Kernel)
		}
		for _, d := range p.Drivers {
			if !kernels[p.Kernel][d] {
				t.Errorf("%s: driver %s is not built into %s: its ports would be missing (choose adapters whose driver is built in, and update the profile's drivers and adapters)", p.Name, d, p.Kernel)
			}
		}
	}
	// What the profiles' adapter lists tell buyers to avoid; when a kernel update adds a driver,
	// this says so, and the lists (and the README) can recommend the adapters again.
	for kernel, absent := range map[string][]string{
		"github.com/gokrazy/kernel.rpi":   {"ax88179_178a"},
		"github.com/gokrazy/kernel.amd64": {"r8152", "ax88179_178a", "lan78xx"},
	} {
		for _, d := range absent {
			if kernels[kernel][d] {
				t.Errorf("%s now has %s built in: the profiles' adapter lists and the README advise against such adapters", kernel, d)
			}
		}
	}
}

// Package deptest holds the import rules of the tree as a test (after tailscale's tstest/deptest):
// which folder may import which, that no production program links a test helper, and that nothing
// on the device links cgo. Run by ci/check.
package deptest

import (
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/sie-europe/dnssensor/"

type pkg struct {
	ImportPath string
	Name       string
	Standard   bool
	CgoFiles   []string
	Imports    []string
	Deps       []string
}

// list runs go list over patterns in the environment env (GOOS, GOARCH, CGO_ENABLED).
func list(t *testing.T, env []string, args ...string) []pkg {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-e", "-json=ImportPath,Name,Standard,CgoFiles,Imports,Deps"}, args...)...)
	cmd.Dir = "../.."
	cmd.Env = append(cmd.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v\n%s", args, err, stderr.String())
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func rel(path string) (string, bool) { return strings.CutPrefix(path, module) }

func top(rel string) string { return strings.SplitN(rel, "/", 2)[0] }

// knownViolations are edges that break a rule today and are being removed. A new violation fails;
// so does an entry here that no longer occurs, so the list can only shrink.
var knownViolations = map[string]bool{}

// TestFolderBoundaries: the sensor reaches the uplink only through the spool's producer API, the
// uplink reads nothing of the sensor (the NMSG format both share is nmsg/, which depends on
// neither), and device daemons stay apart. Implementation packages live under each folder's
// internal/, so the compiler already keeps tests from crossing; tests that need the other side
// run its programs (uplinkd's end-to-end tests build sensord) or share internal/pktbuild.
func TestFolderBoundaries(t *testing.T) {
	allowed := func(from, to string) bool {
		switch {
		case top(from) == "sensor" && top(to) == "uplink":
			return to == "uplink/spool"
		case top(from) == "uplink" && top(to) == "sensor":
			return false
		case top(from) == "nmsg":
			return top(to) == "nmsg" || top(to) == "internal"
		case top(from) == "internal":
			return top(to) == "internal"
		case top(to) == "gokr-packer":
			return top(from) == "gokr-packer"
		}
		return true
	}
	seen := map[string]bool{}
	for _, p := range list(t, nil, "./...") {
		from, ok := rel(p.ImportPath)
		if !ok {
			continue
		}
		for _, imp := range p.Imports {
			to, ok := rel(imp)
			if !ok || allowed(from, to) {
				continue
			}
			edge := from + " -> " + to
			seen[edge] = true
			if !knownViolations[edge] {
				t.Errorf("%s: not allowed (see the rules in TestFolderBoundaries)", edge)
			}
		}
	}
	for e := range knownViolations {
		if strings.Contains(e, " -> ") && !seen[e] {
			t.Errorf("%s no longer occurs: remove it from knownViolations", e)
		}
	}
}

// commands are the production programs: every main package outside tests and ci.
func commands(t *testing.T) []pkg {
	var cmds []pkg
	for _, p := range list(t, nil, "./...") {
		if p.Name == "main" {
			cmds = append(cmds, p)
		}
	}
	if len(cmds) < 4 {
		t.Fatalf("found %d main packages; the listing is broken", len(cmds))
	}
	return cmds
}

// TestNoTestHelpersInBinaries: a program that links a *test helper package (fake servers,
// throwaway certificates, test environment rules) ships test code to operators.
func TestNoTestHelpersInBinaries(t *testing.T) {
	seen := map[string]bool{}
	defer func() {
		for e := range knownViolations {
			if strings.Contains(e, " links ") && !seen[e] {
				t.Errorf("%s no longer occurs: remove it from knownViolations", e)
			}
		}
	}()
	for _, c := range commands(t) {
		cr, _ := rel(c.ImportPath)
		for _, d := range list(t, nil, "-deps", c.ImportPath) {
			r, ok := rel(d.ImportPath)
			if !ok {
				if d.ImportPath == "testing" {
					t.Errorf("%s links package testing", c.ImportPath)
				}
				continue
			}
			last := r[strings.LastIndex(r, "/")+1:]
			if strings.HasSuffix(last, "test") || strings.Contains(r, "internal/testenv") {
				e := cr + " links " + r
				seen[e] = true
				if !knownViolations[e] {
					t.Errorf("%s links the test helper %s", c.ImportPath, r)
				}
			}
		}
	}
}

// devicePrograms are the programs that go into the image.
var devicePrograms = []string{"./sensor/cmd/sensord", "./uplink/cmd/uplinkd", "./appliance/cmd/netconfd", "./appliance/cmd/statusd", "./appliance/cmd/updated"}

// TestDeviceProgramsPureGo: with cgo enabled, no non-standard package in a device program's graph
// has cgo files (libpcap or ZeroMQ bindings would make the image build depend on a C toolchain
// and the CGO_ENABLED=0 build silently drop functionality).
func TestDeviceProgramsPureGo(t *testing.T) {
	for _, arch := range []string{"amd64", "arm64"} {
		env := []string{"CGO_ENABLED=1", "GOOS=linux", "GOARCH=" + arch}
		for _, prog := range devicePrograms {
			for _, d := range list(t, env, "-deps", prog) {
				if !d.Standard && len(d.CgoFiles) > 0 {
					t.Errorf("%s (%s) links the cgo package %s", prog, arch, d.ImportPath)
				}
			}
		}
	}
}

// TestNoNATSOnDevice: NATS (client and server) belongs to the SOC collector; a device program
// that linked it would carry a message broker's code (twice the collector's size) into the
// image for nothing, and a stray import could open a port there.
func TestNoNATSOnDevice(t *testing.T) {
	for _, prog := range devicePrograms {
		for _, d := range list(t, []string{"GOOS=linux", "GOARCH=amd64"}, "-deps", prog) {
			if strings.HasPrefix(d.ImportPath, "github.com/nats-io/") {
				t.Errorf("%s links %s: NATS is for the collector only", prog, d.ImportPath)
				break
			}
		}
	}
}

// TestTUFOnlyInUpdated: the TUF client is the update agent's; statusd shows the agent's state
// through package updatestate (standard library only) and must not link the client (1 MB more
// in its binary, and verification code where none is meant to run).
func TestTUFOnlyInUpdated(t *testing.T) {
	for _, prog := range devicePrograms {
		if prog == "./appliance/cmd/updated" {
			continue
		}
		for _, d := range list(t, []string{"GOOS=linux", "GOARCH=amd64"}, "-deps", prog) {
			if strings.HasPrefix(d.ImportPath, "github.com/theupdateframework/") {
				t.Errorf("%s links %s: the TUF client is updated's only", prog, d.ImportPath)
				break
			}
		}
	}
}

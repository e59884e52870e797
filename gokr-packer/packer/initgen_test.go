package packer

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

func TestGenerateInitGolden(t *testing.T) {
	got, err := GenerateInit("2026-01-02T03:04:05Z", []Service{
		{Path: "/user/netconfd", Args: []string{"-mgmt", "eth0", "-tap", "eth1,eth2"}},
		{Path: "/gokrazy/ntp"},
		{Path: "/user/sensord", Args: []string{"-r", "/etc/sensord/selftest.pcap", `-weird="quoted"`}, Env: []string{"GOGC=50"}},
		{Path: "/user/uplinkd", WaitForClock: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "init.go.golden")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("generated init differs (-want +got):\n%s", diff)
	}
}

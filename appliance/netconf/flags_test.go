package netconf

import (
	"io"
	"slices"
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	o, err := ParseFlags([]string{"-profile", "rpi4"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.Mgmt != "eth0" || !slices.Equal(o.Taps, []string{"eth1", "eth2"}) || o.Config != "/perm/netconfd/config.json" || o.RunDir != "/run/netconfd" {
		t.Errorf("-profile rpi4: %+v", o)
	}
	o, err = ParseFlags([]string{"-mgmt", "enp1s0", "-tap", "enp2s0,enp3s0", "-hostname", "sensor1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.Mgmt != "enp1s0" || !slices.Equal(o.Taps, []string{"enp2s0", "enp3s0"}) || o.Hostname != "sensor1" {
		t.Errorf("-mgmt/-tap: %+v", o)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no management interface: give -profile NAME or -mgmt IF"},
		{[]string{"-profile", "rpi4", "-tap", "eth3"}, "-profile and -mgmt/-tap exclude each other"},
		{[]string{"-profile", "nosuch"}, `-profile: unknown hardware profile "nosuch" (known: apu2,`},
		{[]string{"-mgmt", "eth0", "-tap", "eth1,eth0"}, `-tap "eth1,eth0": an empty name, or the management interface`},
		{[]string{"-mgmt", "eth0", "-tap", "eth1,"}, `an empty name`},
		{[]string{"-mgmt", "eth0", "-poll", "0s"}, "-poll 0s: must be positive"},
		{[]string{"-mgmt", "eth0", "extra"}, `unexpected arguments ["extra"]`},
	} {
		_, err := ParseFlags(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseFlags(%q) = %v, want %q", tc.args, err, tc.want)
		}
	}
}

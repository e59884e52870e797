package app

import (
	"io"
	"strings"
	"testing"
)

// TestStateMaxBytes: the shared state budget defaults to half the memory limit, and a budget
// too small or above the limit is refused naming the flag.
func TestStateMaxBytes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
		err  string
	}{
		{nil, 128 << 20, ""},
		{[]string{"-memory-limit", "67108864"}, 32 << 20, ""},
		{[]string{"-state-max-bytes", "50000000"}, 50000000, ""},
		{[]string{"-state-max-bytes", "1000"}, 0, "-state-max-bytes"},
		{[]string{"-state-max-bytes", "-5"}, 0, "-state-max-bytes"},
		{[]string{"-memory-limit", "67108864", "-state-max-bytes", "100000000"}, 0, "-state-max-bytes"},
	} {
		o, err := ParseFlags(append(tc.args, "-r", "x.pcap", "-resolver", "192.0.2.1", "-w", "/dev/null"), io.Discard)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one naming %s", tc.args, err, tc.err)
			}
		case err != nil:
			t.Errorf("%q: %v", tc.args, err)
		case o.Pipeline.MaxBytes != tc.want:
			t.Errorf("%q: budget %d, want %d", tc.args, o.Pipeline.MaxBytes, tc.want)
		}
	}
}

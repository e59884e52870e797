package app

import (
	"io"
	"strings"
	"testing"
)

// TestDnstapAllowRequired: a dnstap TCP listener on a non-loopback address needs an allow-list
// of writers; the error names the flag.
func TestDnstapAllowRequired(t *testing.T) {
	for _, tc := range []struct {
		args []string
		err  string // "" for accepted
	}{
		{[]string{"-dnstap", "tcp:0.0.0.0:6000"}, "-dnstap-allow"},
		{[]string{"-dnstap", "tcp::6000"}, "-dnstap-allow"},
		{[]string{"-dnstap", "tcp:192.0.2.1:6000"}, "-dnstap-allow"},
		{[]string{"-dnstap", "tcp:[2001:db8::1]:6000"}, "-dnstap-allow"},
		{[]string{"-dnstap", "tcp:resolver.example:6000"}, "-dnstap-allow"},
		{[]string{"-dnstap", "tcp:0.0.0.0:6000", "-dnstap-allow", "192.0.2.0/24,2001:db8::53"}, ""},
		{[]string{"-dnstap", "tcp:0.0.0.0:6000", "-dnstap-allow", "nonsense"}, "-dnstap-allow"},
		{[]string{"-dnstap", "tcp:127.0.0.1:6000"}, ""},
		{[]string{"-dnstap", "tcp:[::1]:6000"}, ""},
		{[]string{"-dnstap", "tcp:localhost:6000"}, ""},
		{[]string{"-dnstap", "unix:/run/dnstap.sock"}, ""},
		{[]string{"-dnstap", "unix:/run/dnstap.sock", "-dnstap-allow", "192.0.2.1"}, "-dnstap-allow"},
	} {
		_, err := ParseFlags(append(tc.args, "-w", "/dev/null"), io.Discard)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.args, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want one naming %s", tc.args, err, tc.err)
		}
	}
}

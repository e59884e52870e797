package app

import (
	"strings"
	"testing"
)

var applianceArgs = []string{"-i", "tap0,tap1", "-spool", "/run/spool", "-spool-disk", "/perm/spool", "-health", "/run/sensord/health.sock"}

// TestCheckConfigEveryKey: a file with every key wrong gets one error per key, each naming it, in
// ParseFlags' words; a good file gets none.
func TestCheckConfigEveryKey(t *testing.T) {
	errs := CheckConfig([]byte(`{"resolver": "192.0.2.1,not-an-ip", "rd": "2", "qr": "x",
		"qname-exclude": "a..b", "state-max": 0, "snaplen": 1, "workers": 99, "zero-resolver": "maybe",
		"resolvr": "192.0.2.1", "spool": "/tmp/x", "query-timeout": "1ms"}`), applianceArgs)
	want := map[string]string{
		"resolver": "not-an-ip", "rd": `"2" is not 0, 1 or any`, "qr": "-qr", "qname-exclude": "qname-exclude",
		"state-max": "-state-max", "snaplen": "-snaplen", "workers": "-workers", "zero-resolver": "zero-resolver",
		"resolvr": `unknown key "resolvr"`, "spool": "command line", "query-timeout": "-query-timeout",
	}
	got := map[string]string{}
	for _, e := range errs {
		if _, dup := got[e.Key]; dup {
			t.Errorf("key %q reported twice: %v", e.Key, errs)
		}
		got[e.Key] = e.Msg
	}
	for k, w := range want {
		if !strings.Contains(got[k], w) {
			t.Errorf("key %q: got %q, want a message mentioning %q", k, got[k], w)
		}
	}
	if len(errs) != len(want) {
		t.Errorf("got %d errors, want %d: %q", len(errs), len(want), errs)
	}
	if errs := CheckConfig([]byte(`{"resolver": "192.0.2.53,2001:db8::53", "rd": "0", "zero-resolver": true, "qname-exclude": "example.com"}`), applianceArgs); errs != nil {
		t.Errorf("good file refused: %q", errs)
	}
	// Without a resolver, the appliance's sensord (it has capture interfaces) runs in discovery
	// mode: it counts the sources of queries for the page's suggestions and writes no record.
	// That is a valid state to configure, not an error.
	if errs := CheckConfig([]byte(`{"rd": "1"}`), applianceArgs); errs != nil {
		t.Errorf("file without a resolver (discovery mode) refused: %q", errs)
	}
	if errs := CheckConfig([]byte(`{"rd": "1"}`), []string{"-w", "/tmp/x.nmsg"}); len(errs) != 1 || errs[0].Key != "resolver" {
		t.Errorf("file without a resolver and no capture interface: %q, want one error for resolver", errs)
	}
	if errs := CheckConfig([]byte(`[1]`), applianceArgs); len(errs) != 1 || errs[0].Key != "" {
		t.Errorf("not an object: %q", errs)
	}
}

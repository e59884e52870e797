package uplinkd

import (
	"strings"
	"testing"
)

func TestConfigErrorsNameTheKey(t *testing.T) {
	for cfg, want := range map[string]string{
		`{"destinations": [{"type": "nmsg-udp", "addr": "127.0.0.1:9"}]}`:                                  "spool.dir",
		`{"spool": {"dir": "/run/spool"}}`:                                                                 "destinations",
		`{"spool": {"dir": "/x"}, "destinations": [{"type": "kafka"}]}`:                                    "destinations[0].type",
		`{"spool": {"dir": "/x"}, "destinations": [{"type": "sielink", "url": "https://a"}]}`:              "destinations[0].url",
		`{"spool": {"dir": "/x"}, "destinations": [{"type": "sielink", "url": "wss://a"}]}`:                "destinations[0].sensor",
		`{"spool": {"dir": "/x"}, "destinations": [{"type": "sielink", "url": "wss://a", "sensor": "s"}]}`: "api_key_file",
		`{"spool": {"dir": "/x"}, "destinations": [{"type": "nmsg-udp"}]}`:                                 "destinations[0].addr",
		`{"spool": {"dir": "/x"}, "destinatons": []}`:                                                      `unknown field "destinatons"`,
		`{"spool": {"dir": "/x"}, "retry_max": 5, "destinations": [{"type": "nmsg-udp", "addr": "a:1"}]}`:  "duration",
	} {
		_, err := ParseConfig([]byte(cfg), "test.json")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseConfig(%s) = %v, want an error mentioning %q", cfg, err, want)
		}
	}
	c, err := ParseConfig([]byte(`{"spool": {"dir": "/x"}, "destinations": [{"type": "nmsg-udp", "addr": "a:1"}, {"type": "nmsg-udp", "addr": "b:1"}]}`), "ok")
	if err != nil {
		t.Fatal(err)
	}
	if c.Destinations[0].Name == c.Destinations[1].Name || c.Metrics != "127.0.0.1:9410" || c.RetryMax.Seconds() != 30 {
		t.Errorf("defaults: %+v", c)
	}
}

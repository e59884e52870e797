package uplinkd

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// TestHostileConfigs: configurations that parse but would leak the API key, watch the wrong
// directory, expose the metrics or silently lose part of the file are refused, each with a
// message naming the key at fault.
func TestHostileConfigs(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "api.key")
	if err := os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	dest := func(url string) string {
		return fmt.Sprintf(`[{"type": "sielink", "url": %q, "sensor": "s1", "api_key_file": %q}]`, url, key)
	}
	udp := `[{"type": "nmsg-udp", "addr": "127.0.0.1:9"}]`
	cfg := func(spoolDir, metrics, dests string) string {
		return fmt.Sprintf(`{"spool": {"dir": %q}, "metrics": %q, "destinations": %s}`, spoolDir, metrics, dests)
	}
	for _, tc := range []struct{ name, cfg, want string }{
		{"ws to a remote host", cfg(dir, "", dest("ws://collector.example.net:8443")), "destinations[0].url"},
		{"ws to a remote address", cfg(dir, "", dest("ws://192.0.2.7")), "destinations[0].url"},
		{"ws to a name resolving anywhere", cfg(dir, "", dest("ws://localhost.example.net")), "destinations[0].url"},
		{"missing spool dir", cfg(filepath.Join(dir, "spoool"), "", udp), "spool.dir"},
		{"spool dir is a file", cfg(file, "", udp), "spool.dir"},
		{"missing disk dir", fmt.Sprintf(`{"spool": {"dir": %q, "disk_dir": %q}, "destinations": %s}`, dir, filepath.Join(dir, "perm"), udp), "spool.disk_dir"},
		{"metrics on every interface", cfg(dir, "0.0.0.0:9410", udp), "metrics"},
		{"metrics on an empty host", cfg(dir, ":9410", udp), "metrics"},
		{"metrics on a public address", cfg(dir, "192.0.2.1:9410", udp), "metrics"},
		{"metrics on IPv6 any", cfg(dir, "[::]:9410", udp), "metrics"},
		{"metrics on a host name", cfg(dir, "sensor.example.net:9410", udp), "metrics"},
		{"trailing object", cfg(dir, "", udp) + `{"spool": {"dir": "/elsewhere"}}`, "after the configuration"},
		{"trailing garbage", cfg(dir, "", udp) + ` x`, "after the configuration"},
		{"duplicate top-level key", fmt.Sprintf(`{"spool": {"dir": %q}, "destinations": %s, "destinations": []}`, dir, udp), `"destinations" appears twice`},
		{"duplicate nested key", fmt.Sprintf(`{"spool": {"dir": %q, "dir": "/x"}, "destinations": %s}`, dir, udp), `spool.dir`},
		{"negative retry_max", fmt.Sprintf(`{"spool": {"dir": %q}, "retry_max": "-1s", "destinations": %s}`, dir, udp), "retry_max"},
		{"negative shutdown_grace", fmt.Sprintf(`{"spool": {"dir": %q}, "shutdown_grace": "-1s", "destinations": %s}`, dir, udp), "shutdown_grace"},
		{"duplicate key in a destination", fmt.Sprintf(`{"spool": {"dir": %q}, "destinations": [{"type": "nmsg-udp", "addr": "a:1", "addr": "b:1"}]}`, dir), `destinations[0].addr`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.cfg), "test.json")
			if err == nil {
				c.dirWait = 0
				var s *Supervisor
				s, err = New(c, t.Logf)
				if err == nil {
					s.Close()
				}
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s\n  = %v, want an error naming %q", tc.cfg, err, tc.want)
			} else {
				t.Log(err)
			}
		})
	}
	// Loopback stays allowed: tests and a collector on the same host.
	for _, ok := range []string{cfg(dir, "127.0.0.1:0", dest("ws://127.0.0.1:8080")), cfg(dir, "[::1]:0", dest("ws://[::1]:8080")),
		cfg(dir, "localhost:0", dest("ws://localhost:8080")), cfg(dir, "", dest("wss://collector.example.net"))} {
		c, err := ParseConfig([]byte(ok), "ok.json")
		if err != nil {
			t.Errorf("%s: %v", ok, err)
			continue
		}
		s, err := New(c, t.Logf)
		if err != nil {
			t.Errorf("%s: %v", ok, err)
			continue
		}
		s.Close()
	}
}

// TestSpoolDirWaitedFor: at boot uplinkd may start before sensord has created its spool; a missing
// directory that appears within the wait is accepted, one that does not is refused.
func TestSpoolDirWaitedFor(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	c, err := ParseConfig([]byte(fmt.Sprintf(`{"spool": {"dir": %q}, "metrics": "127.0.0.1:0", "destinations": [{"type": "nmsg-udp", "addr": "127.0.0.1:9"}]}`, dir)), "t.json")
	if err != nil {
		t.Fatal(err)
	}
	logged := make(chan string, 10)
	go func() {
		<-logged // uplinkd is waiting: now sensord creates the spool
		os.Mkdir(dir, 0o755)
	}()
	if err := c.CheckDirs(time.Minute, func(f string, a ...any) { logged <- fmt.Sprintf(f, a...) }); err != nil {
		t.Fatal(err)
	}
	os.Remove(dir)
	if err := c.CheckDirs(50*time.Millisecond, t.Logf); err == nil || !strings.Contains(err.Error(), "spool.dir") {
		t.Errorf("CheckDirs after the wait = %v, want an error naming spool.dir", err)
	}
}

// TestCheckAllEveryKey: a configuration with every key wrong gets one message per key, each
// starting with it, so the status page can show each next to its field.
func TestCheckAllEveryKey(t *testing.T) {
	errs := CheckAll([]byte(`{"metrics": "0.0.0.0:9410", "retry_max": "-1s", "shutdown_grace": "-2s", "report_interval": "10ms",
		"destinations": [{"type": "sielink", "url": "https://a"}, {"type": "kafka"}, {"type": "nmsg-udp", "name": "sielink0"}]}`))
	want := []string{"spool.dir", "destinations[0].url", "destinations[0].sensor", "destinations[0].api_key_file",
		"destinations[1].type", "destinations[2].name", "destinations[2].addr", "metrics", "retry_max", "shutdown_grace", "report_interval"}
	var got []string
	for _, e := range errs {
		k, _, _ := strings.Cut(e.Error(), ": ")
		got = append(got, k)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("keys %q\nwant %q", got, want)
	}
	if errs := CheckAll([]byte(`{"spool": {"dir": "/x"}, "destinations": [{"type": "nmsg-udp", "addr": "a:1"}]}`)); errs != nil {
		t.Errorf("good config: %v", errs)
	}
}

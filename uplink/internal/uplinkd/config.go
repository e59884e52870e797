// Package uplinkd is the uplink supervisor: it takes sealed segments out of the spool in order and
// hands each to every configured destination — SIE Europe or a SOC collector over sielink, classic
// NMSG/UDP relays — deleting a segment only once all of them have it. It exposes its state and
// counters on a localhost HTTP endpoint for the status page.
//
// Delivery is at-least-once: a segment is acked only after every destination confirmed it (sielink:
// a Sync after the segment's containers; UDP: sent), so a crash or a dropped connection resends it,
// and duplicates carry the segment's sequence. Loss happens only in the spool (quota, damage), is
// counted in its ledger, and travels upstream as sielink linkLoss.
package uplinkd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Duration reads "30s"-style strings from JSON.
type Duration struct{ time.Duration }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string like \"30s\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// Destination is one place segments go.
type Destination struct {
	Type string `json:"type"` // "sielink" or "nmsg-udp"
	Name string `json:"name"` // label for metrics; default type + index

	// sielink
	URL        string   `json:"url,omitempty"`          // wss://host[:port]
	Sensor     string   `json:"sensor,omitempty"`       // session name
	APIKeyFile string   `json:"api_key_file,omitempty"` // mode 0600
	Origin     string   `json:"origin,omitempty"`
	Channel    uint32   `json:"channel,omitempty"` // default 202
	Heartbeat  Duration `json:"heartbeat,omitempty"`
	CAFile     string   `json:"ca_file,omitempty"` // extra roots (a SOC collector's own CA)
	// HealthReports sends the box's health summary to this destination (default true; see
	// report.go): the collector's fleet view shows it.
	HealthReports *bool `json:"health_reports,omitempty"`

	// nmsg-udp
	Addr string `json:"addr,omitempty"` // host:port
	MTU  int    `json:"mtu,omitempty"`
	Zlib bool   `json:"zlib,omitempty"`
	Rate int    `json:"rate,omitempty"` // datagrams/s
}

// Config is uplinkd's configuration file.
type Config struct {
	Spool struct {
		Dir     string `json:"dir"`      // RAM tier, as sensord's -spool
		DiskDir string `json:"disk_dir"` // disk tier, as sensord's -spool-disk
	} `json:"spool"`
	Destinations []Destination `json:"destinations"`
	Metrics      string        `json:"metrics"` // listen address, default 127.0.0.1:9410
	// RetryMax bounds the wait between attempts at a failing destination (default 30s).
	RetryMax Duration `json:"retry_max"`
	// ShutdownGrace is how long SIGTERM lets an attempt under way finish (default 20s, well
	// inside gokrazy's 100 s).
	ShutdownGrace Duration `json:"shutdown_grace"`
	// ReportInterval is how often the health summary goes to the sielink destinations, besides
	// at once when the box's first failing check changes (default 60s).
	ReportInterval Duration `json:"report_interval"`
	// SensordHealth is sensord's health socket, read for the summary (default
	// /run/sensord/health.sock); "none" on a host without sensord (a SOC collector's uplinkd).
	SensordHealth string `json:"sensord_health"`

	dirWait time.Duration // how long New waits for a missing spool directory (DirWait)
}

// LoadConfig reads and checks a JSON config file. Errors name the key at fault.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("-config: %v", err)
	}
	return ParseConfig(data, path)
}

// ParseConfig parses and checks a config.
func ParseConfig(data []byte, name string) (*Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %v (keys: spool.dir, spool.disk_dir, destinations[], metrics, retry_max, shutdown_grace, report_interval, sensord_health)", name, err)
	}
	// encoding/json stops after the first value and keeps the last of duplicate keys: either
	// would let a pasted or merged file mean something other than what its reader sees.
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%s: data after the configuration's closing brace (offset %d): remove it, one JSON object per file", name, dec.InputOffset())
	}
	if err := checkDuplicateKeys(data); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	if err := c.check(); err != nil {
		// One line per problem, each naming the file.
		return nil, fmt.Errorf("%s: %s", name, strings.ReplaceAll(err.Error(), "\n", "\n"+name+": "))
	}
	return &c, nil
}

func (c *Config) check() error {
	return errors.Join(c.checkAll()...)
}

// checkAll returns every problem of c, one per key, each message starting with the key: the
// status page shows each next to its field, and a file with several mistakes is fixed in one go.
func (c *Config) checkAll() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Spool.Dir == "" && c.Spool.DiskDir == "" {
		bad("spool.dir: set the spool directory sensord writes to (its -spool)")
	}
	if len(c.Destinations) == 0 {
		bad("destinations: configure at least one (type \"sielink\" or \"nmsg-udp\")")
	}
	names := map[string]bool{}
	for i := range c.Destinations {
		d := &c.Destinations[i]
		if d.Name == "" {
			d.Name = fmt.Sprintf("%s%d", d.Type, i)
		}
		if names[d.Name] {
			bad("destinations[%d].name: %q used twice", i, d.Name)
		}
		names[d.Name] = true
		switch d.Type {
		case "sielink":
			u, err := url.Parse(d.URL)
			if err != nil || (u.Scheme != "wss" && u.Scheme != "ws") || u.Host == "" {
				bad("destinations[%d].url: want wss://host[:port], got %q", i, d.URL)
			} else if u.Scheme == "ws" && !isLoopback(u.Hostname()) {
				// ws:// would send the API key and the data in clear text: only for a collector
				// on this host (tests).
				bad("destinations[%d].url: %q is not encrypted: use wss:// (ws:// only to 127.0.0.1, ::1 or localhost)", i, d.URL)
			}
			if d.Sensor == "" {
				bad("destinations[%d].sensor: set the sensor's session name", i)
			}
			if d.APIKeyFile == "" {
				bad("destinations[%d].api_key_file: set the file holding the API key (mode 0600)", i)
			}
		case "nmsg-udp":
			if d.Addr == "" {
				bad("destinations[%d].addr: set host:port of the NMSG receiver", i)
			}
		default:
			bad("destinations[%d].type: %q is not \"sielink\" or \"nmsg-udp\"", i, d.Type)
		}
	}
	if c.Metrics == "" {
		c.Metrics = "127.0.0.1:9410"
	}
	// The metrics reveal the destinations, their errors and the spool's state, with no
	// authentication: they are for the status page on this host.
	if host, port, err := net.SplitHostPort(c.Metrics); err != nil {
		bad("metrics: want host:port on loopback, e.g. 127.0.0.1:9410, got %q", c.Metrics)
	} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		bad("metrics: bad port in %q, want e.g. 127.0.0.1:9410", c.Metrics)
	} else if !isLoopback(host) {
		bad("metrics: %q is not a loopback address: listen on 127.0.0.1, ::1 or localhost (the metrics are unauthenticated)", c.Metrics)
	}
	if c.RetryMax.Duration == 0 {
		c.RetryMax.Duration = 30 * time.Second
	}
	if c.ShutdownGrace.Duration == 0 {
		c.ShutdownGrace.Duration = 20 * time.Second
	}
	c.dirWait = DirWait
	if c.RetryMax.Duration < 0 {
		bad("retry_max: want a positive duration like \"30s\", got %v", c.RetryMax)
	}
	if c.ShutdownGrace.Duration < 0 {
		bad("shutdown_grace: want a positive duration like \"20s\", got %v", c.ShutdownGrace)
	}
	if c.ReportInterval.Duration == 0 {
		c.ReportInterval.Duration = DefaultReportInterval
	}
	if c.ReportInterval.Duration < MinReportInterval {
		bad("report_interval: want a duration of at least %v like \"60s\", got %v", MinReportInterval, c.ReportInterval)
	}
	if c.SensordHealth == "" {
		c.SensordHealth = DefaultSensordHealth
	}
	return errs
}

// CheckAll parses and checks a config as ParseConfig does, returning each problem on its own, every
// message starting with the key at fault. A file that does not decode (bad JSON, an unknown key, a
// value of the wrong type) gets one error: the decoder stops there.
func CheckAll(data []byte) []error {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return []error{err}
	}
	if _, err := dec.Token(); err != io.EOF {
		return []error{fmt.Errorf("data after the configuration's closing brace (offset %d): remove it, one JSON object per file", dec.InputOffset())}
	}
	if err := checkDuplicateKeys(data); err != nil {
		return []error{err}
	}
	return c.checkAll()
}

// DirWait is how long New waits for a missing spool directory to appear: at boot, uplinkd may
// start before sensord has created its spool.
const DirWait = 30 * time.Second

// CheckDirs refuses spool directories that do not exist. The spool would create them, so a
// mistyped path would leave uplinkd watching an empty directory while the sensor's data piles up
// elsewhere. It runs after the command line's overrides, when the final paths are known. A
// missing directory is waited for up to wait (sensord creates it when it starts), with one log
// line, then refused.
func (c *Config) CheckDirs(wait time.Duration, logf func(string, ...any)) error {
	deadline := time.Now().Add(wait)
	logged := false
	for {
		err := c.checkDirs()
		if !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			return err
		}
		if !logged {
			logf("uplinkd: %v; waiting up to %v for it", err, wait)
			logged = true
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dirError is a spool directory check's verdict, naming the key.
type dirError struct {
	msg string
	err error
}

func (e *dirError) Error() string { return e.msg }
func (e *dirError) Unwrap() error { return e.err }

func (c *Config) checkDirs() error {
	for _, d := range []struct{ key, flag, dir, who string }{
		{"spool.dir", "-spool", c.Spool.Dir, "sensord's -spool creates it at start-up"},
		{"spool.disk_dir", "-spool-disk", c.Spool.DiskDir, "sensord's -spool-disk creates it at start-up"},
	} {
		if d.dir == "" {
			continue
		}
		fi, err := os.Stat(d.dir)
		if errors.Is(err, os.ErrNotExist) {
			return &dirError{fmt.Sprintf("%s (%s): %s does not exist: check the path, it must be the directory sensord spools to (%s)", d.key, d.flag, d.dir, d.who), err}
		}
		if err != nil {
			return fmt.Errorf("%s (%s): %v", d.key, d.flag, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s (%s): %s is not a directory", d.key, d.flag, d.dir)
		}
	}
	return nil
}

// isLoopback accepts loopback address literals and the name localhost, which resolves only to
// them (RFC 6761).
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// checkDuplicateKeys walks data, a valid JSON document, and names the first key that appears
// twice in one object.
func checkDuplicateKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	var walk func(path string) error
	walk = func(path string) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return err
				}
				key := k.(string)
				p := key
				if path != "" {
					p = path + "." + key
				}
				if seen[key] {
					return fmt.Errorf("%s: key %q appears twice in one object: keep one", p, key)
				}
				seen[key] = true
				if err := walk(p); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		case json.Delim('['):
			for i := 0; dec.More(); i++ {
				if err := walk(fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		}
		return nil
	}
	return walk("")
}

// Package boxconfig is the box configuration an operator writes, dnssensor.json: one file with a
// section per daemon ("sensor": sensord's -config object, "uplink": uplinkd's -config file,
// "network": netconfd's section, "update": updated's). Each section is judged by its owner's own
// rules (sensor/sensorconfig, uplink/uplinkconfig, appliance/config, appliance/update/updateconfig), every wrong key reported on its own,
// and only a configuration without any is applied: split into the daemons' files on /perm, each
// replaced atomically, the box file itself last.
package boxconfig

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/sie-europe/dnssensor/appliance/config"
	"github.com/sie-europe/dnssensor/appliance/update/updateconfig"
	"github.com/sie-europe/dnssensor/sensor/sensorconfig"
	"github.com/sie-europe/dnssensor/uplink/uplinkconfig"
)

// SensordArgs is sensord's command line in the images (images/*.json) without -config: the
// sensor section is judged together with it, and may not set what it sets.
var SensordArgs = []string{"-i", "tap", "-spool", "/run/spool", "-spool-disk", "/perm/spool", "-z", "-health", "/run/sensord/health.sock"}

// Box is the box configuration. A missing section leaves its daemon unconfigured.
type Box struct {
	Sensor  map[string]any `json:"sensor,omitempty"`
	Uplink  map[string]any `json:"uplink,omitempty"`
	Network map[string]any `json:"network,omitempty"`
	Update  map[string]any `json:"update,omitempty"`
}

// FieldError is one wrong key, named from the top of the box file ("sensor.resolver",
// "uplink.destinations[0].url", "network.static.gateway"); Key is "" for the file as a whole.
type FieldError struct {
	Key string `json:"key"`
	Msg string `json:"message"`
}

func (e FieldError) Error() string {
	if e.Key == "" {
		return e.Msg
	}
	return e.Key + ": " + e.Msg
}

// Errors is a refused configuration: every problem found.
type Errors []FieldError

func (es Errors) Error() string {
	var b strings.Builder
	for i, e := range es {
		if i > 0 {
			b.WriteString("\n")
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Layout is where the box keeps its configuration: Perm is /perm on the box.
type Layout struct{ Perm string }

func (l Layout) BoxFile() string     { return filepath.Join(l.Perm, "dnssensor.json") }
func (l Layout) PrevFile() string    { return filepath.Join(l.Perm, "dnssensor.json.prev") }
func (l Layout) SensorFile() string  { return filepath.Join(l.Perm, "sensord", "config.json") }
func (l Layout) UplinkFile() string  { return filepath.Join(l.Perm, "uplinkd", "config.json") }
func (l Layout) NetworkFile() string { return filepath.Join(l.Perm, "netconfd", "config.json") }
func (l Layout) UpdateFile() string  { return filepath.Join(l.Perm, "updated", "config.json") }

// APIKeyFile is where the API key of the uplink destination named name is kept (mode 0600).
func (l Layout) APIKeyFile(name string) string {
	return filepath.Join(l.Perm, "uplinkd", "api-key-"+name)
}

// Daemon files by daemon, in the order they are written.
func (l Layout) files() [][2]string {
	return [][2]string{{"sensord", l.SensorFile()}, {"uplinkd", l.UplinkFile()}, {"netconfd", l.NetworkFile()}, {"updated", l.UpdateFile()}}
}

// Parse decodes a box file; only the four sections are allowed, each an object.
func Parse(data []byte) (*Box, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil || raw == nil {
		if err == nil {
			err = errors.New("null")
		}
		return nil, Errors{{Msg: fmt.Sprintf("not a JSON object with sections sensor, uplink, network and update: %v", err)}}
	}
	var b Box
	var errs Errors
	for _, k := range sortedKeys(raw) {
		var dst *map[string]any
		switch k {
		case "sensor":
			dst = &b.Sensor
		case "uplink":
			dst = &b.Uplink
		case "network":
			dst = &b.Network
		case "update":
			dst = &b.Update
		default:
			errs = append(errs, FieldError{k, "unknown section; the sections are sensor, uplink, network and update"})
			continue
		}
		if err := json.Unmarshal(raw[k], dst); err != nil || *dst == nil {
			errs = append(errs, FieldError{k, "must be a JSON object"})
		}
	}
	if errs != nil {
		return nil, errs
	}
	return &b, nil
}

// Files are a checked box split into what each daemon reads.
type Files struct {
	Box []byte // the box file as stored: API keys replaced by their files
	// Daemon's config file contents by daemon name; nil: the section is absent, no file.
	Daemon map[string][]byte
	// Secrets are API key files to write (path → key).
	Secrets map[string][]byte
}

var destName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Check judges every section of b by its owner's rules and splits it into the daemons' files.
// An uplink destination may carry its API key inline ("api_key"): it goes to its own file under
// l, and the stored box names the file instead. A sielink destination without a key keeps the
// one already on file (the page never shows a key back, so "unchanged" is an empty field).
func Check(b *Box, l Layout) (*Files, Errors) {
	var errs Errors
	f := &Files{Daemon: map[string][]byte{}, Secrets: map[string][]byte{}}
	stored := Box{Sensor: b.Sensor, Network: b.Network, Update: b.Update}
	if b.Sensor != nil {
		data, _ := json.Marshal(b.Sensor)
		for _, e := range sensorconfig.Check(data, SensordArgs) {
			errs = append(errs, FieldError{join("sensor", e.Key), e.Msg})
		}
		f.Daemon["sensord"] = indent(data)
	}
	if b.Uplink != nil {
		up, secrets, uerrs := uplinkSection(b.Uplink, l)
		errs = append(errs, uerrs...)
		stored.Uplink = up
		data, _ := json.Marshal(up)
		for _, e := range uplinkconfig.Check(data) {
			errs = append(errs, FieldError{join("uplink", e.Key), e.Msg})
		}
		f.Daemon["uplinkd"] = indent(data)
		f.Secrets = secrets
	}
	if b.Network != nil {
		data, _ := json.Marshal(map[string]any{"network": b.Network})
		if _, err := config.Parse(data); err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				k, msg, ok := strings.Cut(line, ": ")
				if !ok || !strings.HasPrefix(k, "network") || strings.Contains(k, " ") {
					k, msg = "network", line
				}
				errs = append(errs, FieldError{k, msg})
			}
		}
		f.Daemon["netconfd"] = indent(data)
	}
	if b.Update != nil {
		data, _ := json.Marshal(b.Update)
		if _, uerrs := updateconfig.Parse(data); uerrs != nil {
			for _, e := range uerrs {
				errs = append(errs, FieldError{join("update", e.Key), e.Msg})
			}
		}
		f.Daemon["updated"] = indent(data)
	}
	if errs != nil {
		return nil, errs
	}
	box, _ := json.Marshal(stored)
	f.Box = indent(box)
	return f, nil
}

// uplinkSection copies the uplink section with the box's defaults (the spool directories sensord
// uses in the images) and inline API keys moved to their files.
func uplinkSection(in map[string]any, l Layout) (map[string]any, map[string][]byte, Errors) {
	var errs Errors
	secrets := map[string][]byte{}
	out := map[string]any{}
	for k, v := range in {
		out[k] = v
	}
	if _, ok := out["spool"]; !ok {
		out["spool"] = map[string]any{"dir": "/run/spool", "disk_dir": "/perm/spool"}
	}
	dests, _ := in["destinations"].([]any)
	// The key files other destinations name: a typed key must not replace one of them.
	named := map[string]int{}
	for i, d := range dests {
		if m, ok := d.(map[string]any); ok {
			if p, _ := m["api_key_file"].(string); p != "" {
				named[filepath.Clean(p)] = i
			}
		}
	}
	var outDests []any
	for i, d := range dests {
		m, ok := d.(map[string]any)
		if !ok {
			outDests = append(outDests, d)
			continue
		}
		c := map[string]any{}
		for k, v := range m {
			c[k] = v
		}
		outDests = append(outDests, c)
		key, hasKey := c["api_key"]
		delete(c, "api_key")
		if c["type"] != "sielink" {
			if hasKey {
				errs = append(errs, FieldError{fmt.Sprintf("uplink.destinations[%d].api_key", i), "only a sielink destination has an API key"})
			}
			continue
		}
		name, _ := c["name"].(string)
		if name == "" {
			name = fmt.Sprintf("sielink%d", i) // uplinkd's default name
		}
		if !destName.MatchString(name) {
			errs = append(errs, FieldError{fmt.Sprintf("uplink.destinations[%d].name", i), fmt.Sprintf("%q: use letters, digits, '.', '_' or '-' (it names the API key's file)", name)})
			continue
		}
		path := l.APIKeyFile(name)
		if hasKey {
			c["api_key_file"] = path // a bad key is reported as such, not as a missing file too
			s, _ := key.(string)
			s = strings.TrimSpace(s)
			if s == "" || strings.ContainsAny(s, " \t\r\n") {
				errs = append(errs, FieldError{fmt.Sprintf("uplink.destinations[%d].api_key", i), "give the API key SIE Europe issued, one word without spaces"})
				continue
			}
			if j, ok := named[path]; ok && j != i {
				errs = append(errs, FieldError{fmt.Sprintf("uplink.destinations[%d].api_key", i), fmt.Sprintf("its file %s holds the key of destinations[%d]: give this destination another name", path, j)})
				continue
			}
			secrets[path] = []byte(s + "\n")
		} else if _, set := c["api_key_file"]; !set {
			if _, err := os.Stat(path); err == nil {
				c["api_key_file"] = path
			} else {
				errs = append(errs, FieldError{fmt.Sprintf("uplink.destinations[%d].api_key", i), "set the API key SIE Europe issued for this sensor"})
			}
		}
	}
	if dests != nil {
		out["destinations"] = outDests
	}
	return out, secrets, errs
}

// Fingerprint is how the page shows an API key: enough to tell two keys apart, useless to a reader.
func Fingerprint(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return ""
	}
	sum := sha256.Sum256(bytes.TrimSpace(b))
	return "sha256:" + hex.EncodeToString(sum[:6])
}

func join(section, key string) string {
	if key == "" {
		return section
	}
	return section + "." + key
}

func indent(b []byte) []byte {
	var buf bytes.Buffer
	json.Indent(&buf, b, "", "  ")
	buf.WriteByte('\n')
	return buf.Bytes()
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// Load reads the box configuration in force: the box file, or, on a box configured before it
// existed, the daemons' files put together. found is false when there is neither.
func Load(l Layout) (b *Box, found bool, err error) {
	data, err := os.ReadFile(l.BoxFile())
	if err == nil {
		b, err := Parse(data)
		return b, true, err
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	b = &Box{}
	for _, f := range []struct {
		path string
		dst  *map[string]any
		sub  string
	}{{l.SensorFile(), &b.Sensor, ""}, {l.UplinkFile(), &b.Uplink, ""}, {l.NetworkFile(), &b.Network, "network"}, {l.UpdateFile(), &b.Update, ""}} {
		data, err := os.ReadFile(f.path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, false, err
		}
		found = true
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			return nil, true, fmt.Errorf("%s: %v", f.path, err)
		}
		if f.sub != "" {
			m, _ = m[f.sub].(map[string]any)
			if m == nil {
				m = map[string]any{}
			}
		}
		*f.dst = m
	}
	return b, found, nil
}

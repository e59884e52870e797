package boxconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// everyFieldWrong has one mistake in every key a box file can set through the page.
const everyFieldWrong = `{
  "sensor": {"resolver": "192.0.2.1,not-an-ip", "rd": "2", "zero-resolver": "maybe", "qname-exclude": "a..b", "spool": "/x"},
  "uplink": {"metrics": "0.0.0.0:1", "destinations": [{"type": "sielink", "url": "https://a", "api_key": "two words"}]},
  "network": {"static": {"address": "198.51.100.10", "gateway": "bad", "dns": ["x"]}},
  "update": {"repository": "tuf.example.net", "interval": "often", "window": "2-5"},
  "extra": {}
}`

func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			b, _ := os.ReadFile(p)
			m[p] = string(b)
		}
		return nil
	})
	return m
}

func TestEveryFieldWrong(t *testing.T) {
	l := Layout{Perm: t.TempDir()}
	good := `{"sensor": {"resolver": "192.0.2.53"}, "uplink": {"destinations": [{"type": "sielink", "url": "wss://sie.example.net", "sensor": "s1", "api_key": "k1"}]}, "network": {}}`
	if _, err := CheckAndApply(l, []byte(good)); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, l.Perm)
	// The section errors are found in one pass (the top-level "extra" stops parsing first).
	_, err := CheckAndApply(l, []byte(strings.Replace(everyFieldWrong, `,
  "extra": {}`, "", 1)))
	errs, ok := err.(Errors)
	if !ok {
		t.Fatalf("got %v, want Errors", err)
	}
	want := []string{"sensor.spool", "sensor.zero-resolver", "sensor.resolver", "sensor.rd", "sensor.qname-exclude",
		"uplink.destinations[0].api_key", "uplink.destinations[0].url", "uplink.destinations[0].sensor",
		"uplink.metrics", "network.static.address", "network.static.gateway", "network.static.dns[0]",
		"update.repository", "update.interval", "update.window"}
	count := map[string]int{}
	for _, e := range errs {
		count[e.Key]++
		if e.Msg == "" {
			t.Errorf("%s: empty message", e.Key)
		}
	}
	for _, k := range want {
		if count[k] != 1 {
			t.Errorf("%s: %d messages, want 1", k, count[k])
		}
	}
	if len(errs) != len(want) {
		t.Errorf("%d messages, want %d:\n%v", len(errs), len(want), errs)
	}
	if after := snapshot(t, l.Perm); !equal(before, after) {
		t.Errorf("files changed by a refused configuration:\nbefore %q\nafter  %q", before, after)
	}
	if _, err := CheckAndApply(l, []byte(everyFieldWrong)); err == nil || !strings.Contains(err.Error(), "extra: unknown section") {
		t.Errorf("unknown section: %v", err)
	}
}

func equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestApplySplits: a good box file becomes the daemons' files and the API key's (0600), the stored
// box names the key's file instead of holding the key, a second change keeps the key when none is
// given, reports only the daemons it affects and keeps the previous box file.
func TestApplySplits(t *testing.T) {
	l := Layout{Perm: t.TempDir()}
	good := `{"sensor": {"resolver": "192.0.2.53", "rd": "0"}, "uplink": {"destinations": [{"type": "sielink", "url": "wss://sie.example.net", "sensor": "s1", "api_key": "secret-key-1"}]}, "network": {"static": {"dns": ["198.51.100.53"]}}, "update": {"repository": "https://tuf.example.net/sensor", "window": "02:00-05:00"}}`
	changed, err := CheckAndApply(l, []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(changed, ",") != "uplinkd,sensord,netconfd,updated" {
		t.Errorf("changed %q", changed)
	}
	if upd, _ := os.ReadFile(l.UpdateFile()); !bytes.Contains(upd, []byte(`"repository": "https://tuf.example.net/sensor"`)) || !bytes.Contains(upd, []byte(`"window": "02:00-05:00"`)) {
		t.Errorf("updated's file:\n%s", upd)
	}
	box, _ := os.ReadFile(l.BoxFile())
	if bytes.Contains(box, []byte("secret-key-1")) {
		t.Errorf("the box file holds the API key:\n%s", box)
	}
	key := l.APIKeyFile("sielink0")
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("API key file: %v %v", fi, err)
	}
	up, _ := os.ReadFile(l.UplinkFile())
	if !bytes.Contains(up, []byte(key)) || !bytes.Contains(up, []byte("/run/spool")) || bytes.Contains(up, []byte("secret-key-1")) {
		t.Errorf("uplinkd's file:\n%s", up)
	}
	sensor, _ := os.ReadFile(l.SensorFile())
	if !bytes.Contains(sensor, []byte(`"resolver": "192.0.2.53"`)) {
		t.Errorf("sensord's file:\n%s", sensor)
	}
	// The page sends no key when the operator leaves the field empty: the key on file stays.
	changed, err = CheckAndApply(l, []byte(strings.Replace(strings.Replace(good, `, "api_key": "secret-key-1"`, "", 1), "192.0.2.53", "192.0.2.54", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(changed, ",") != "sensord" {
		t.Errorf("changed %q, want sensord only", changed)
	}
	if prev, _ := os.ReadFile(l.PrevFile()); !bytes.Equal(prev, box) {
		t.Errorf("previous box file not kept")
	}
	if Fingerprint(key) == "" {
		t.Errorf("no fingerprint")
	}
	// An interrupted Apply (a daemon's file lost) is finished from the box file.
	os.Remove(l.SensorFile())
	if changed, err := Reconcile(l); err != nil || strings.Join(changed, ",") != "sensord" {
		t.Errorf("Reconcile: %q %v", changed, err)
	}
}

// TestSensordArgsMatchImages: the sensor section is judged with sensord's command line in the
// images; a flag added there must be added to SensordArgs, or the page would accept a key the
// command line silently overrides.
func TestSensordArgsMatchImages(t *testing.T) {
	imgs, _ := filepath.Glob("../../images/*.json")
	if len(imgs) == 0 {
		t.Fatal("no images/*.json")
	}
	want := map[string]bool{}
	for _, a := range SensordArgs {
		if strings.HasPrefix(a, "-") { // a flag; -z has no value
			want[a] = true
		}
	}
	for _, img := range imgs {
		data, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		var cfg struct {
			Programs []struct {
				Package string   `json:"package"`
				Flags   []string `json:"flags"`
			} `json:"programs"`
		}
		if err := json.Unmarshal(data, &cfg); err != nil {
			t.Fatalf("%s: %v", img, err)
		}
		for _, p := range cfg.Programs {
			if !strings.HasSuffix(p.Package, "/sensord") {
				continue
			}
			for _, f := range p.Flags {
				if strings.HasPrefix(f, "-") && f != "-config" && !want[f] {
					t.Errorf("%s: sensord's %s is not in boxconfig.SensordArgs", img, f)
				}
			}
		}
	}
}

// TestUpdatedMatchesImages: every image runs updated on the box configuration's update file and
// its own image's releases (a box following another image's releases would flash the wrong
// hardware's root).
func TestUpdatedMatchesImages(t *testing.T) {
	imgs, _ := filepath.Glob("../../images/*.json")
	if len(imgs) == 0 {
		t.Fatal("no images/*.json")
	}
	for _, img := range imgs {
		data, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		var cfg struct {
			Name     string `json:"name"`
			Programs []struct {
				Package string   `json:"package"`
				Flags   []string `json:"flags"`
			} `json:"programs"`
		}
		if err := json.Unmarshal(data, &cfg); err != nil {
			t.Fatalf("%s: %v", img, err)
		}
		found := false
		for _, p := range cfg.Programs {
			if !strings.HasSuffix(p.Package, "/appliance/cmd/updated") {
				continue
			}
			found = true
			flags := map[string]string{}
			for i := 0; i+1 < len(p.Flags); i += 2 {
				flags[p.Flags[i]] = p.Flags[i+1]
			}
			if got, want := flags["-config"], (Layout{Perm: "/perm"}).UpdateFile(); got != want {
				t.Errorf("%s: updated -config %q, want %q", img, got, want)
			}
			if flags["-image"] != cfg.Name {
				t.Errorf("%s: updated -image %q, want the image's own name %q", img, flags["-image"], cfg.Name)
			}
			for _, f := range []string{"-repo", "-interval", "-window"} {
				if _, ok := flags[f]; ok {
					t.Errorf("%s: updated %s: that is the box configuration's (update section)", img, f)
				}
			}
		}
		if !found {
			t.Errorf("%s: no updated", img)
		}
	}
}

// TestKeyNeverAnothers: a key typed for one destination is refused when its file is the one
// another destination reads its key from (a renamed destination keeps its old file): writing it
// would replace the other's key.
func TestKeyNeverAnothers(t *testing.T) {
	l := Layout{Perm: t.TempDir()}
	first := `{"uplink": {"destinations": [{"type": "sielink", "url": "wss://a.example.net", "sensor": "s1", "api_key": "key-a"}]}}`
	if _, err := CheckAndApply(l, []byte(first)); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, l.Perm)
	// The first destination renamed "a", still reading api-key-sielink0; a new one would take
	// that name's file.
	both := `{"uplink": {"destinations": [
		{"type": "sielink", "name": "a", "url": "wss://a.example.net", "sensor": "s1", "api_key_file": "` + l.APIKeyFile("sielink0") + `"},
		{"type": "sielink", "name": "sielink0", "url": "wss://b.example.net", "sensor": "s1", "api_key": "key-b"}]}}`
	_, err := CheckAndApply(l, []byte(both))
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 1 || errs[0].Key != "uplink.destinations[1].api_key" {
		t.Fatalf("got %v, want one error for uplink.destinations[1].api_key", err)
	}
	if after := snapshot(t, l.Perm); !reflect.DeepEqual(before, after) {
		t.Error("a refused box changed /perm")
	}
}

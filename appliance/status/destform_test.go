package status

import (
	"encoding/json"
	"html"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/sie-europe/dnssensor/appliance/boxconfig"
)

// destsBox has two sielink destinations without names (their keys in api-key-sielink0 and
// api-key-sielink1) and an NMSG one.
const destsBox = `{"sensor": {"resolver": "192.0.2.53", "rd": "0"}, "uplink": {"retry_max": "5s", "destinations": [
	{"type": "sielink", "url": "wss://sie.example.net", "sensor": "s1", "api_key": "key-of-sie"},
	{"type": "sielink", "url": "wss://soc.example.net:8443", "sensor": "s1-soc", "channel": 203, "api_key": "key-of-soc"},
	{"type": "nmsg-udp", "addr": "192.0.2.9:5353", "mtu": 1280, "zlib": true, "rate": 100}]}, "network": {}}`

func destsFixture(t *testing.T) (*fixture, *httptest.Server, *restarts) {
	fx := newFixture(t)
	rs := &restarts{}
	l := boxconfig.Layout{Perm: t.TempDir()}
	if _, err := boxconfig.CheckAndApply(l, []byte(destsBox)); err != nil {
		t.Fatal(err)
	}
	fx.srv.Config = &Config{Layout: l, Restart: rs.restart}
	ts := httptest.NewServer(fx.srv.Handler())
	t.Cleanup(ts.Close)
	return fx, ts, rs
}

var (
	configFormRe = regexp.MustCompile(`(?s)<form method="post" action="/config" id="config">(.*?)</form>`)
	inputRe      = regexp.MustCompile(`<input ([^>]*)>`)
	selectRe     = regexp.MustCompile(`(?s)<select [^>]*name="([^"]*)">(.*?)</select>`)
	optionRe     = regexp.MustCompile(`<option value="([^"]*)"( selected)?>`)
	attrRe       = regexp.MustCompile(`(\w+)(?:="([^"]*)")?`)
)

// browserForm is what a browser submits for the configuration form as the page shows it: every
// input (password fields empty), checked boxes only, each select's chosen option.
func browserForm(t *testing.T, page string) url.Values {
	t.Helper()
	m := configFormRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no configuration form on the page:\n%s", page)
	}
	form := url.Values{}
	for _, in := range inputRe.FindAllStringSubmatch(m[1], -1) {
		a := map[string]string{}
		for _, kv := range attrRe.FindAllStringSubmatch(in[1], -1) {
			a[kv[1]] = html.UnescapeString(kv[2])
		}
		if _, checked := a["checked"]; a["name"] == "" || a["type"] == "checkbox" && !checked {
			continue
		}
		form.Add(a["name"], a["value"])
	}
	for _, sel := range selectRe.FindAllStringSubmatch(m[1], -1) {
		opts := optionRe.FindAllStringSubmatch(sel[2], -1)
		if len(opts) == 0 {
			continue
		}
		v := opts[0][1]
		for _, o := range opts {
			if o[2] != "" {
				v = o[1]
			}
		}
		form.Add(html.UnescapeString(sel[1]), html.UnescapeString(v))
	}
	return form
}

func uplinkDests(t *testing.T, l boxconfig.Layout) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(l.UplinkFile())
	if err != nil {
		t.Fatal(err)
	}
	var up struct {
		Destinations []map[string]any `json:"destinations"`
	}
	if err := json.Unmarshal(data, &up); err != nil {
		t.Fatal(err)
	}
	return up.Destinations
}

func keyOf(t *testing.T, d map[string]any) string {
	t.Helper()
	p, _ := d["api_key_file"].(string)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("destination %v: its key: %v", d, err)
	}
	return strings.TrimSpace(string(b))
}

func formOf(t *testing.T, ts *httptest.Server) url.Values {
	t.Helper()
	code, page := get(t, ts.URL+"/config", testPassword, "")
	if code != http.StatusOK {
		t.Fatalf("GET /config: %d", code)
	}
	return browserForm(t, page)
}

func saveForm(t *testing.T, ts *httptest.Server, form url.Values) string {
	t.Helper()
	code, body := postForm(t, ts.URL+"/config", form, "")
	if code != http.StatusOK || !strings.Contains(body, `id="saved"`) {
		t.Fatalf("POST /config: %d\n%s", code, body)
	}
	return body
}

// TestConfigEveryDestination: the form shows every uplink destination, sielink and NMSG, with its
// fields, and the page round-trips: saved unchanged it changes nothing. An edit of the second
// destination changes only it, each API key stays its own destination's (shown only by
// fingerprint), a removal keeps the others' names and keys, and a new row adds one.
func TestConfigEveryDestination(t *testing.T) {
	fx, ts, rs := destsFixture(t)
	l := fx.srv.Config.Layout
	before := snapshotDir(t, l.Perm)
	orig := uplinkDests(t, l)

	_, page := get(t, ts.URL+"/config", testPassword, "")
	form := browserForm(t, page)
	for _, k := range []string{
		"uplink.destinations[0].url", "uplink.destinations[0].sensor", "uplink.destinations[0].api_key", "uplink.destinations[0].was",
		"uplink.destinations[1].url", "uplink.destinations[1].sensor", "uplink.destinations[1].channel", "uplink.destinations[1].api_key",
		"uplink.destinations[2].addr", "uplink.destinations[2].mtu", "uplink.destinations[2].zlib", "uplink.destinations[2].rate",
		"uplink.destinations[3].type", "uplink.destinations[3].url", "uplink.destinations[3].addr",
	} {
		if _, ok := form[k]; !ok {
			t.Errorf("the form has no field %s", k)
		}
	}
	if t.Failed() {
		t.Fatalf("form: %v", form)
	}
	if got := form.Get("uplink.destinations[1].url"); got != "wss://soc.example.net:8443" {
		t.Errorf("destination 1's URL on the form: %q", got)
	}
	if got := form.Get("uplink.destinations[2].addr"); got != "192.0.2.9:5353" {
		t.Errorf("destination 2's receiver on the form: %q", got)
	}
	fp0, fp1 := boxconfig.Fingerprint(l.APIKeyFile("sielink0")), boxconfig.Fingerprint(l.APIKeyFile("sielink1"))
	if fp0 == fp1 || !strings.Contains(page, "set ("+fp0+")") || !strings.Contains(page, "set ("+fp1+")") {
		t.Errorf("the page does not show each destination's key fingerprint (%s, %s)", fp0, fp1)
	}
	if strings.Contains(page, "key-of-") {
		t.Error("an API key is shown on the page")
	}

	// Saved as shown: nothing changes, nothing restarts.
	body := saveForm(t, ts, form)
	if !strings.Contains(body, "nothing changed") || rs.list() != "" {
		t.Errorf("the form saved unchanged: restarted %q\n%s", rs.list(), body)
	}
	if after := snapshotDir(t, l.Perm); !sameFiles(before, after) {
		t.Errorf("the form saved unchanged changed /perm:\nbefore %v\nafter  %v", before, after)
	}

	// The second destination edited, its key replaced: only it changes.
	form = formOf(t, ts)
	form.Set("uplink.destinations[1].url", "wss://soc2.example.net")
	form.Set("uplink.destinations[1].api_key", "key-of-soc-2")
	saveForm(t, ts, form)
	got := uplinkDests(t, l)
	if len(got) != 3 || !reflect.DeepEqual(got[0], orig[0]) || !reflect.DeepEqual(got[2], orig[2]) {
		t.Errorf("editing destination 1 changed another:\nbefore %v\nafter  %v", orig, got)
	}
	want1 := map[string]any{}
	for k, v := range orig[1] {
		want1[k] = v
	}
	want1["url"] = "wss://soc2.example.net"
	if !reflect.DeepEqual(got[1], want1) {
		t.Errorf("destination 1: %v, want %v", got[1], want1)
	}
	if k0, k1 := keyOf(t, got[0]), keyOf(t, got[1]); k0 != "key-of-sie" || k1 != "key-of-soc-2" {
		t.Errorf("keys after the edit: %q, %q", k0, k1)
	}

	// The first removed: the second keeps its name and its own key, the NMSG one its name.
	form = formOf(t, ts)
	form.Set("uplink.destinations[0].remove", "true")
	body = saveForm(t, ts, form)
	got = uplinkDests(t, l)
	if len(got) != 2 || got[0]["url"] != "wss://soc2.example.net" || got[0]["name"] != "sielink1" || got[1]["addr"] != "192.0.2.9:5353" || got[1]["name"] != "nmsg-udp2" {
		t.Fatalf("after removing destination 0: %v", got)
	}
	if k := keyOf(t, got[0]); k != "key-of-soc-2" {
		t.Errorf("the remaining sielink destination's key is %q, want its own", k)
	}
	if fp := boxconfig.Fingerprint(got[0]["api_key_file"].(string)); !strings.Contains(body, "Uplink destination 0: sielink1") || !strings.Contains(body, "set ("+fp+")") {
		t.Errorf("the page after the removal does not show the destination with its own key (%s)", fp)
	}

	// A new sielink row without a key is refused, even though a removed destination's key file
	// (api-key-sielink0) is still on /perm under the name it is given.
	form = formOf(t, ts)
	form.Set("uplink.destinations[2].type", "sielink")
	form.Set("uplink.destinations[2].name", "sielink0")
	form.Set("uplink.destinations[2].url", "wss://new.example.net")
	form.Set("uplink.destinations[2].sensor", "s1-new")
	code, out := postForm(t, ts.URL+"/config", form, "application/json")
	if code != http.StatusUnprocessableEntity || !strings.Contains(out, `"key":"uplink.destinations[2].api_key"`) {
		t.Errorf("a new destination without its key: %d %s", code, out)
	}
	// With its key and no name it is added, under uplinkd's default name.
	form.Set("uplink.destinations[2].name", "")
	form.Set("uplink.destinations[2].api_key", "key-of-new")
	saveForm(t, ts, form)
	got = uplinkDests(t, l)
	if len(got) != 3 || got[2]["type"] != "sielink" || got[2]["url"] != "wss://new.example.net" || keyOf(t, got[2]) != "key-of-new" || keyOf(t, got[0]) != "key-of-soc-2" {
		t.Errorf("after adding a destination: %v", got)
	}
	if got := rs.list(); got != "uplinkd,uplinkd,uplinkd" {
		t.Errorf("restarted %q, want uplinkd for each of the three changes", got)
	}
}

// TestConfigDestinationErrors: a wrong field of any destination is named by the destination's row
// on the form, also after a removal before it; nothing is written. A form made from another
// configuration than the one in force is refused whole.
func TestConfigDestinationErrors(t *testing.T) {
	fx, ts, rs := destsFixture(t)
	l := fx.srv.Config.Layout
	before := snapshotDir(t, l.Perm)
	form := formOf(t, ts)
	form.Set("uplink.destinations[0].remove", "true")
	form.Set("uplink.destinations[1].url", "https://soc.example.net")
	form.Set("uplink.destinations[1].channel", "two hundred")
	form.Set("uplink.destinations[2].mtu", "big")
	form.Set("uplink.destinations[2].url", "wss://not-for-nmsg.example.net")
	form.Set("uplink.destinations[3].type", "nmsg-udp")
	form.Set("uplink.destinations[3].rate", "10")
	code, body := postForm(t, ts.URL+"/config", form, "application/json")
	if code != http.StatusUnprocessableEntity {
		t.Fatalf("POST: %d, want 422\n%s", code, body)
	}
	var doc struct {
		Errors []boxconfig.FieldError `json:"errors"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	per := map[string]int{}
	for _, e := range doc.Errors {
		per[e.Key]++
	}
	want := []string{"uplink.destinations[1].url", "uplink.destinations[1].channel", "uplink.destinations[2].mtu",
		"uplink.destinations[2].url", "uplink.destinations[3].addr"}
	for _, k := range want {
		if per[k] != 1 {
			t.Errorf("%s: %d messages, want 1", k, per[k])
		}
	}
	if len(doc.Errors) != len(want) {
		t.Errorf("%d messages, want %d: %v", len(doc.Errors), len(want), doc.Errors)
	}
	// The page shows each beside its field, the removal still ticked.
	_, page := postForm(t, ts.URL+"/config", form, "")
	fieldRe := regexp.MustCompile(`(?s)<div class="field bad"><label for="([^"]+)">.*?</div>`)
	bad := map[string]bool{}
	for _, m := range fieldRe.FindAllStringSubmatch(page, -1) {
		bad[html.UnescapeString(m[1])] = true
	}
	for _, k := range want {
		// An NMSG row has no URL field: that message is in the list above the form.
		if k == "uplink.destinations[2].url" {
			if !regexp.MustCompile(`(?s)id="errors".*uplink.destinations\[2\].url: only a sielink destination`).MatchString(page) {
				t.Errorf("%s not listed above the form", k)
			}
		} else if !bad[k] {
			t.Errorf("field %s not marked", k)
		}
	}
	if again := browserForm(t, page); again.Get("uplink.destinations[0].remove") != "true" || again.Get("uplink.destinations[2].mtu") != "big" ||
		again.Get("uplink.destinations[1].name") != "" || again.Get("uplink.destinations[3].rate") != "10" {
		t.Errorf("the refused form is not shown as posted: %v", again)
	}
	if after := snapshotDir(t, l.Perm); !sameFiles(before, after) {
		t.Error("a refused form changed /perm")
	}

	// Another configuration in force (one destination fewer): the old form is refused whole,
	// whether the destination gone was before the row edited or the last one.
	form = formOf(t, ts)
	form2 := formOf(t, ts)
	form2.Set("uplink.destinations[0].remove", "true")
	saveForm(t, ts, form2)
	mid := snapshotDir(t, l.Perm)
	form.Set("uplink.destinations[0].url", "wss://changed.example.net")
	if code, body := postForm(t, ts.URL+"/config", form, ""); code != http.StatusConflict {
		t.Errorf("a form of another configuration: %d, want 409\n%s", code, body)
	}
	if after := snapshotDir(t, l.Perm); !sameFiles(mid, after) {
		t.Error("a form of another configuration changed /perm")
	}
	form = formOf(t, ts)
	form2 = formOf(t, ts)
	form2.Set("uplink.destinations[1].remove", "true")
	saveForm(t, ts, form2)
	mid = snapshotDir(t, l.Perm)
	form.Set("uplink.destinations[0].url", "wss://changed.example.net")
	if code, body := postForm(t, ts.URL+"/config", form, ""); code != http.StatusConflict {
		t.Errorf("a form with a row of a destination since removed: %d, want 409\n%s", code, body)
	}
	if after := snapshotDir(t, l.Perm); !sameFiles(mid, after) {
		t.Error("a form with a row of a destination since removed changed /perm")
	}
	if rs.list() != "uplinkd,uplinkd" {
		t.Errorf("restarted %q", rs.list())
	}
}

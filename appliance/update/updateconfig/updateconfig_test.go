package updateconfig

import (
	"strings"
	"testing"
	"time"
)

// TestEveryKeyWrong: every key of the section wrong at once gets its own message, naming the key.
func TestEveryKeyWrong(t *testing.T) {
	_, errs := Parse([]byte(`{"repository": "ftp://x", "interval": "5s", "window": "25:00-26:00", "paused": true}`))
	want := map[string]string{"repository": "http(s)://", "interval": "shorter than 1m", "window": "HH:MM-HH:MM", "paused": "unknown key"}
	if len(errs) != len(want) {
		t.Errorf("%d messages, want %d: %v", len(errs), len(want), errs)
	}
	for _, e := range errs {
		if w, ok := want[e.Key]; !ok || !strings.Contains(e.Msg, w) {
			t.Errorf("%s: %q, want it to say %q", e.Key, e.Msg, w)
		}
	}
	for _, bad := range []string{`{}`, `{"repository": 7}`, `{"repository": "https://u:p@host/"}`, `[]`, `null`} {
		if _, errs := Parse([]byte(bad)); len(errs) == 0 {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestParse(t *testing.T) {
	c, errs := Parse([]byte(`{"repository": "https://tuf.example.net/sensor", "interval": "6h", "window": "22:00-04:00"}`))
	if errs != nil {
		t.Fatal(errs)
	}
	if c.Repository != "https://tuf.example.net/sensor" || c.Interval != 6*time.Hour || c.Window == nil || c.WindowText != "22:00-04:00" {
		t.Errorf("%+v", c)
	}
	if !c.Window.Contains(time.Date(2026, 1, 1, 1, 0, 0, 0, time.UTC)) || c.Window.Contains(time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)) {
		t.Error("window 22:00-04:00 misplaced")
	}
}

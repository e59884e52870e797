package health

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/health/healthtest"
	"github.com/sie-europe/dnssensor/internal/secretfile"
)

// TestScrubHostile: secrets written into a log line in every shape a daemon might write them are
// gone from what /log.json serves, and ordinary lines are left alone.
func TestScrubHostile(t *testing.T) {
	key := "sk-live-5f3a9c0e7d21b4a8"
	keyFile := filepath.Join(t.TempDir(), "api.key")
	os.WriteFile(keyFile, []byte(key+"\n"), 0o600)
	// Read through the one reader of secrets, as uplinkd reads its API key file.
	if _, err := secretfile.Read(keyFile); err != nil {
		t.Fatal(err)
	}
	secrets := []string{key, "hunter2x", "p@ss word", `qu"ote`, "eyJhbGciOiJIUzI1NiJ9.e30.sig", "Zm9vOmJhcg=="}
	for _, line := range []string{
		"uplinkd: sie: dial wss://sie.example/: sending key " + key + " refused",
		"uplinkd: sie: key" + key + "trailing glued",
		"connecting to wss://admin:hunter2x@collector.example:443/session failed",
		"config: api_key=hunter2x port=443",
		"config: API-KEY: hunter2x",
		`{"api_key": "hunter2x", "x": 1}`,
		`{"password":"p@ss word"}`,
		`password = 'p@ss word'`,
		`{"secret": "qu\"ote"}`,
		"request header Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig",
		"Authorization: Basic Zm9vOmJhcg==",
		"retrying with bearer eyJhbGciOiJIUzI1NiJ9.e30.sig",
		"x-api-key:hunter2x;next",
		"token=hunter2x&user=a",
		"PW=hunter2x",
	} {
		got := Scrub(line)
		for _, s := range secrets {
			if strings.Contains(got, s) {
				t.Errorf("%q\n  scrubbed to %q still holds %q", line, got, s)
			}
		}
		if !strings.Contains(got, "[redacted]") {
			t.Errorf("%q: nothing redacted: %q", line, got)
		}
	}
	for _, line := range []string{
		"sensord: 1520 frames, 12 records, 0 dropped",
		"uplinkd: sie: session up (channel 202)",
		"uplinkd: authentication failed: check the API key file",
		"collector: token bucket full",
	} {
		if got := Scrub(line); got != line {
			t.Errorf("ordinary line %q changed to %q", line, got)
		}
	}
}

// TestLogRing: lines in order, the oldest evicted and counted, a line split across writes joined,
// long lines cut (a secret straddling the cut is still scrubbed, not half kept), control
// characters neutralised, and the memory bounded.
func TestLogRing(t *testing.T) {
	key := "straddle-secret-0123456789abcdef"
	keyFile := filepath.Join(t.TempDir(), "k")
	os.WriteFile(keyFile, []byte(key), 0o600)
	secretfile.Read(keyFile)
	r := NewLogRing(4)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	r.SetClock(func() time.Time { return now })
	fmt.Fprintf(r, "one\ntwo\n")
	r.Write([]byte("thr"))
	r.Write([]byte("ee\r\n"))
	long := strings.Repeat("x", MaxLineBytes-10) + key + strings.Repeat("y", 3*MaxLineBytes)
	fmt.Fprintf(r, "%s\n", long)
	fmt.Fprintf(r, "esc \x1b[31mred\x1b[0m\tok\n")
	lines, evicted := r.Last(100)
	if evicted != 1 || len(lines) != 4 {
		t.Fatalf("evicted %d, %d lines; want 1 and 4", evicted, len(lines))
	}
	if lines[0].Text != "two" || lines[1].Text != "three" {
		t.Errorf("lines %q", lines)
	}
	if l := lines[2].Text; len(l) > MaxLineBytes+len(" [cut]") || !strings.HasSuffix(l, " [cut]") || strings.Contains(l, key[:8]) {
		t.Errorf("long line: %d octets %q", len(l), l[max(0, len(l)-60):])
	}
	if l := lines[3].Text; strings.ContainsRune(l, 0x1b) || !strings.Contains(l, "\tok") {
		t.Errorf("control characters: %q", l)
	}
	if got, _ := r.Last(2); len(got) != 2 || got[1].Text != lines[3].Text {
		t.Errorf("Last(2) = %q", got)
	}
	// A flood without newlines keeps one bounded partial line.
	for range 1000 {
		r.Write([]byte(strings.Repeat("z", 1000)))
	}
	if len(r.partial) > rawLineBytes {
		t.Errorf("partial line grew to %d octets", len(r.partial))
	}
}

// TestServeLog: /log.json serves the last n lines by the schema; a bad n is 400; a server
// without a ring serves an empty list; the client reads it.
func TestServeLog(t *testing.T) {
	ring := NewLogRing(8)
	for i := range 12 {
		fmt.Fprintf(ring, "line %d password=hunter%d\n", i, i)
	}
	c := newClock()
	sock := serve(t, &Server{Daemon: "testd", Tree: NewTree("testd", c.now), Registry: NewRegistry(), Now: c.now, Log: ring})
	code, ct, b := get(t, sock, "/log.json?n=3")
	if code != 200 || ct != "application/json" {
		t.Fatalf("/log.json: %d %s", code, ct)
	}
	healthtest.Check(t, LogSchemaJSON, b)
	var d LogDoc
	json.Unmarshal(b, &d)
	if len(d.Lines) != 3 || d.Lines[2].Text != "line 11 password=[redacted]" || d.Evicted != 4 {
		t.Errorf("document %+v", d)
	}
	if strings.Contains(string(b), "hunter") {
		t.Errorf("a password served:\n%s", b)
	}
	for _, bad := range []string{"-1", "x", "1e3"} {
		if code, _, _ := get(t, sock, "/log.json?n="+bad); code != http.StatusBadRequest {
			t.Errorf("n=%s: %d, want 400", bad, code)
		}
	}
	if code, _, b := get(t, sock, "/log.schema.json"); code != 200 || !strings.Contains(string(b), LogSchema) {
		t.Errorf("/log.schema.json: %d", code)
	}
	doc, err := GetLog(t.Context(), sock, 100)
	if err != nil || len(doc.Lines) != 8 {
		t.Errorf("GetLog: %v, %d lines", err, len(doc.Lines))
	}
	bare := serve(t, &Server{Daemon: "bared", Tree: NewTree("bared", c.now), Registry: NewRegistry(), Now: c.now})
	_, _, b = get(t, bare, "/log.json")
	healthtest.Check(t, LogSchemaJSON, b)
	if !strings.Contains(string(b), `"lines": []`) {
		t.Errorf("without a ring: %s", b)
	}
}

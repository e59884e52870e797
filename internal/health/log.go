package health

import (
	"bytes"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/sie-europe/dnssensor/internal/secretfile"
)

// LogSchema names the version of the /log.json document.
const LogSchema = "dnssensor.log/v1"

// Bounds of a LogRing: the memory it holds is at most Lines × MaxLineBytes (plus a line being
// written), 256 KiB with the defaults.
const (
	DefaultLogLines = 512
	MaxLineBytes    = 512
)

// LogDoc is the /log.json document: the daemon's most recent log lines, oldest first, scrubbed.
type LogDoc struct {
	Schema string    `json:"schema"`
	Daemon string    `json:"daemon"`
	Time   time.Time `json:"time"`
	// Evicted counts lines pushed out of the ring since the daemon started.
	Evicted uint64    `json:"evicted"`
	Lines   []LogLine `json:"lines"`
}

// LogLine is one line as it was written, scrubbed, at most MaxLineBytes.
type LogLine struct {
	Time time.Time `json:"time"`
	Text string    `json:"text"`
}

// LogRing keeps a daemon's recent log lines in memory for /log.json. It is an io.Writer: put it
// beside the daemon's stderr (io.MultiWriter) and every line written there is kept, scrubbed of
// secrets (Scrub) before it is stored. Safe for concurrent use.
type LogRing struct {
	now func() time.Time

	mu      sync.Mutex
	lines   []LogLine
	head    int // the next slot to write
	full    bool
	evicted uint64
	partial []byte // a line not yet ended by a newline
}

// NewLogRing keeps the last n lines (DefaultLogLines when n <= 0).
func NewLogRing(n int) *LogRing {
	if n <= 0 {
		n = DefaultLogLines
	}
	return &LogRing{now: time.Now, lines: make([]LogLine, n)}
}

// SetClock replaces time.Now, for tests.
func (r *LogRing) SetClock(now func() time.Time) { r.now = now }

// Write stores each complete line of p; an unfinished line waits for its end (at most
// MaxLineBytes of it is kept). It never fails: logging must not stop a daemon.
func (r *LogRing) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			r.partial = appendBounded(r.partial, p)
			break
		}
		line := appendBounded(r.partial, p[:i])
		r.partial = r.partial[:0]
		r.add(line)
		p = p[i+1:]
	}
	return n, nil
}

// rawLineBytes is how much of a line is kept before scrubbing: more than is stored, so a secret
// that begins within the stored part is still whole when the scrubber looks (secretfile
// remembers secret lines of at most secretfile.MaxKnownLen octets).
const rawLineBytes = MaxLineBytes + secretfile.MaxKnownLen

// appendBounded keeps at most rawLineBytes.
func appendBounded(dst, p []byte) []byte {
	room := rawLineBytes - len(dst)
	if room <= 0 {
		return dst
	}
	if len(p) > room {
		p = p[:room]
	}
	return append(dst, p...)
}

// printable replaces control characters (a terminal escape from a hostile peer's text) by '?';
// a tab stays.
func printable(r rune) rune {
	if r < 0x20 && r != '\t' || r == 0x7f || r >= 0x80 && r < 0xa0 {
		return '?'
	}
	return r
}

func (r *LogRing) add(line []byte) {
	text := Scrub(strings.Map(printable, string(bytes.TrimRight(line, "\r"))))
	if len(text) > MaxLineBytes {
		cut := MaxLineBytes
		for cut > 0 && !utf8.RuneStart(text[cut]) {
			cut--
		}
		text = text[:cut] + " [cut]"
	}
	if r.full {
		r.evicted++
	}
	r.lines[r.head] = LogLine{Time: r.now(), Text: text}
	r.head = (r.head + 1) % len(r.lines)
	if r.head == 0 {
		r.full = true
	}
}

// Last returns up to n of the most recent lines, oldest first, and how many were evicted.
func (r *LogRing) Last(n int) ([]LogLine, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	held := r.head
	if r.full {
		held = len(r.lines)
	}
	n = min(max(n, 0), held)
	out := make([]LogLine, 0, n)
	for k := n; k > 0; k-- {
		l := r.lines[(r.head-k+len(r.lines))%len(r.lines)]
		// Scrubbed again on the way out: a secret read after the line was written (a key file
		// loaded later) is hidden too.
		l.Text = Scrub(l.Text)
		out = append(out, l)
	}
	return out, r.evicted
}

// The scrub rule. A log line may carry a secret by accident: a URL with its password, an error
// quoting a header or a config line. Three things are replaced by [redacted]:
//   - the contents of every secret file the process read (secretfile.Known: API keys, keys
//     files), wherever they appear;
//   - the value after a key-like word (api_key, apikey, x-api-key, password, passwd, pwd, pw,
//     secret, token, access_token, authorization, auth, credential(s), private_key, psk) and = or
//     : (quotes and spaces around them allowed, as in JSON): a quoted value whole (to its closing
//     quote or the line's end), else up to the next space, comma, quote, & or ;; and the word
//     after "Bearer ";
//   - the user information of a URL (scheme://user:password@host).
//
// It is deliberately greedy: a redacted word the operator needed costs less than a leaked key.
var (
	keyValueRe = regexp.MustCompile(`(?i)\b((?:x[-_])?api[-_]?key|password|passwd|pwd|pw|secret|token|access[-_]?token|authorization|auth|credentials?|private[-_]?key|psk)(["']?\s*[:=]\s*)("(?:[^"\\]|\\.)*"?|'[^']*'?|(?:bearer\s+|basic\s+)?[^\s"',;&]+)`)
	bearerRe   = regexp.MustCompile(`(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+`)
	urlUserRe  = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]*@`)
)

const redacted = "[redacted]"

// Scrub applies the scrub rule to one line.
func Scrub(s string) string {
	for _, sec := range secretfile.Known() {
		// Secrets are compared exactly: a key is case-sensitive, and folding would find it in
		// unrelated text.
		s = strings.ReplaceAll(s, sec, redacted)
	}
	s = urlUserRe.ReplaceAllString(s, "${1}"+redacted+"@")
	s = keyValueRe.ReplaceAllString(s, "${1}${2}"+redacted)
	s = bearerRe.ReplaceAllString(s, "${1}"+redacted)
	return s
}

// serveLog answers /log.json?n=N (default 100, at most the ring's size).
func (s *Server) serveLog(w http.ResponseWriter, r *http.Request) {
	n := 100
	if v := r.URL.Query().Get("n"); v != "" {
		k, err := strconv.Atoi(v)
		if err != nil || k < 0 {
			http.Error(w, "n: want a number of lines, e.g. /log.json?n=100", http.StatusBadRequest)
			return
		}
		n = k
	}
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	d := &LogDoc{Schema: LogSchema, Daemon: s.Daemon, Time: now(), Lines: []LogLine{}}
	if s.Log != nil {
		d.Lines, d.Evicted = s.Log.Last(n)
	}
	writeJSON(w, http.StatusOK, d)
}

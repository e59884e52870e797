// Package secretfile reads files that hold a secret (an API key, a TLS private key, a collector's
// keys file) and holds them to one rule: a secret that group or others could read has leaked and
// must be replaced, so such a file is refused before anything is sent with it.
package secretfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
)

// ErrPermissions is returned for a file that anyone but its owner could read: an API key that
// leaked through a world-readable file has to be revoked at SIE, so refusing early is cheaper.
var ErrPermissions = errors.New("key file must not be accessible by group or others (chmod 0600)")

// MaxSize bounds what is read from a secret file.
const MaxSize = 1 << 20

// Read reads a secret file, refusing one that is not a regular file, that group or others could
// access, or that is larger than MaxSize.
func Read(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("key file %s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("key file %s has mode %04o: %w", path, perm, ErrPermissions)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading key file %s: %w", path, err)
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("key file %s: larger than %d octets", path, MaxSize)
	}
	remember(b)
	return b, nil
}

// Every secret read is remembered (each line's last field, comments left out, of MinKnown to
// MaxKnownLen octets; at most MaxKnown of them), so the log scrubber (internal/health.Scrub) can hide it wherever a log line quotes it:
// the rule is at the one place secrets are read, not at each place that might log one.
const (
	MinKnown    = 8
	MaxKnownLen = 4096
	MaxKnown    = 256
)

var known struct {
	sync.Mutex
	list []string
	set  map[string]bool
}

func remember(b []byte) {
	known.Lock()
	defer known.Unlock()
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") {
			continue
		}
		// A line of several fields is "<name> <key>" (the collector's keys file): the key is
		// the secret; the name is logged on purpose.
		if fs := strings.Fields(line); len(fs) > 1 {
			line = fs[len(fs)-1]
		}
		if len(line) < MinKnown || len(line) > MaxKnownLen || known.set[line] || len(known.list) >= MaxKnown {
			continue
		}
		if known.set == nil {
			known.set = map[string]bool{}
		}
		known.set[line] = true
		known.list = append(known.list, line)
	}
}

// Known returns the secrets read so far, longest first (so a secret that contains another is
// hidden whole).
func Known() []string {
	known.Lock()
	defer known.Unlock()
	out := slices.Clone(known.list)
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// ValidToken reports whether s can be sent as an HTTP header value unchanged (an API key): one
// or more printable ASCII characters, no white space.
func ValidToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

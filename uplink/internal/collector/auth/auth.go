// Package auth is the collector's side of a sensor's identity: the keys file that maps API keys
// to sensor names, the rule for those names (they become a URL path element and a directory name
// at the collector), and throwaway credentials for the collector's self-test and tests. A
// *Keys is the sielink Server's Authenticator.
package auth

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"

	"github.com/sie-europe/dnssensor/internal/secretfile"
)

// ValidSensorName reports whether name may name a sensor: it becomes a
// URL path element and a directory name at the collector, so it is
// limited to 1–64 characters of [A-Za-z0-9._-] and may not start with a
// dot.
func ValidSensorName(name string) bool {
	if len(name) == 0 || len(name) > 64 || name[0] == '.' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Keys maps API keys to sensor names. Keys are held as SHA-256 digests,
// so that a lookup's timing says nothing about how much of a guessed key
// matched. A Keys is immutable once loaded and safe for concurrent use.
type Keys struct {
	byHash map[[32]byte]string
}

// Lookup returns the sensor an API key belongs to.
func (k *Keys) Lookup(apiKey string) (sensor string, ok bool) {
	if k == nil {
		return "", false
	}
	sensor, ok = k.byHash[sha256.Sum256([]byte(apiKey))]
	return sensor, ok
}

// ValidName is ValidSensorName: a session path naming anything else is not found.
func (k *Keys) ValidName(name string) bool { return ValidSensorName(name) }

// Sensors returns the names of the sensors that have a key, sorted.
func (k *Keys) Sensors() []string {
	var out []string
	for _, s := range k.byHash {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// Len returns the number of keys.
func (k *Keys) Len() int { return len(k.byHash) }

// LoadKeys reads a keys file: one "<sensor-name> <api-key>" per line,
// '#' starts a comment. Each sensor has exactly one key and each key
// one sensor. The file must have mode 0600 (or stricter).
func LoadKeys(path string) (*Keys, error) {
	b, err := secretfile.Read(path)
	if err != nil {
		return nil, err
	}
	k, err := ParseKeys(b)
	if err != nil {
		return nil, fmt.Errorf("keys file %s: %w", path, err)
	}
	return k, nil
}

// ParseKeys parses the contents of a keys file (see LoadKeys).
func ParseKeys(b []byte) (*Keys, error) {
	k := &Keys{byHash: make(map[[32]byte]string)}
	sensors := make(map[string]bool)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		fs := strings.Fields(text)
		if len(fs) == 0 {
			continue
		}
		if len(fs) != 2 {
			return nil, fmt.Errorf("line %d: want \"<sensor-name> <api-key>\"", line)
		}
		name, key := fs[0], fs[1]
		if !ValidSensorName(name) {
			return nil, fmt.Errorf("line %d: invalid sensor name %q", line, name)
		}
		if !secretfile.ValidToken(key) {
			return nil, fmt.Errorf("line %d: invalid API key", line)
		}
		h := sha256.Sum256([]byte(key))
		if _, dup := k.byHash[h]; dup {
			return nil, fmt.Errorf("line %d: API key used twice", line)
		}
		if sensors[name] {
			return nil, fmt.Errorf("line %d: sensor %s has a second key", line, name)
		}
		k.byHash[h] = name
		sensors[name] = true
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return k, nil
}

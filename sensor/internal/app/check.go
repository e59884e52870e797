package app

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
)

// KeyError is one wrong setting of a config file: the key (a flag name) and what is wrong with it,
// in ParseFlags' own words.
type KeyError struct {
	Key string
	Msg string
}

// keyFiller stands in for a required setting found wrong, so that the settings after it are still
// judged: without any resolver, every later check would stop at "no resolver configured".
var keyFiller = map[string]any{"resolver": "192.0.2.1", "authoritative": "192.0.2.1"}

var (
	quotedKey = regexp.MustCompile(`key "([^"]+)"`)
	leadKeys  = regexp.MustCompile(`^[-a-z0-9/, ]+?:`)
)

// CheckConfig judges a config file's settings (the JSON object -config reads) as sensord would
// with args on its command line, and returns every wrong key, one error each. ParseFlags stops at
// the first problem, so the file is parsed again without each key found wrong until it passes:
// the rules stay in one place, ParseFlags, and a file with every key wrong still gets one message
// per key. Keys the command line sets are refused, since the command line would silently win.
// An error that names no key of the file (the command line's own) has Key "".
func CheckConfig(data []byte, args []string) []KeyError {
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil || m == nil {
		if err == nil {
			err = errors.New("null")
		}
		return []KeyError{{Msg: fmt.Sprintf("not a JSON object of settings: %v", err)}}
	}
	_, cmdline := scanArgs(args)
	var out []KeyError
	reported := map[string]bool{}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if cmdline[k] && k != "config" {
			out = append(out, KeyError{k, fmt.Sprintf("set by the box's command line (-%s); remove it from the configuration", k)})
			reported[k] = true
			delete(m, k)
		}
	}
	f, err := os.CreateTemp("", "sensord-check-*.json")
	if err != nil {
		return append(out, KeyError{Msg: fmt.Sprintf("cannot check: %v", err)})
	}
	path := f.Name()
	f.Close()
	defer os.Remove(path)
	for range len(keys) + 2 {
		b, _ := json.Marshal(m)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return append(out, KeyError{Msg: fmt.Sprintf("cannot check: %v", err)})
		}
		_, err := ParseFlags(append(append([]string{}, args...), "-config", path), io.Discard)
		if err == nil {
			return out
		}
		msg := strings.ReplaceAll(err.Error(), "-config "+path+": ", "")
		k := errorKey(msg, m)
		if k == "" {
			// Not one of the file's keys: a required setting it lacks ("resolver: no resolver
			// addresses configured") or the command line's own problem.
			if k = errorKey(msg, keyFiller); k != "" && reported[k] {
				return out // already reported; its absence is the same fault
			}
			return append(out, KeyError{Key: k, Msg: msg})
		}
		out = append(out, KeyError{Key: k, Msg: msg})
		reported[k] = true
		if fill, ok := keyFiller[k]; ok {
			m[k] = fill
		} else {
			delete(m, k)
		}
	}
	return out
}

// errorKey finds which key of m an error of ParseFlags is about: a quoted `key "K"`, or the flag
// names the message starts with ("-rd: …", "-r, -i, -dnstap and -dnstap-file: …",
// "qname-exclude/qname-include: …").
func errorKey(msg string, m map[string]any) string {
	if sub := quotedKey.FindStringSubmatch(msg); sub != nil {
		if _, ok := m[sub[1]]; ok {
			return sub[1]
		}
	}
	lead := leadKeys.FindString(msg)
	for _, w := range strings.FieldsFunc(strings.TrimSuffix(lead, ":"), func(r rune) bool { return r == ',' || r == '/' || r == ' ' }) {
		w = strings.TrimLeft(w, "-")
		if _, ok := m[w]; ok {
			return w
		}
	}
	return ""
}

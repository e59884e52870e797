package pipeline

import (
	"fmt"
	"strings"

	"github.com/sie-europe/dnssensor/sensor/internal/dnswire"
)

// wireName converts a presentation name ("example.com" or "example.com.") to lower-case wire form.
func wireName(s string) ([]byte, error) {
	s = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".")
	if s == "" {
		return []byte{0}, nil
	}
	var b []byte
	for _, l := range strings.Split(s, ".") {
		if l == "" {
			return nil, fmt.Errorf("empty label")
		}
		if len(l) > 63 {
			return nil, fmt.Errorf("label longer than 63 octets")
		}
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	b = append(b, 0)
	if len(b) > 255 {
		return nil, fmt.Errorf("name longer than 255 octets")
	}
	return b, nil
}

func nameSet(names []string) map[string]struct{} {
	if len(names) == 0 {
		return nil
	}
	m := make(map[string]struct{}, len(names))
	for _, n := range names {
		b, err := wireName(n)
		if err == nil {
			m[string(b)] = struct{}{}
		}
	}
	return m
}

// Excluded reports whether the qname filters of c drop name (presentation form), as a pipeline
// built from c would: sensord's privacy self-test picks a canary name that is kept.
func (c *Config) Excluded(name string) bool {
	w, err := wireName(name)
	if err != nil {
		return true
	}
	p := Pipeline{exclude: nameSet(c.QnameExclude), include: nameSet(c.QnameInclude)}
	return p.excluded(w)
}

// excluded applies the C reference's rule: a name at or below an include entry is kept; else a name
// at or below an exclude entry is dropped. Matching ignores case.
func (p *Pipeline) excluded(qname []byte) bool {
	if p.exclude == nil {
		return false
	}
	p.lower = dnswire.AppendLower(p.lower[:0], qname)
	if p.include != nil && suffixIn(p.lower, p.include) {
		return false
	}
	return suffixIn(p.lower, p.exclude)
}

func suffixIn(name []byte, set map[string]struct{}) bool {
	for off := 0; off < len(name); {
		if _, ok := set[string(name[off:])]; ok {
			return true
		}
		l := int(name[off])
		if l == 0 {
			break
		}
		off += 1 + l
	}
	return false
}

// Package uplinkconfig lets the appliance judge uplinkd's configuration before writing it: the box
// configuration's "uplink" section is uplinkd's -config file, and Check applies uplinkd's own rules
// to it, so the status page and the provisioning at first boot refuse exactly what uplinkd would.
package uplinkconfig

import (
	"strings"

	"github.com/sie-europe/dnssensor/uplink/internal/uplinkd"
)

// FieldError is one wrong key ("destinations[0].url") and what to do about it (Msg without the
// key). Key is "" for a problem of the whole file (not JSON, an unknown key).
type FieldError struct {
	Key string
	Msg string
}

// Check returns every problem of data, an uplinkd -config file; nil means uplinkd would accept
// it (the spool directories' existence aside, which uplinkd checks when it starts).
func Check(data []byte) []FieldError {
	var out []FieldError
	for _, err := range uplinkd.CheckAll(data) {
		msg := err.Error()
		key, rest, ok := strings.Cut(msg, ": ")
		if !ok || strings.ContainsAny(key, " \"") {
			key = ""
		} else {
			msg = rest
		}
		out = append(out, FieldError{Key: key, Msg: msg})
	}
	return out
}

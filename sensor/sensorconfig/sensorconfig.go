// Package sensorconfig lets the appliance judge sensord's settings before writing them: the box
// configuration's "sensor" section is the JSON object sensord's -config reads (keys are flag
// names), and Check applies sensord's own flag rules to it, so the status page and the
// provisioning at first boot refuse exactly what sensord would refuse.
package sensorconfig

import (
	"strings"

	"github.com/sie-europe/dnssensor/sensor/internal/app"
)

// FieldError is one wrong key and what to do about it (Msg without the key). Key is "" for a problem of the whole
// object or of the command line.
type FieldError struct {
	Key string
	Msg string
}

// Check returns every wrong key of data, a sensord -config object, as sensord would judge it with
// args on its command line (the image's flags, without -config). Keys the command line sets are
// refused (the command line would win without a word). Nil means sensord would accept it.
func Check(data []byte, args []string) []FieldError {
	var out []FieldError
	for _, e := range app.CheckConfig(data, args) {
		msg := e.Msg
		if e.Key != "" {
			// The key is shown beside the message; sensord's own wording starts with it.
			for _, p := range []string{"-" + e.Key + ": ", e.Key + ": ", `key "` + e.Key + `": `} {
				msg = strings.TrimPrefix(msg, p)
			}
		}
		out = append(out, FieldError{Key: e.Key, Msg: msg})
	}
	return out
}

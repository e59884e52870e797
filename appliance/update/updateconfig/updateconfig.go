// Package updateconfig is the update section of the box configuration (dnssensor.json's
// "update", stored as /perm/updated/config.json): where the box's releases come from and when it
// may look for them. It is updated's own rule book, kept apart from package update so that
// statusd, which judges the box file before writing it, does not link the TUF client.
package updateconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"sort"
	"time"
)

// MinInterval keeps a fleet from hammering its repository: a hundred boxes polling every
// minute are already more than a static server notices.
const MinInterval = time.Minute

// Config is the update section. Zero values leave updated's flags (the image's defaults) in force.
type Config struct {
	Repository string        // the TUF repository's URL; "" is not configured
	Interval   time.Duration // between checks
	Window     *Window       // maintenance window; nil: any time
	WindowText string        // as written, for the page
}

// FieldError is one wrong key of the section ("repository", "interval", "window").
type FieldError struct {
	Key string
	Msg string
}

func (e FieldError) Error() string {
	if e.Key == "" {
		return e.Msg
	}
	return e.Key + ": " + e.Msg
}

// Keys the section may hold, with what each is.
var keys = map[string]string{
	"repository": "the TUF repository's URL, http(s)://host/path, where gokr-packer publish's directory is served",
	"interval":   "time between checks as a Go duration, e.g. 1h (at least 1m; a random part of the jitter is added)",
	"window":     "maintenance window HH:MM-HH:MM in UTC, e.g. 02:00-05:00 (may span midnight); leave it out for any time",
}

// Parse judges the section (a JSON object) and reports every wrong key.
func Parse(data []byte) (Config, []FieldError) {
	var c Config
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&raw); err != nil || raw == nil {
		return c, []FieldError{{Msg: "must be a JSON object with repository, interval and window"}}
	}
	var errs []FieldError
	str := func(k string) (string, bool) {
		var s string
		if err := json.Unmarshal(raw[k], &s); err != nil {
			errs = append(errs, FieldError{k, "must be a string: " + keys[k]})
			return "", false
		}
		return s, true
	}
	names := make([]string, 0, len(raw))
	for k := range raw {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if _, ok := keys[k]; !ok {
			errs = append(errs, FieldError{k, "unknown key; the keys are repository, interval and window"})
		}
	}
	if _, ok := raw["repository"]; !ok {
		errs = append(errs, FieldError{"repository", "missing: " + keys["repository"]})
	} else if s, ok := str("repository"); ok {
		if u, err := url.Parse(s); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			errs = append(errs, FieldError{"repository", fmt.Sprintf("%q: want %s", s, keys["repository"])})
		} else {
			c.Repository = s
		}
	}
	if _, ok := raw["interval"]; ok {
		if s, ok := str("interval"); ok {
			d, err := time.ParseDuration(s)
			switch {
			case err != nil:
				errs = append(errs, FieldError{"interval", fmt.Sprintf("%q: want %s", s, keys["interval"])})
			case d < MinInterval:
				errs = append(errs, FieldError{"interval", fmt.Sprintf("%q is shorter than %v: a fleet would hammer its repository", s, MinInterval)})
			default:
				c.Interval = d
			}
		}
	}
	if _, ok := raw["window"]; ok {
		if s, ok := str("window"); ok {
			w, err := ParseWindow(s)
			if err != nil {
				errs = append(errs, FieldError{"window", err.Error()})
			} else {
				c.Window, c.WindowText = w, s
			}
		}
	}
	return c, errs
}

// Load reads the section's file (/perm/updated/config.json). found is false when there is none.
func Load(path string) (c Config, found bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, false, nil
	}
	if err != nil {
		return c, false, err
	}
	c, errs := Parse(data)
	if errs != nil {
		var msg string
		for i, e := range errs {
			if i > 0 {
				msg += "; "
			}
			if e.Key == "" {
				msg += "update: " + e.Msg
			} else {
				msg += "update." + e.Error()
			}
		}
		return c, true, fmt.Errorf("%s: %s", path, msg)
	}
	return c, true, nil
}

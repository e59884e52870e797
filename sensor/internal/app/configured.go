package app

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
)

// notConfigured reports why sensord has nothing to do yet, or "" when it has settings. It is
// asked before the flags are checked, since an appliance fresh out of the box runs sensord with
// its image's flags (-i, -config, -spool) and no config file yet: that is not a bad flag (exit
// 2, restarted every second by gokrazy) but a box waiting for its operator (exit 125: gokrazy
// leaves it stopped, and the status page says "not configured").
//
// Not configured means: no arguments at all; or -config names a file that does not exist, is
// empty, or sets neither resolver, authoritative, dnstap nor dnstap-file, and the command line
// does not either. Anything else goes on to the flag checks as before.
//
// Except discovery: a config file that exists and holds settings (the box's shared
// configuration, provisioned or saved from the status page) but no resolver, with capture
// interfaces (the image's -i, or the file's "i"), is a box whose operator has not yet said which
// addresses are the resolver's. sensord then captures without making records and counts who
// sends queries, so the status page can suggest the resolver (discovery.go). A missing or empty
// file is still no configuration at all: exit 125, as the health contract says.
func notConfigured(args []string) string {
	if len(args) == 0 {
		return "no settings given; see sensord -h (the appliance passes -config /perm/sensord/config.json)"
	}
	config, cmdline := scanArgs(args)
	if config == "" {
		return ""
	}
	for _, k := range []string{"resolver", "resolver-from-interface", "authoritative", "dnstap", "dnstap-file"} {
		if cmdline[k] {
			return ""
		}
	}
	const fix = `; write the resolver's addresses there, e.g. {"resolver": "192.0.2.53,2001:db8::53"}, and restart sensord`
	data, err := os.ReadFile(config)
	if os.IsNotExist(err) {
		return config + " does not exist" + fix
	}
	if err != nil {
		return "" // the flag checks report it, naming -config
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return config + " is empty" + fix
	}
	var m map[string]any
	if json.Unmarshal(data, &m) != nil {
		return "" // a broken file is bad configuration: exit 2 with the parser's message
	}
	for _, k := range []string{"resolver", "resolver-from-interface", "authoritative", "dnstap", "dnstap-file"} {
		if v, ok := m[k]; ok && v != "" && v != false {
			return ""
		}
	}
	if v, ok := m["i"]; cmdline["i"] || (ok && v != "") {
		return "" // discovery
	}
	return config + " sets neither resolver nor authoritative" + fix
}

// scanArgs finds -config's value and which flags the command line sets, without judging them
// (ParseFlags does that).
func scanArgs(args []string) (config string, set map[string]bool) {
	set = map[string]bool{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") {
			continue // a flag's value
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		set[name] = true
		if name == "config" {
			if !hasVal && i+1 < len(args) {
				i++
				val = args[i]
			}
			config = val
		}
	}
	return config, set
}

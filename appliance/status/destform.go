package status

import (
	"fmt"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/sie-europe/dnssensor/appliance/boxconfig"
)

// The uplink destinations on the configuration page: every destination of the box file's uplink
// section has its own fieldset, named by its index there, with a box that removes it; one empty
// row adds a destination. A row's API key is write-only and belongs to that row's destination
// only: its key file is found by the destination's name (or its api_key_file), so a change that
// would move a name (a removal renumbering the destinations after it, a rename) keeps the
// destination's own file with it.

// destRow is one uplink destination on the form.
type destRow struct {
	Index    int            // its number on the form: its index in the configuration the form was made from
	Was      string         // its name there (uplinkd's: "name", else type and index); "" for a new row
	Dest     map[string]any // its keys (a refused form's values); empty for the empty new row
	New      bool
	Remove   bool
	KeyTyped bool // an API key was typed on a refused form: it is not shown back, so it must be typed again
	// Posted is the row's fields as a refused form had them (nil: Dest's), so a value that did
	// not check out is shown as typed beside its message.
	Posted map[string]string
}

// destForm is what a posted form did to the uplink destinations.
type destForm struct {
	rows  []destRow
	rowOf []int // destination j of the new configuration → its row on the form
}

type destKey struct {
	key, label, help string
	kind             string // text, uint, checkbox, secret
	typ              string // the destination type that has the key; "" for every type
	bad              string // what a value that does not parse is not
}

var destKeys = []destKey{
	{"name", "Name", "names it in the health checks and its API key's file; empty: its type and number, e.g. sielink0", "text", "", ""},
	{"url", "Collector URL", "wss://host[:port]", "text", "sielink", ""},
	{"sensor", "Sensor name", "the session name SIE Europe gave this sensor", "text", "sielink", ""},
	{"channel", "Channel", "default 202", "uint", "sielink", "a channel number (e.g. 202)"},
	{"api_key", "API key", "write-only: leave empty to keep this destination's key on file", "secret", "sielink", ""},
	{"addr", "NMSG receiver", "host:port the NMSG datagrams go to", "text", "nmsg-udp", ""},
	{"mtu", "Largest datagram", "octets; default 1280, 8192 on a jumbo-frame LAN", "uint", "nmsg-udp", "a number of octets (e.g. 1280)"},
	{"zlib", "Compress (zlib)", "", "checkbox", "nmsg-udp", ""},
	{"rate", "Datagrams per second at most", "empty: no limit", "uint", "nmsg-udp", "a number of datagrams per second"},
}

var destTypes = []string{"sielink", "nmsg-udp"}

// destName is uplinkd's name of destination i: its "name", else its type and index.
func destName(d map[string]any, i int) string {
	if n, _ := d["name"].(string); n != "" {
		return n
	}
	t, _ := d["type"].(string)
	return fmt.Sprintf("%s%d", t, i)
}

func truthy(v any) bool { return v == true || v == "true" }

// destRowsFor is the form's rows for an uplink section: each destination, then the empty new row.
// A destination that is not a JSON object has no row: uplinkd's check names it.
func destRowsFor(up map[string]any) []destRow {
	dests, _ := up["destinations"].([]any)
	var rows []destRow
	for i, d := range dests {
		if m, ok := d.(map[string]any); ok {
			rows = append(rows, destRow{Index: i, Was: destName(m, i), Dest: m})
		}
	}
	return append(rows, destRow{Index: len(dests), New: true, Dest: map[string]any{}})
}

func destPrefix(i int) string { return fmt.Sprintf("uplink.destinations[%d].", i) }

// keyFile is where a destination's API key is: its api_key_file, else the file of its name.
func keyFile(d map[string]any, name string, l boxconfig.Layout) string {
	if p, _ := d["api_key_file"].(string); p != "" {
		return p
	}
	return l.APIKeyFile(name)
}

func destSections(rows []destRow, l boxconfig.Layout) []section {
	var secs []section
	for _, row := range rows {
		pre := destPrefix(row.Index)
		typ, _ := row.Dest["type"].(string)
		var sec section
		if row.New {
			sec.Title = "Add an uplink destination"
			if typ == "" {
				typ = "sielink"
			}
			sec.Fields = append(sec.Fields, &field{Key: pre + "type", Label: "Type", Kind: "select", Options: destTypes, Value: typ,
				Help: "sielink: SIE Europe or a SOC collector; nmsg-udp: NMSG datagrams to a receiver on the LAN. Leave the row empty to add none."})
		} else {
			sec.Title = fmt.Sprintf("Uplink destination %d: %s (%s)", row.Index, row.Was, typ)
			sec.Hidden = []hidden{{pre + "was", row.Was}}
		}
		for _, dk := range destKeys {
			if dk.typ != "" && dk.typ != typ && !row.New {
				continue
			}
			f := &field{Key: pre + dk.key, Label: dk.label, Help: dk.help, Kind: dk.kind}
			if row.New && dk.typ != "" {
				f.Help = strings.TrimSuffix(dk.typ+" only; "+dk.help, "; ")
			}
			v, posted := row.Posted[dk.key]
			if !posted {
				v = str(row.Dest[dk.key])
			}
			switch dk.kind {
			case "uint":
				f.Kind = "text"
				f.Value = v
			case "text":
				f.Value = v
			case "checkbox":
				f.Checked = truthy(row.Dest[dk.key])
				if row.Posted != nil {
					f.Checked = v != ""
				}
			case "secret":
				f.Secret = "not set"
				if row.KeyTyped {
					f.Secret = "typed but not saved: type it again"
				} else if !row.New {
					if fp := boxconfig.Fingerprint(keyFile(row.Dest, row.Was, l)); fp != "" {
						f.Secret = "set (" + fp + ")"
					}
				}
			}
			sec.Fields = append(sec.Fields, f)
		}
		if !row.New {
			sec.Fields = append(sec.Fields, &field{Key: pre + "remove", Label: "Remove this destination", Kind: "checkbox", Checked: row.Remove,
				Help: "its data is no longer sent there; the others keep theirs"})
		}
		secs = append(secs, sec)
	}
	return secs
}

var destRowRe = regexp.MustCompile(`^uplink\.destinations\[(\d{1,4})\]\.`)

// destsFromForm puts the form's destination rows into b's uplink section. A row of an existing
// destination carries the name the destination had when the page was made ("was"): a form made
// from another configuration (a revert or another browser in between) is refused, since its rows
// would edit, and give keys to, other destinations than their reader saw.
func destsFromForm(b *boxconfig.Box, r *http.Request, l boxconfig.Layout) (*destForm, boxconfig.Errors, error) {
	val := func(k string) string { return strings.TrimSpace(r.PostFormValue(k)) }
	old, _ := b.Uplink["destinations"].([]any)
	posted := map[int]bool{}
	for k := range r.PostForm {
		if m := destRowRe.FindStringSubmatch(k); m != nil {
			n, _ := strconv.Atoi(m[1])
			posted[n] = true
		}
	}
	df := &destForm{}
	var errs boxconfig.Errors
	var out []any
	for i, o := range old {
		m, ok := o.(map[string]any)
		if !ok || !posted[i] {
			// Not on the form: kept as it is.
			if ok {
				df.rows = append(df.rows, destRow{Index: i, Was: destName(m, i), Dest: m})
			}
			df.rowOf = append(df.rowOf, i)
			out = append(out, o)
			continue
		}
		pre := destPrefix(i)
		was := destName(m, i)
		if got := val(pre + "was"); got != was {
			return nil, nil, fmt.Errorf("uplink destination %d is %q now, not %q as on the form: the configuration changed since the page was made; load /config again", i, was, got)
		}
		d := map[string]any{}
		for k, v := range m {
			d[k] = v
		}
		row := destRow{Index: i, Was: was, Dest: d, Posted: postedRow(pre, val)}
		if val(pre+"remove") != "" {
			row.Remove = true
			df.rows = append(df.rows, row)
			continue
		}
		typ, _ := d["type"].(string)
		errs = append(errs, setDestKeys(d, typ, pre, val)...)
		_, row.KeyTyped = d["api_key"]
		j := len(out)
		if n, _ := d["name"].(string); n == "" && j != i {
			// A removal before it renumbers it: its name (health checks, key file) stays.
			d["name"] = was
		}
		if _, typed := d["api_key"]; typ == "sielink" && !typed && d["api_key_file"] == nil && destName(d, j) != was {
			// Renamed: its key stays its own, not the file of the new name (another's, or none).
			if _, err := os.Stat(l.APIKeyFile(was)); err == nil {
				d["api_key_file"] = l.APIKeyFile(was)
			}
		}
		df.rows = append(df.rows, row)
		df.rowOf = append(df.rowOf, i)
		out = append(out, d)
	}

	// New rows: the form has one; a script may send more.
	var added []int
	for i := range posted {
		if i >= len(old) {
			added = append(added, i)
		}
	}
	sort.Ints(added)
	names, files := map[string]bool{}, map[string]bool{}
	for j, o := range out {
		if m, ok := o.(map[string]any); ok {
			names[destName(m, j)] = true
			if p, _ := m["api_key_file"].(string); p != "" {
				files[p] = true
			}
		}
	}
	for _, i := range added {
		pre := destPrefix(i)
		if was := val(pre + "was"); was != "" {
			return nil, nil, fmt.Errorf("uplink destination %d (%q on the form) is no longer configured: the configuration changed since the page was made; load /config again", i, was)
		}
		typ := val(pre + "type")
		d := map[string]any{}
		rerrs := setDestKeys(d, typ, pre, val)
		if len(d) == 0 && len(rerrs) == 0 {
			continue // the empty row: nothing added
		}
		row := destRow{Index: i, New: true, Dest: d, Posted: postedRow(pre, val)}
		_, row.KeyTyped = d["api_key"]
		d["type"] = typ
		switch typ {
		case "sielink":
			if !row.KeyTyped {
				// Never a key already on file: it would be a removed destination's.
				rerrs = append(rerrs, boxconfig.FieldError{Key: pre + "api_key", Msg: "set the API key SIE Europe issued for this destination"})
			}
		case "nmsg-udp":
		default:
			rerrs = append(rerrs, boxconfig.FieldError{Key: pre + "type", Msg: fmt.Sprintf("%q is not sielink or nmsg-udp", typ)})
		}
		errs = append(errs, rerrs...)
		j := len(out)
		if n, _ := d["name"].(string); n == "" {
			// uplinkd's default name, unless a destination kept its own name through a removal
			// and has it, or another destination's key is in its key file.
			for k := j; ; k++ {
				n := fmt.Sprintf("%s%d", typ, k)
				if !names[n] && !files[l.APIKeyFile(n)] {
					if k != j {
						d["name"] = n
					}
					break
				}
			}
		}
		names[destName(d, j)] = true
		df.rows = append(df.rows, row)
		df.rowOf = append(df.rowOf, i)
		out = append(out, d)
	}

	up := map[string]any{}
	for k, v := range b.Uplink {
		up[k] = v
	}
	if len(out) > 0 {
		up["destinations"] = out
		b.Uplink = up
	} else {
		b.Uplink = nil // nothing to ship to: uplinkd stays not configured
	}
	return df, errs, nil
}

// postedRow is a row's fields as posted, the API key left out: it is never shown back.
func postedRow(pre string, val func(string) string) map[string]string {
	m := map[string]string{}
	for _, dk := range destKeys {
		if dk.kind != "secret" {
			m[dk.key] = val(pre + dk.key)
		}
	}
	return m
}

// setDestKeys sets d's keys of type typ from the form's row pre. A value the form shows unchanged
// is kept as written (a number stays a number), so a form saved unchanged changes nothing.
func setDestKeys(d map[string]any, typ, pre string, val func(string) string) boxconfig.Errors {
	var errs boxconfig.Errors
	known := typ == "sielink" || typ == "nmsg-udp"
	for _, dk := range destKeys {
		k := dk.key
		v := val(pre + k)
		if dk.typ != "" && dk.typ != typ {
			if v != "" && known {
				errs = append(errs, boxconfig.FieldError{Key: pre + k, Msg: fmt.Sprintf("only a %s destination has this; this one is %s: leave it empty", dk.typ, typ)})
			}
			continue
		}
		switch dk.kind {
		case "secret":
			if v != "" {
				d[k] = v
			}
		case "checkbox":
			if on := v != ""; on != truthy(d[k]) {
				delete(d, k)
				if on {
					d[k] = true
				}
			}
		default:
			if v == str(d[k]) {
				continue
			}
			delete(d, k)
			if v == "" {
				continue
			}
			if dk.kind != "uint" {
				d[k] = v
				continue
			}
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				errs = append(errs, boxconfig.FieldError{Key: pre + k, Msg: fmt.Sprintf("%q is not %s", v, dk.bad)})
				continue
			}
			d[k] = n
		}
	}
	return errs
}

// renumber names the configuration's errors of destination j by its row on the form.
func (df *destForm) renumber(errs boxconfig.Errors) boxconfig.Errors {
	if df == nil {
		return errs
	}
	out := make(boxconfig.Errors, len(errs))
	for i, e := range errs {
		if m := destRowRe.FindStringSubmatch(e.Key); m != nil {
			if j, _ := strconv.Atoi(m[1]); j < len(df.rowOf) {
				e.Key = destPrefix(df.rowOf[j]) + strings.TrimPrefix(e.Key, m[0])
			}
		}
		out[i] = e
	}
	return out
}

// shown is the rows to show a refused form with: as posted, and an empty new row unless one was
// filled in.
func (df *destForm) shown() []destRow {
	if df == nil {
		return nil
	}
	rows := append([]destRow{}, df.rows...)
	next := 0
	for _, r := range rows {
		if r.New {
			return rows
		}
		next = max(next, r.Index+1)
	}
	return append(rows, destRow{Index: next, New: true, Dest: map[string]any{}})
}

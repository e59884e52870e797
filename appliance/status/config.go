package status

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sie-europe/dnssensor/appliance/boxconfig"
	"github.com/sie-europe/dnssensor/internal/health"
)

var configTmpl = template.Must(template.New("config.html").ParseFS(assets, "assets/config.html"))

// Config is the configuration page: the box file (appliance/boxconfig) edited through a form,
// and the resolver suggestions.
type Config struct {
	Layout boxconfig.Layout
	// Restart (re)starts a daemon after its file changed; nil: none is restarted.
	Restart func(ctx context.Context, daemon string) error
	// SensordSocket is sensord's health socket, asked for /resolver-candidates.json and whether
	// sensord runs (a running sensord reloads its file by itself).
	SensordSocket string
	// Provisioned is what the provisioning at start did with dnssensor.json on the boot partition.
	Provisioned *ProvisionResult

	mu sync.Mutex // one change at a time: each starts from the configuration in force
}

// Candidate is one address that sent queries to port 53 on the tap (sensord's
// /resolver-candidates.json). Shown on this page only, never stored or logged.
type Candidate struct {
	Addr    string `json:"addr"`
	Queries uint64 `json:"queries"`
}

type candidatesDoc struct {
	WindowSeconds int         `json:"window_seconds"`
	Candidates    []Candidate `json:"candidates"`
}

// field is one input of the form; its name is the key in the box file.
type field struct {
	Key, Label, Help, Value string
	Kind                    string // text, select, checkbox, secret
	Options                 []string
	Checked                 bool
	Secret                  string // for secrets: "set (fingerprint)" or "not set"
	Errors                  []string
}

type section struct {
	Title  string
	Hidden []hidden
	Fields []*field
}

type hidden struct{ Name, Value string }

type configView struct {
	XSRF        string
	Sections    []section
	Other       []string // errors of keys without a field on the form
	Saved       string
	Candidates  []Candidate
	Window      int
	ShowSuggest bool
	SuggestWhy  string
	Provisioned *ProvisionResult
	LoadError   string
}

func (s *Server) configRoutes(mux *http.ServeMux) {
	if s.Config == nil {
		return
	}
	mux.HandleFunc("GET /config", s.serveConfig)
	mux.Handle("POST /config", s.xsrf(http.HandlerFunc(s.postConfig)))
	mux.Handle("POST /config/resolver", s.xsrf(http.HandlerFunc(s.postResolver)))
	mux.Handle("POST /config/revert", s.xsrf(http.HandlerFunc(s.postRevert)))
}

func (s *Server) serveConfig(w http.ResponseWriter, r *http.Request) {
	b, _, err := boxconfig.Load(s.Config.Layout)
	v := &configView{}
	if err != nil {
		v.LoadError = err.Error()
		b = &boxconfig.Box{}
	}
	v.Sections = formFor(b, s.Config.Layout, nil)
	s.renderConfig(w, r, v, http.StatusOK)
}

// postConfig takes the whole form: every field is judged, and only a form without a single
// wrong one is applied.
func (s *Server) postConfig(w http.ResponseWriter, r *http.Request) {
	s.Config.mu.Lock()
	defer s.Config.mu.Unlock()
	b, _, err := boxconfig.Load(s.Config.Layout)
	if err != nil {
		// The form replaces the sections it shows; what it does not show must not be lost to a
		// file that no longer reads.
		http.Error(w, "the configuration on /perm does not read ("+err.Error()+"); fix or remove it first", http.StatusConflict)
		return
	}
	if b == nil {
		b = &boxconfig.Box{}
	}
	df, errs, err := fromForm(b, r, s.Config.Layout)
	if err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	s.change(w, r, b, errs, df)
}

// postResolver is a suggestion's button: the sensor section's resolver becomes that address.
func (s *Server) postResolver(w http.ResponseWriter, r *http.Request) {
	s.Config.mu.Lock()
	defer s.Config.mu.Unlock()
	a, err := netip.ParseAddr(r.PostFormValue("addr"))
	if err != nil {
		http.Error(w, "addr: not an IP address", http.StatusBadRequest)
		return
	}
	b, _, err := boxconfig.Load(s.Config.Layout)
	if err != nil {
		http.Error(w, "the configuration on /perm does not read ("+err.Error()+"); fix or remove it first", http.StatusConflict)
		return
	}
	if b == nil {
		b = &boxconfig.Box{}
	}
	if b.Sensor == nil {
		b.Sensor = map[string]any{}
	}
	b.Sensor["resolver"] = a.Unmap().String()
	delete(b.Sensor, "authoritative")
	s.change(w, r, b, nil, nil)
}

// postRevert puts the previous box file back (checked again, like any change); the one replaced
// becomes the previous, so a second click undoes the first.
func (s *Server) postRevert(w http.ResponseWriter, r *http.Request) {
	s.Config.mu.Lock()
	defer s.Config.mu.Unlock()
	data, err := os.ReadFile(s.Config.Layout.PrevFile())
	if err != nil {
		http.Error(w, "no previous configuration to go back to", http.StatusConflict)
		return
	}
	b, err := boxconfig.Parse(data)
	if err != nil {
		http.Error(w, "the previous configuration does not read: "+err.Error(), http.StatusConflict)
		return
	}
	s.change(w, r, b, nil, nil)
}

// change checks b and applies it, or shows every wrong field next to its input with nothing
// written. df is the form's uplink destinations (nil for a change not made on the form): errors
// are named by the destination's row on the form, which a removal before it does not renumber.
func (s *Server) change(w http.ResponseWriter, r *http.Request, b *boxconfig.Box, formErrs boxconfig.Errors, df *destForm) {
	l := s.Config.Layout
	files, errs := boxconfig.Check(b, l)
	errs = append(formErrs, df.renumber(errs)...)
	if len(errs) > 0 {
		v := &configView{Sections: formFor(b, l, df.shown())}
		v.Other = attach(v.Sections, errs)
		s.renderConfig(w, r, v, http.StatusUnprocessableEntity, errs...)
		return
	}
	// Asked before the files are written: a running sensord reloads its file as soon as it
	// changes, and while it does its health socket may not answer. Asked after (seen in QEMU), a
	// reloading sensord looked stopped and was restarted: gokrazy's restart stopped it with
	// SIGTERM, and a service that exits 0 stays stopped.
	sensordRan := s.sensordRuns(r.Context())
	changed, err := boxconfig.Apply(l, files)
	if err != nil {
		s.logf("statusd: applying the configuration: %v", err)
		http.Error(w, "saving failed: "+err.Error(), http.StatusInternalServerError)
		return
	}
	saved := s.restartWith(r.Context(), changed, s.Config.Restart, sensordRan)
	// Addresses and keys stay out of the log: the daemons and the outcome are enough.
	s.logf("statusd: configuration saved; %s", saved)
	v := &configView{Sections: formFor(b, l, nil), Saved: saved}
	s.renderConfig(w, r, v, http.StatusOK)
}

// restartWith starts or restarts the daemons whose file changed: uplinkd reads its file once;
// sensord reloads its own when it runs (sensordRan: it answered before its file was written),
// and is started when it does not (exit 125, "not configured", leaves it stopped); netconfd
// re-reads its file every few seconds.
func (s *Server) restartWith(ctx context.Context, changed []string, restart func(context.Context, string) error, sensordRan bool) string {
	if len(changed) == 0 {
		return "nothing changed"
	}
	var notes []string
	for _, d := range changed {
		switch d {
		case "netconfd":
			notes = append(notes, "netconfd applies it within seconds")
			continue
		case "sensord":
			if sensordRan {
				notes = append(notes, "sensord reloads it within seconds")
				continue
			}
		}
		if restart == nil {
			notes = append(notes, d+" must be restarted")
			continue
		}
		if err := restart(ctx, d); err != nil {
			s.logf("statusd: restarting %s: %v", d, err)
			notes = append(notes, fmt.Sprintf("restarting %s failed: %v", d, err))
			continue
		}
		notes = append(notes, d+" (re)started")
	}
	return "saved: " + strings.Join(notes, "; ")
}

func (s *Server) sensordRuns(ctx context.Context) bool {
	if s.Config.SensordSocket == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	_, err := health.Get(ctx, s.Config.SensordSocket)
	return err == nil
}

func (s *Server) timeout() time.Duration {
	if s.Timeout == 0 {
		return 2 * time.Second
	}
	return s.Timeout
}

// candidates asks sensord which addresses sent queries to port 53 on the tap.
func (s *Server) candidates(ctx context.Context) ([]Candidate, int) {
	if s.Config.SensordSocket == "" {
		return nil, 0
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://unix/resolver-candidates.json", nil)
	resp, err := health.Client(s.Config.SensordSocket).Do(req)
	if err != nil {
		return nil, 0
	}
	defer resp.Body.Close()
	var doc candidatesDoc
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&doc) != nil {
		return nil, 0
	}
	var out []Candidate
	for _, c := range doc.Candidates {
		if a, err := netip.ParseAddr(c.Addr); err == nil && len(out) < 5 {
			out = append(out, Candidate{Addr: a.String(), Queries: c.Queries})
		}
	}
	return out, doc.WindowSeconds
}

func (s *Server) renderConfig(w http.ResponseWriter, r *http.Request, v *configView, code int, errs ...boxconfig.FieldError) {
	w.Header().Set("Cache-Control", "no-store")
	if health.WantsJSON(r, "") { // by Accept only: /config has no .json twin
		// The form's outcome for scripts: the wrong fields, or what was saved.
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(struct {
			Errors []boxconfig.FieldError `json:"errors,omitempty"`
			Saved  string                 `json:"saved,omitempty"`
		}{errs, v.Saved})
		return
	}
	v.XSRF = s.xsrfToken()
	v.Provisioned = s.Config.Provisioned
	v.ShowSuggest, v.SuggestWhy = s.suggest(r.Context(), v.Sections)
	if v.ShowSuggest {
		v.Candidates, v.Window = s.candidates(r.Context())
	}
	var buf bytes.Buffer
	if err := configTmpl.Execute(&buf, v); err != nil {
		s.logf("statusd: rendering the configuration page: %v", err)
		http.Error(w, "rendering the page failed; see statusd's log", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

// suggest says whether to offer the addresses that sent queries: when no resolver is configured,
// or the chain's "DNS from the configured resolver" link is red.
func (s *Server) suggest(ctx context.Context, secs []section) (bool, string) {
	configured := false
	for _, sec := range secs {
		for _, f := range sec.Fields {
			if (f.Key == "sensor.resolver" || f.Key == "sensor.authoritative") && f.Value != "" {
				configured = true
			}
		}
	}
	if !configured {
		return true, "No resolver is configured."
	}
	for _, n := range s.Page(ctx).Chain {
		if n.Name == stageResolver && n.State == Fail {
			return true, "No DNS from the configured resolver: " + n.Detail
		}
	}
	return false, ""
}

// The form's fields. Only the keys an operator sets by hand are on the form; other keys of each
// section are kept as they are.
var sensorFields = []struct{ key, label, help, kind string }{
	{"resolver", "Resolver addresses", "the recursive resolver(s) the tap sees, IPv4 and IPv6, comma-separated (CIDRs allowed)", "text"},
	{"authoritative", "Authoritative servers (authority mode)", "instead of a resolver: the authoritative servers' addresses", "text"},
	{"rd", "RD bit kept", "default: 0 in resolver mode (cache misses), any in authority mode", "select"},
	{"zero-resolver", "Zero the resolver address in records", "", "checkbox"},
	{"qname-exclude", "Names excluded", "names (and below) never recorded, comma-separated", "text"},
	{"qname-include", "Exceptions to the exclusions", "", "text"},
}

var networkFields = []struct{ key, label, help string }{
	{"address", "Static IPv4 address", "with prefix length, e.g. 198.51.100.10/24; empty: DHCP"},
	{"gateway", "IPv4 gateway", ""},
	{"address6", "Static IPv6 address", "e.g. 2001:db8::10/64; empty: SLAAC"},
	{"gateway6", "IPv6 gateway", ""},
	{"dns", "DNS servers", "comma-separated; empty: from DHCP"},
	{"ntp", "NTP servers", "comma-separated; empty: from DHCP"},
}

var updateFields = []struct{ key, label, help string }{
	{"repository", "Update repository", "the TUF repository's URL (gokr-packer publish); empty: no automatic updates"},
	{"interval", "Check every", "e.g. 1h (default), at least 1m"},
	{"window", "Maintenance window", "HH:MM-HH:MM in UTC, e.g. 02:00-05:00; empty: any time"},
}

func str(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case []any:
		parts := make([]string, len(v))
		for i, x := range v {
			parts[i] = str(x)
		}
		return strings.Join(parts, ",")
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	default:
		return fmt.Sprint(v)
	}
}

// formFor is the form for b. rows are the uplink destinations as a refused form had them (nil: b's).
func formFor(b *boxconfig.Box, l boxconfig.Layout, rows []destRow) []section {
	var sens section
	sens.Title = "Sensor"
	for _, sf := range sensorFields {
		f := &field{Key: "sensor." + sf.key, Label: sf.label, Help: sf.help, Kind: sf.kind, Value: str(b.Sensor[sf.key])}
		switch sf.kind {
		case "select":
			f.Options = []string{"", "0", "1", "any"}
		case "checkbox":
			f.Checked = b.Sensor[sf.key] == true || b.Sensor[sf.key] == "true"
		}
		sens.Fields = append(sens.Fields, f)
	}
	if rows == nil {
		rows = destRowsFor(b.Uplink)
	}
	secs := append([]section{sens}, destSections(rows, l)...)
	st, _ := b.Network["static"].(map[string]any)
	net := section{Title: "Management port"}
	for _, nf := range networkFields {
		net.Fields = append(net.Fields, &field{Key: "network.static." + nf.key, Label: nf.label, Help: nf.help, Kind: "text", Value: str(st[nf.key])})
	}
	upd := section{Title: "Automatic updates"}
	for _, uf := range updateFields {
		upd.Fields = append(upd.Fields, &field{Key: "update." + uf.key, Label: uf.label, Help: uf.help, Kind: "text", Value: str(b.Update[uf.key])})
	}
	return append(secs, net, upd)
}

func list(s string) []any {
	var out []any
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		out = append(out, f)
	}
	return out
}

// fromForm puts the form's values into b, leaving the keys the form does not show alone. An empty
// field removes its key (the default applies). The uplink destinations' rows come back as the form
// had them, for a refused form to be shown again; a form made from another configuration than the
// one in force is a conflict, and nothing is taken from it.
func fromForm(b *boxconfig.Box, r *http.Request, l boxconfig.Layout) (*destForm, boxconfig.Errors, error) {
	var errs boxconfig.Errors
	val := func(k string) string { return strings.TrimSpace(r.PostFormValue(k)) }
	sens := map[string]any{}
	for k, v := range b.Sensor {
		sens[k] = v
	}
	for _, sf := range sensorFields {
		v := val("sensor." + sf.key)
		delete(sens, sf.key)
		switch {
		case sf.kind == "checkbox":
			if v != "" {
				sens[sf.key] = true
			}
		case v != "":
			sens[sf.key] = v
		}
	}
	b.Sensor = sens

	df, derrs, err := destsFromForm(b, r, l)
	if err != nil {
		return nil, nil, err
	}
	errs = append(errs, derrs...)

	netw := map[string]any{}
	for k, v := range b.Network {
		netw[k] = v
	}
	st := map[string]any{}
	for _, nf := range networkFields {
		v := val("network.static." + nf.key)
		if v == "" {
			continue
		}
		if nf.key == "dns" || nf.key == "ntp" {
			st[nf.key] = list(v)
		} else {
			st[nf.key] = v
		}
	}
	delete(netw, "static")
	if len(st) > 0 {
		netw["static"] = st
	}
	b.Network = netw

	upd := map[string]any{}
	for k, v := range b.Update {
		upd[k] = v
	}
	for _, uf := range updateFields {
		delete(upd, uf.key)
		if v := val("update." + uf.key); v != "" {
			upd[uf.key] = v
		}
	}
	b.Update = upd
	if len(upd) == 0 {
		b.Update = nil // no repository: updated stays not configured
	}
	return df, errs, nil
}

// attach puts each error next to its field and returns those without a field on the form.
func attach(secs []section, errs boxconfig.Errors) []string {
	by := map[string]*field{}
	for _, sec := range secs {
		for _, f := range sec.Fields {
			by[f.Key] = f
		}
	}
	var other []string
	for _, e := range errs {
		k := e.Key
		f := by[k]
		if f == nil {
			// dns[1] belongs to the dns field; api_key_file to the key.
			if base, _, ok := strings.Cut(k, "["); ok && strings.HasPrefix(k, "network.") {
				f = by[base]
			} else if strings.HasSuffix(k, ".api_key_file") {
				f = by[strings.TrimSuffix(k, "_file")]
			}
		}
		if f == nil {
			other = append(other, e.Error())
			continue
		}
		f.Errors = append(f.Errors, e.Msg)
	}
	sort.Strings(other)
	return other
}

// configFlags are statusd's flags for the configuration page and the provisioning.
type configFlags struct {
	perm, bootDevice, gokrazySocket *string
	provision                       *bool
}

func registerConfigFlags(fs *flag.FlagSet) *configFlags {
	return &configFlags{
		perm:          fs.String("perm", "/perm", "`DIR` of the box configuration (dnssensor.json and the daemons' files under it); empty: no configuration page"),
		provision:     fs.Bool("provision", false, "at start, apply dnssensor.json from the boot partition (and remove it) when it checks out; the image sets it (off by default, so statusd run by hand never mounts a workstation's partition 1)"),
		bootDevice:    fs.String("boot-device", "", "the boot partition's block `DEVICE` (default: partition 1 of the root file system's disk, from /proc/cmdline)"),
		gokrazySocket: fs.String("gokrazy-socket", "/run/gokrazy-http.sock", "gokrazy's HTTP API `SOCKET`, used to (re)start a daemon whose configuration changed; empty: none is restarted"),
	}
}

// setup finishes an interrupted change, provisions from the boot partition and restarts what
// either changed, before the page serves.
func (cf *configFlags) setup(ctx context.Context, s *Server, ds []Daemon) {
	if *cf.perm == "" {
		return
	}
	c := &Config{Layout: boxconfig.Layout{Perm: *cf.perm}}
	for _, d := range ds {
		if d.Name == "sensord" {
			c.SensordSocket = d.Socket
		}
	}
	if *cf.gokrazySocket != "" {
		g := &GokrazyRestarter{Socket: *cf.gokrazySocket, Password: s.Password}
		c.Restart = g.Restart
	}
	s.Config = c
	changed, err := boxconfig.Reconcile(c.Layout)
	if err != nil {
		s.logf("statusd: the box configuration %s does not check out: %v", c.Layout.BoxFile(), err)
	}
	if *cf.provision {
		var console io.Writer
		if f, err := os.OpenFile("/dev/console", os.O_WRONLY|syscall.O_NOCTTY, 0); err == nil {
			defer f.Close()
			console = f
		}
		p := &Provisioner{Device: *cf.bootDevice, Layout: c.Layout, Console: console, Logf: s.logf}
		if res := p.Run(); res != nil {
			c.Provisioned = res
			changed = append(changed, res.Changed...)
		}
	}
	if len(changed) > 0 {
		// gokrazy starts its services and its HTTP API side by side: at boot the API may not
		// answer yet, so the start-time restarts are retried for a while, in the background.
		go func() {
			restart := c.Restart
			if restart != nil {
				restart = func(ctx context.Context, d string) error {
					var err error
					for range 30 {
						if err = c.Restart(ctx, d); err == nil {
							return nil
						}
						select {
						case <-ctx.Done():
							return err
						case <-time.After(2 * time.Second):
						}
					}
					return err
				}
			}
			s.logf("statusd: configuration at start: %s", s.restartWith(ctx, dedup(changed), restart, s.sensordRuns(ctx)))
		}()
	}
}

func dedup(ss []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

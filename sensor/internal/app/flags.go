// Package app is sensord: flags and configuration, wiring of inputs, pipeline and outputs, and the
// stats line. cmd/sensord only calls Main.
package app

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sie-europe/dnssensor/sensor/internal/pipeline"
)

// Options are sensord's settings after flags and the config file are merged.
type Options struct {
	Read       []string
	Write      string
	JSON       string
	Zlib       bool
	Source     uint32
	HasSource  bool
	Pipeline   pipeline.Config
	StatsEvery time.Duration
	CPUProfile string
	// MemoryLimit is the Go heap's soft limit; the pipeline's caps bound what traffic can add.
	MemoryLimit int64
	// Workers is the number of sharded pipelines (1: no sharding).
	Workers   int
	Live      liveOptions  // -i, -dnstap, -dnstap-file (live.go)
	Spool     spoolOptions // -spool* (spool.go)
	dnstapAll bool         // dnstap without -resolver: every resolver-side message

	// Health is -health and -health-addr (health.go).
	Health healthOptions

	// Discovery: capture interfaces and a config file, but no resolver yet; sensord makes no
	// records and counts the sources of queries for the status page (discovery.go).
	Discovery bool

	selfTest selfTestState // the privacy self-test and its gate (selftest.go)
	reload   *reloadState  // the -config file followed across reloads (reload.go); nil: not followed
	reloaded bool          // this run follows a reload: -w/-J append
}

// usageNote is printed under the flag list.
const usageNote = `
Reads captures, pairs each resolver query with its response, scrubs what identifies end users and
writes NMSG base:dnsqr records (as nmsgtool -T dnsqr would). Example:

  sensord -r capture.pcap -resolver 192.0.2.53,2001:db8::53 -w out.nmsg -J -

A config file (-config) holds the same settings as a JSON object whose keys are the flag names,
e.g. {"resolver": "192.0.2.53", "rd": "0", "zero-resolver": true}; flags given on the command line
override it.
`

// ParseFlags parses args (without the program name). Errors name the flag or config key at fault.
func ParseFlags(args []string, stderr io.Writer) (*Options, error) {
	o := &Options{}
	fs := flag.NewFlagSet("sensord", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: sensord -r FILE[,FILE...] | -i IF[,IF...] | -dnstap unix:SOCKET | -dnstap-file FILE  -resolver LIST [flags]\n\n")
		fs.PrintDefaults()
		fmt.Fprint(stderr, usageNote)
	}
	read := fs.String("r", "", "read pcap or pcapng `FILE`s (comma-separated)")
	fs.StringVar(&o.Write, "w", "", "write NMSG to `FILE` (- for stdout)")
	fs.StringVar(&o.JSON, "J", "", "write nmsgtool -J JSON lines to `FILE` (- for stdout)")
	fs.BoolVar(&o.Zlib, "z", false, "zlib-compress NMSG containers")
	source := fs.String("source", "", "NMSG source `ID` (hex with 0x, or decimal)")
	resolver := fs.String("resolver", "", "resolver addresses or CIDRs, IPv4 and IPv6 (`LIST`, comma-separated); DNSQR_RES_ADDRS")
	fromIface := fs.Bool("resolver-from-interface", false, "the resolver is this host: its addresses are those of the -i capture interfaces (IPv4 and global IPv6, read at start), added to -resolver; for a sensor on the resolver's own upstream interface")
	auth := fs.String("authoritative", "", "authority mode: authoritative server addresses or CIDRs (`LIST`); DNSQR_AUTH_ADDRS")
	fs.BoolVar(&o.Pipeline.AllowWideResolver, "allow-wide-resolver", false, "accept -resolver/-authoritative prefixes shorter than /16 (IPv4) or /32 (IPv6); such a prefix almost always takes clients for resolvers")
	fs.BoolVar(&o.Pipeline.Unsolicited, "unsolicited", false, "keep responses that match no query as UDP_UNSOLICITED_RESPONSE (TCP: records without a query), as the C reference does; off, they are dropped and counted, since a client answering from port 53 looks like a late authority")
	fs.DurationVar(&o.Pipeline.Hold, "unsolicited-hold", 500*time.Millisecond, "hold a response that matches no query for this much packet time, so a query read after it (two tap ports) still pairs; 0: decide at once, in the C reference's record order")
	fs.IntVar(&o.Pipeline.HoldMaxBytes, "unsolicited-hold-bytes", 4<<20, "most octets of responses held by -unsolicited-hold; the oldest is decided early (counted) beyond this")
	fs.BoolVar(&o.Pipeline.MDNS, "mdns", false, "keep port 5353 (mDNS) traffic as the C reference does; it is hosts' own names, not resolver cache misses, so it is dropped and counted by default")
	fs.BoolVar(&o.Pipeline.ZeroResolver, "zero-resolver", false, "zero the resolver address in records and packets; DNSQR_ZERO_RESOLVER_ADDRESS")
	rd := fs.String("rd", "", "keep only queries with this RD bit: 0, 1 or any (default 0 in resolver mode, any in authority mode); DNSQR_CAPTURE_RD")
	qr := fs.String("qr", "", "0: emit every query unpaired, 1: every response unpaired (default: pair them); DNSQR_CAPTURE_QR")
	exclude := fs.String("qname-exclude", "", "drop transactions for these names and below (`LIST`); DNSQR_FILTER_QNAMES_EXCLUDE")
	include := fs.String("qname-include", "", "exceptions to -qname-exclude (`LIST`); DNSQR_FILTER_QNAMES_INCLUDE")
	fs.DurationVar(&o.Pipeline.QueryTimeout, "query-timeout", 60*time.Second, "emit a query as unanswered after this much packet time; DNSQR_QUERY_TIMEOUT")
	fs.IntVar(&o.Pipeline.StateMax, "state-max", 131072, "most pending queries held; the oldest is emitted as unanswered beyond this; DNSQR_STATE_TABLE_MAX")
	fs.IntVar(&o.Pipeline.Defrag.MaxBytes, "frag-max-bytes", 16<<20, "most octets of IP fragments held for reassembly; the oldest datagram is dropped (counted) beyond this")
	fs.IntVar(&o.Pipeline.TCP.MaxTotalBytes, "tcp-max-bytes", 64<<20, "most octets buffered for DNS-over-TCP reassembly; streams are evicted (counted) beyond this")
	fs.Int64Var(&o.MemoryLimit, "memory-limit", 256<<20, "soft limit on the Go heap in octets (runtime/debug.SetMemoryLimit); the caps above bound what traffic can make it hold")
	stateBytes := fs.Int64("state-max-bytes", 0, "most octets the pair table, IP fragments and TCP buffers hold together; the oldest is evicted (counted) beyond this (default: half of -memory-limit)")
	fs.DurationVar(&o.StatsEvery, "stats", 0, "print the stats line at this `interval` too (0: only at exit)")
	config := fs.String("config", "", "read settings from JSON `FILE`; flags override")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile to `FILE` (for benchmarks)")
	fs.IntVar(&o.Workers, "workers", 1, "pairing pipelines, one goroutine each, frames sharded by a symmetric hash of the two addresses (pairing is unchanged); use the box's core count minus one for the capture")
	o.Live.register(fs)
	o.Spool.register(fs)
	o.Health.register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags come before nothing else)", fs.Arg(0))
	}
	if *config != "" {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if err := applyConfig(fs, *config, set); err != nil {
			return nil, err
		}
	}
	var err error
	if *read != "" {
		o.Read = splitList(*read)
	}
	if *source != "" {
		v, err := strconv.ParseUint(*source, 0, 32)
		if err != nil {
			return nil, fmt.Errorf("-source: %q is not a 32-bit number (use 0x19721976 or 427956598)", *source)
		}
		o.Source, o.HasSource = uint32(v), true
	}
	if o.Pipeline.Resolvers, err = parsePrefixes(*resolver, o.Pipeline.AllowWideResolver); err != nil {
		return nil, fmt.Errorf("-resolver: %v", err)
	}
	if o.Pipeline.Authorities, err = parsePrefixes(*auth, o.Pipeline.AllowWideResolver); err != nil {
		return nil, fmt.Errorf("-authoritative: %v", err)
	}
	if *resolver != "" && len(o.Pipeline.Resolvers) == 0 {
		return nil, fmt.Errorf("-resolver: the list is empty")
	}
	o.Pipeline.RD = 0
	if len(o.Pipeline.Authorities) > 0 {
		o.Pipeline.RD = -1
	}
	switch *rd {
	case "":
	case "0", "1":
		o.Pipeline.RD = int((*rd)[0] - '0')
	case "any":
		o.Pipeline.RD = -1
	default:
		return nil, fmt.Errorf("-rd: %q is not 0, 1 or any", *rd)
	}
	switch *qr {
	case "":
	case "0":
		o.Pipeline.QR = pipeline.QRQueriesOnly
	case "1":
		o.Pipeline.QR = pipeline.QRResponsesOnly
	default:
		return nil, fmt.Errorf("-qr: %q is not 0 or 1", *qr)
	}
	o.Pipeline.QnameExclude = splitList(*exclude)
	o.Pipeline.QnameInclude = splitList(*include)
	if o.Pipeline.QueryTimeout < time.Second {
		return nil, fmt.Errorf("-query-timeout: %v is shorter than one second (the C reference counts whole seconds)", o.Pipeline.QueryTimeout)
	}
	if o.Pipeline.Defrag.MaxBytes < 65536 {
		return nil, fmt.Errorf("-frag-max-bytes: %d is below one largest datagram (65536)", o.Pipeline.Defrag.MaxBytes)
	}
	if o.Pipeline.TCP.MaxTotalBytes < 65536 {
		return nil, fmt.Errorf("-tcp-max-bytes: %d is below one largest message (65536)", o.Pipeline.TCP.MaxTotalBytes)
	}
	if err := o.setStateBytes(*stateBytes); err != nil {
		return nil, err
	}
	if o.Workers < 1 || o.Workers > 64 {
		return nil, fmt.Errorf("-workers: %d outside [1, 64]", o.Workers)
	}
	if o.Pipeline.StateMax < 1 {
		return nil, fmt.Errorf("-state-max: %d must be at least 1", o.Pipeline.StateMax)
	}
	if o.Pipeline.Hold < 0 || o.Pipeline.Hold > 10*time.Second {
		return nil, fmt.Errorf("-unsolicited-hold: %v outside [0, 10s] (a query is never that much later than its response)", o.Pipeline.Hold)
	}
	if o.Pipeline.HoldMaxBytes < 65536 {
		return nil, fmt.Errorf("-unsolicited-hold-bytes: %d is below one largest message (65536)", o.Pipeline.HoldMaxBytes)
	}
	if err := o.Live.finish(o); err != nil {
		return nil, err
	}
	if err := o.Spool.finish(); err != nil {
		return nil, err
	}
	if *fromIface {
		ps, err := interfacePrefixes(o.Live.Ifaces)
		if err != nil {
			return nil, fmt.Errorf("-resolver-from-interface: %v", err)
		}
		o.Pipeline.Resolvers = append(o.Pipeline.Resolvers, ps...)
	}
	// A box's config file without a resolver: discovery mode (configured.go, discovery.go).
	o.Discovery = *config != "" && len(o.Live.Ifaces) > 0 && len(o.Pipeline.Resolvers) == 0 && len(o.Pipeline.Authorities) == 0
	if err := o.Pipeline.Validate(); err != nil && !o.Discovery {
		return nil, err
	}
	if len(o.Read) == 0 && !o.Live.any() {
		return nil, errors.New("-r: no input; give capture files with -r FILE[,FILE...], interfaces with -i IF[,IF...], or -dnstap/-dnstap-file")
	}
	if o.Write == "" && o.JSON == "" && o.Spool.Dir == "" {
		return nil, errors.New("-w/-J: no output; give -w FILE for NMSG, -J FILE for JSON lines (- is stdout) or -spool DIR")
	}
	if o.Write == "-" && o.JSON == "-" {
		return nil, errors.New("-w/-J: only one of them can write to stdout")
	}
	return o, nil
}

// applyConfig sets every flag named in the JSON file that the command line did not set.
func applyConfig(fs *flag.FlagSet, path string, set map[string]bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("-config: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("-config %s: not a JSON object of settings: %v", path, err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "config" || fs.Lookup(k) == nil {
			return fmt.Errorf("-config %s: unknown key %q; valid keys are the flag names (see sensord -h)", path, k)
		}
		if set[k] {
			continue
		}
		var s string
		switch v := m[k].(type) {
		case string:
			s = v
		case bool:
			s = strconv.FormatBool(v)
		case float64:
			s = strconv.FormatFloat(v, 'f', -1, 64)
		case []any:
			parts := make([]string, len(v))
			for i, x := range v {
				parts[i] = fmt.Sprint(x)
			}
			s = strings.Join(parts, ",")
		default:
			return fmt.Errorf("-config %s: key %q: use a string, number, boolean or list", path, k)
		}
		if err := fs.Set(k, s); err != nil {
			return fmt.Errorf("-config %s: key %q: %v", path, k, err)
		}
	}
	return nil
}

func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}

// parsePrefixes reads a list of addresses and CIDRs. IPv4-mapped IPv6 forms become IPv4, since
// IPv4 packets carry IPv4 addresses; a zone is dropped, as packets carry none. Unless wide is
// set, a prefix wider than /16 (IPv4) or /32 (IPv6) is refused: it takes clients for resolvers.
// interfaceAddrs reads an interface's addresses; a variable for tests.
var interfaceAddrs = func(name string) ([]net.Addr, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, err
	}
	return ifi.Addrs()
}

// interfacePrefixes are the host's own addresses on ifaces, each as a /32 or /128: IPv4 and
// global (or unique local) IPv6. Link-local and loopback addresses are left out: a resolver does
// not recurse from them, and fe80::/10 is every host's.
func interfacePrefixes(ifaces []string) ([]netip.Prefix, error) {
	if len(ifaces) == 0 {
		return nil, errors.New("no capture interface (-i) to read addresses from")
	}
	var out []netip.Prefix
	for _, name := range ifaces {
		as, err := interfaceAddrs(name)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
		n := 0
		for _, a := range as {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsUnspecified() || ip.IsMulticast() {
				continue
			}
			out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
			n++
		}
		if n == 0 {
			return nil, fmt.Errorf("%s has no IPv4 or global IPv6 address (give -resolver instead, or capture on the resolver's upstream interface)", name)
		}
	}
	return out, nil
}

func parsePrefixes(s string, wide bool) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range splitList(s) {
		var p netip.Prefix
		if strings.Contains(f, "/") {
			var err error
			if p, err = netip.ParsePrefix(f); err != nil {
				return nil, fmt.Errorf("%q is not an address or CIDR", f)
			}
			if a := p.Addr(); a.Is4In6() {
				if p.Bits() < 96 {
					return nil, fmt.Errorf("%q: an IPv4-mapped prefix must be /96 or longer; give the IPv4 CIDR", f)
				}
				p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
			}
		} else {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("%q is not an address or CIDR", f)
			}
			a = a.Unmap().WithZone("")
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if !wide {
			if err := pipeline.CheckWidth(p); err != nil {
				return nil, err
			}
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

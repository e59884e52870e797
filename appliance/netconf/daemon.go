package netconf

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/sie-europe/dnssensor/appliance/config"
	"github.com/sie-europe/dnssensor/appliance/netconf/dhcpc"
	"github.com/sie-europe/dnssensor/hardware"
	"github.com/sie-europe/dnssensor/internal/cli"
	"github.com/sie-europe/dnssensor/internal/procprio"
)

// Options configure netconfd.
type Options struct {
	Mgmt   string
	Taps   []string
	Config string // box configuration file; absent means DHCP on Mgmt
	RunDir string
	// ResolvConf, if set, is a second copy of resolv.conf: the file the system's resolver reads.
	ResolvConf string
	Hostname   string
	Poll       time.Duration // how often ports are re-checked and links.json rewritten
	Health     string        // unix socket of the health contract; empty: off
}

// ParseFlags reads netconfd's command line.
func ParseFlags(args []string, stderr io.Writer) (*Options, error) {
	fs := flag.NewFlagSet("netconfd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &Options{}
	profile := fs.String("profile", "", "hardware profile naming the management and tap interfaces (see hardware/)")
	fs.StringVar(&o.Mgmt, "mgmt", "", "management interface (instead of -profile)")
	taps := fs.String("tap", "", "tap interfaces, comma-separated (instead of -profile)")
	fs.StringVar(&o.Config, "config", "/perm/netconfd/config.json", "box configuration (its network section); absent means DHCP")
	fs.StringVar(&o.RunDir, "run-dir", "/run/netconfd", "where resolv.conf, ntp.json, lease.json and links.json are written")
	fs.StringVar(&o.ResolvConf, "resolv-conf", "/tmp/resolv.conf", "also write resolv.conf here, for the system resolver (the image links /etc/resolv.conf to /tmp/resolv.conf); empty: only in -run-dir")
	fs.StringVar(&o.Hostname, "hostname", "", "host name sent to the DHCP server (default: the system's)")
	fs.DurationVar(&o.Poll, "poll", 5*time.Second, "how often ports are re-checked and links.json rewritten")
	fs.StringVar(&o.Health, "health", "", "serve /health.json, /metrics and /metrics.json on this unix `SOCKET` (the appliance: /run/netconfd/health.sock); empty: off")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *taps != "" {
		o.Taps = strings.Split(*taps, ",")
	}
	switch {
	case *profile != "" && (o.Mgmt != "" || *taps != ""):
		return nil, fmt.Errorf("-profile and -mgmt/-tap exclude each other: the profile names the interfaces")
	case *profile != "":
		p, err := hardware.Get(*profile)
		if err != nil {
			return nil, fmt.Errorf("-profile: %w", err)
		}
		// A profile has one management port; a second is not configured.
		o.Mgmt, o.Taps = p.Management[0], p.Tap
	case o.Mgmt == "":
		return nil, fmt.Errorf("no management interface: give -profile NAME or -mgmt IF")
	}
	for _, t := range o.Taps {
		if t == "" || t == o.Mgmt {
			return nil, fmt.Errorf("-tap %q: an empty name, or the management interface", *taps)
		}
	}
	if o.Poll <= 0 {
		return nil, fmt.Errorf("-poll %v: must be positive", o.Poll)
	}
	if o.Hostname == "" {
		o.Hostname, _ = os.Hostname()
	}
	return o, nil
}

// Main runs netconfd with args and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Main(ctx, "netconfd", args, stderr, ParseFlags, Run)
}

// tapsAfter bounds how long the tap ports and the health server wait for the management
// port's first address at start (a DHCP server's answer takes well under a second); a variable
// for TestManagementFirst, whose loaded machine may take longer.
var tapsAfter = 2 * time.Second

// Run configures the ports and keeps them configured until ctx ends; then it releases the DHCP
// lease and removes the management address (a static address stays: the box must stay
// reachable while netconfd restarts).
func Run(ctx context.Context, o *Options, logf func(string, ...any)) error {
	if err := os.MkdirAll(o.RunDir, 0o755); err != nil {
		return err
	}
	d := &daemon{o: o, logf: logf, taps: map[string]*TapReport{}, tapErr: map[string]string{}, ctx: ctx,
		hs: &healthState{txAtSilence: map[string]uint64{}}, managed6: make(chan struct{}, 1)}
	// The steps between power-on and the management address, in the log with the kernel's
	// uptime: the first HTTP answer after a boot waits for them.
	logf("started%s", sinceBoot())

	// The management port first: its address is what the box's first answer after a boot waits
	// for. The tap ports and the health server follow once it has one (or after tapsAfter):
	// setting up a tap port (offloads, a jumbo MTU, link up: receive buffers filled under the
	// kernel's RTNL lock) took 1.7 s of a QEMU guest's boot before the management port even came
	// up, and side by side it held up the DHCP address as long. The tap ports lose nothing by
	// waiting: each is made silent before its own link up, and nothing else brings one up.
	d.m = &mgmtPort{iface: o.Mgmt, runDir: o.RunDir, resolvConf: o.ResolvConf, logf: logf, onPublish: d.hs.setAddr,
		addressed: make(chan struct{})}
	if err := d.m.setConfigError(""); err != nil {
		return err
	}
	link, err := netlink.LinkByName(o.Mgmt)
	if err != nil {
		return fmt.Errorf("management port: %w", err)
	}
	// Without it, removing the old primary address of a subnet takes the new one (added first, so
	// a secondary) with it, and the default route too: a readdressing on the same network
	// would leave the box unreachable (seen in TestStatic).
	if err := os.WriteFile(filepath.Join(procSys, "net/ipv4/conf", o.Mgmt, "promote_secondaries"), []byte("1\n"), 0o644); err != nil {
		logf("management port %s: promote_secondaries: %v", o.Mgmt, err)
	}
	d.mgmtLink = link
	defer d.stopDHCP()
	defer d.stopDHCP6()
	if err := d.reload(); err != nil {
		return err
	}
	select {
	case <-d.m.addressed:
	case <-time.After(tapsAfter):
	case <-ctx.Done():
	}
	d.configureTaps()
	if err := procprio.EndBoost(); err != nil { // the tap ports are up: the start's boost ends
		logf("%v", err)
	}

	hctx, stopHealth := context.WithCancel(ctx)
	waitHealth, err := serveHealth(hctx, o, d.hs, logf)
	if err != nil {
		stopHealth()
		return err
	}
	defer func() { stopHealth(); waitHealth() }()

	var ra rdnss
	raCtx, stopRA := context.WithCancel(ctx)
	raDone := make(chan struct{})
	defer func() { stopRA(); <-raDone }()
	go func() {
		defer close(raDone)
		err := listenRA(raCtx, o.Mgmt, &ra, logf, func() {
			if err := d.m.setRA(ra.current(time.Now())); err != nil {
				logf("%v", err)
			}
		}, func() {
			select {
			case d.managed6 <- struct{}{}:
			default:
			}
		})
		if err != nil {
			logf("%v (IPv6 DNS servers from routers are not used)", err)
		}
	}()

	t := time.NewTicker(o.Poll)
	defer t.Stop()
	for {
		d.writeLinks()
		var dhcpDone, dhcp6Done chan error
		if d.dhcp != nil {
			dhcpDone = d.dhcp.done
		}
		if d.dhcp6 != nil {
			dhcp6Done = d.dhcp6.done
		}
		select {
		case <-ctx.Done():
			return errors.Join(d.stopDHCP(), d.stopDHCP6())
		case err := <-dhcpDone:
			d.dhcp.close()
			d.dhcp = nil
			if ctx.Err() != nil {
				// Shutdown: the client ended because ctx did, which select may see first.
				return errors.Join(err, d.stopDHCP6())
			}
			return fmt.Errorf("dhcp4 client ended: %v", err)
		case err := <-dhcp6Done:
			d.dhcp6.close()
			d.dhcp6 = nil
			if ctx.Err() != nil {
				return errors.Join(err, d.stopDHCP())
			}
			return fmt.Errorf("dhcp6 client ended: %v", err)
		case <-d.managed6:
			if !d.want6 {
				logf("management port %s: a router says addresses are managed: DHCPv6", o.Mgmt)
			}
			d.want6 = true
			d.maybeStartDHCP6()
		case <-t.C:
			d.maybeStartDHCP6()
			d.configureTaps()
			// Servers whose announced lifetime has ended go.
			if err := d.m.setRA(ra.current(time.Now())); err != nil {
				logf("%v", err)
			}
			if err := d.reload(); err != nil {
				return err
			}
		}
	}
}

// dhcpRun is a running DHCPv4 client.
type dhcpRun struct {
	stop  func()
	done  chan error
	close func() error
}

func (d *daemon) startDHCP() error {
	nc, err := dhcpc.NewNClient4(d.o.Mgmt, d.o.Hostname, nil)
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(d.ctx)
	r := &dhcpRun{stop: stop, done: make(chan error, 1), close: nc.Close}
	c := &dhcpc.Client{Ex: nc, Apply: d.m, Logf: d.logf, OnState: d.m.setDHCPState}
	go func() { r.done <- c.Run(ctx) }()
	d.dhcp = r
	return nil
}

// maybeStartDHCP6 starts the DHCPv6 client once a router has said addresses are managed, unless a
// static IPv6 address is configured. Opening its socket fails while the port's link-local
// address is still tentative: it is tried again at the next poll, and said once.
func (d *daemon) maybeStartDHCP6() {
	if !d.want6 || d.static6 || d.dhcp6 != nil {
		return
	}
	nc, err := dhcpc.NewNClient6(d.o.Mgmt, nil)
	if err != nil {
		if msg := err.Error(); msg != d.dhcp6Err {
			d.logf("%v (trying again)", err)
			d.dhcp6Err = msg
		}
		return
	}
	d.dhcp6Err = ""
	ctx, stop := context.WithCancel(d.ctx)
	r := &dhcpRun{stop: stop, done: make(chan error, 1), close: nc.Close}
	c := &dhcpc.Client{Ex: nc, Apply: v6Applier{d.m}, Logf: d.logf, Proto: "dhcp6"}
	go func() { r.done <- c.Run(ctx) }()
	d.dhcp6 = r
}

// stopDHCP6 stops the DHCPv6 client, which releases its lease and removes the address.
func (d *daemon) stopDHCP6() error {
	r := d.dhcp6
	if r == nil {
		return nil
	}
	d.dhcp6 = nil
	r.stop()
	err := <-r.done
	r.close()
	return err
}

// stopDHCP stops the client, which releases its lease and removes the address.
func (d *daemon) stopDHCP() error {
	r := d.dhcp
	if r == nil {
		return nil
	}
	d.dhcp = nil
	r.stop()
	err := <-r.done
	r.close()
	return err
}

// reload applies the box configuration if it changed since it was last read. A configuration
// that does not check out is reported (lease.json's config_error and the log) and changes
// nothing: the addressing in force, static or DHCP, stays. Only a failure to start DHCP at all
// is returned (gokrazy restarts netconfd).
func (d *daemon) reload() error {
	data, readErr := os.ReadFile(d.o.Config)
	missing := errors.Is(readErr, fs.ErrNotExist)
	unreadable := readErr != nil && !missing
	if unreadable {
		// Compared like content, so that the same failure is reported once, not every poll.
		data = []byte(readErr.Error())
	}
	if d.loaded && bytes.Equal(data, d.lastConfig) && missing == d.lastMissing {
		return nil
	}
	d.lastConfig, d.lastMissing = data, missing
	var sn *config.StaticNet
	bad := false
	if unreadable {
		d.refuse(readErr)
		if d.loaded {
			return nil
		}
		bad = true // nothing in force yet: DHCP is the fallback
	} else if !missing {
		b, err := config.Parse(data)
		if err != nil {
			d.refuse(fmt.Errorf("%s: %w", d.o.Config, err))
			if d.loaded {
				return nil
			}
			// Nothing in force yet: DHCP is the fallback.
			bad = true
		} else {
			sn, _ = b.Network.Check()
		}
	}
	if err := mgmtIPv6(d.o.Mgmt, sn == nil || !sn.Addr6.IsValid()); err != nil {
		d.logf("%v", err)
	}
	d.static6 = sn != nil && sn.Addr6.IsValid()
	if d.static6 {
		if err := d.stopDHCP6(); err != nil {
			d.logf("stopping DHCPv6 for the static configuration: %v", err)
		}
	}
	if !d.mgmtUp {
		// Up only now, so that the kernel's first router solicitation already follows the
		// configuration's IPv6 choice.
		if err := netlink.LinkSetUp(d.mgmtLink); err != nil {
			return fmt.Errorf("management port %s: link up: %w", d.o.Mgmt, err)
		}
		d.logf("management port %s up%s", d.o.Mgmt, sinceBoot())
		d.mgmtUp = true
	}
	if sn == nil || !sn.Addr.IsValid() {
		if err := d.m.setStatic(sn); err != nil {
			d.logf("%v", err)
		}
		if d.dhcp == nil {
			if err := d.startDHCP(); err != nil {
				return err
			}
		}
	} else {
		if err := d.stopDHCP(); err != nil {
			d.logf("stopping DHCP for the static configuration: %v", err)
		}
		if err := d.m.setStatic(sn); err != nil {
			d.logf("applying the configuration: %v", err)
			_ = d.m.setConfigError("applying the configuration: " + err.Error())
			d.loaded = true
			return nil
		}
	}
	d.loaded = true
	if bad {
		return nil
	}
	if err := d.m.setConfigError(""); err != nil {
		d.logf("%v", err)
	}
	d.logf("configuration applied: %s", describe(sn))
	return nil
}

func (d *daemon) refuse(err error) {
	d.logf("configuration not applied, the one in force stays: %v", err)
	if e := d.m.setConfigError(err.Error()); e != nil {
		d.logf("%v", e)
	}
}

func describe(sn *config.StaticNet) string {
	if sn == nil {
		return "DHCPv4"
	}
	var parts []string
	if sn.Addr.IsValid() {
		parts = append(parts, "static "+sn.Addr.String()+" via "+sn.GW.String())
	} else {
		parts = append(parts, "DHCPv4")
	}
	if sn.Addr6.IsValid() {
		parts = append(parts, "static "+sn.Addr6.String()+" via "+sn.GW6.String())
	}
	if len(sn.DNS) > 0 {
		parts = append(parts, fmt.Sprintf("DNS %v", sn.DNS))
	}
	if len(sn.NTP) > 0 {
		parts = append(parts, fmt.Sprintf("NTP %v", sn.NTP))
	}
	return strings.Join(parts, ", ")
}

type daemon struct {
	o    *Options
	logf func(string, ...any)
	ctx  context.Context
	taps map[string]*TapReport // nil entry: not yet configured
	// tapErr is the last failure logged per tap port.
	tapErr map[string]string
	m      *mgmtPort
	dhcp   *dhcpRun // nil: not running
	hs     *healthState

	// DHCPv6: wanted once a router advertisement had the M flag (managed6 says so from the
	// RA reader), unless a static IPv6 address is configured.
	managed6 chan struct{}
	want6    bool
	static6  bool
	dhcp6    *dhcpRun
	dhcp6Err string // the last failure to start, said once

	mgmtLink netlink.Link
	mgmtUp   bool

	loaded      bool // a configuration (or its absence) has been applied
	lastConfig  []byte
	lastMissing bool
}

// configureTaps (re)configures each tap port that is not yet known to be silent, so that an
// adapter plugged in later is silenced before anything else brings it up, and one whose setup
// failed is tried again.
func (d *daemon) configureTaps() {
	for _, t := range d.o.Taps {
		// Read back every time: an adapter unplugged and plugged in again is a new interface.
		if r, err := readTap(t, ""); err == nil && r.Up && d.taps[t] != nil {
			continue
		}
		r, err := ConfigureTap(t)
		if err != nil {
			// Said once per new failure, not every poll: an unplugged adapter stays unplugged.
			if msg := err.Error(); msg != d.tapErr[t] {
				d.logf("%v", err)
				d.tapErr[t] = msg
			}
			d.taps[t] = nil
			continue
		}
		delete(d.tapErr, t)
		d.logf("tap port %s: silent, promiscuous, up; offloads %s", t, offloadSummary(r))
		d.taps[t] = &r
	}
}

func offloadSummary(r TapReport) string {
	if r.OffloadError != "" {
		return "unknown (" + r.OffloadError + ")"
	}
	var on []string
	for _, o := range r.Offloads {
		if o.Active {
			on = append(on, o.Name+" (driver keeps it on)")
		}
	}
	if len(on) == 0 {
		return "off"
	}
	return "off except " + strings.Join(on, ", ")
}

func (d *daemon) writeLinks() {
	links := []Link{readLink(d.o.Mgmt, "management")}
	for _, t := range d.o.Taps {
		l := readLink(t, "tap")
		l.Tap = d.taps[t]
		if l.Present && l.Tap == nil {
			l.Error = "not configured as a silent tap port (see netconfd's log)"
		}
		links = append(links, l)
	}
	d.hs.setLinks(links)
	if err := writeJSON(filepath.Join(d.o.RunDir, LinksFile), links); err != nil {
		d.logf("%v", err)
	}
}

// sinceBoot is " (N.NN s after boot)" from the kernel's uptime, or "" where it cannot be read.
func sinceBoot() string {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return ""
	}
	up, _, _ := strings.Cut(string(b), " ")
	return " (" + up + " s after boot)"
}

package netconf

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sie-europe/dnssensor/appliance/netconf/dhcp4"
	"github.com/sie-europe/dnssensor/hardware"
	"github.com/vishvananda/netlink"
)

// Options configure netconfd.
type Options struct {
	Mgmt     string
	Taps     []string
	Config   string // box configuration file; absent means DHCP on Mgmt
	RunDir   string
	Hostname string
	Poll     time.Duration // how often ports are re-checked and links.json rewritten
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
	fs.StringVar(&o.Hostname, "hostname", "", "host name sent to the DHCP server (default: the system's)")
	fs.DurationVar(&o.Poll, "poll", 5*time.Second, "how often ports are re-checked and links.json rewritten")
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
	o, err := ParseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "netconfd: %v\n", err)
		return 2
	}
	logger := log.New(stderr, "netconfd: ", 0)
	if err := Run(ctx, o, logger.Printf); err != nil {
		fmt.Fprintf(stderr, "netconfd: %v\n", err)
		return 1
	}
	return 0
}

// Run configures the ports and keeps them configured until ctx ends; then it releases the DHCP
// lease and removes the management address.
func Run(ctx context.Context, o *Options, logf func(string, ...any)) error {
	if err := os.MkdirAll(o.RunDir, 0o755); err != nil {
		return err
	}
	d := &daemon{o: o, logf: logf, taps: map[string]*TapReport{}}
	// Tap ports first: they are silent from the moment they come up, whatever the management
	// side does next.
	d.configureTaps()

	m := &mgmtPort{iface: o.Mgmt, runDir: o.RunDir, logf: logf}
	if err := m.publish(Addressing{Interface: o.Mgmt}); err != nil {
		return err
	}
	link, err := netlink.LinkByName(o.Mgmt)
	if err != nil {
		return fmt.Errorf("management port: %w", err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("management port %s: link up: %w", o.Mgmt, err)
	}

	dctx, stopDHCP := context.WithCancel(ctx)
	defer stopDHCP()
	dhcpDone := make(chan error, 1)
	nc, err := dhcp4.NewNClient(o.Mgmt, o.Hostname, nil)
	if err != nil {
		return err
	}
	defer nc.Close()
	c := &dhcp4.Client{Ex: nc, Apply: m, Logf: logf}
	go func() { dhcpDone <- c.Run(dctx) }()

	t := time.NewTicker(o.Poll)
	defer t.Stop()
	for {
		d.writeLinks()
		select {
		case <-ctx.Done():
			stopDHCP()
			return <-dhcpDone
		case err := <-dhcpDone:
			return fmt.Errorf("dhcp4 client ended: %v", err)
		case <-t.C:
			d.configureTaps()
		}
	}
}

type daemon struct {
	o    *Options
	logf func(string, ...any)
	taps map[string]*TapReport // nil entry: not yet configured
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
			d.logf("%v", err)
			d.taps[t] = nil
			continue
		}
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
	if err := writeJSON(filepath.Join(d.o.RunDir, LinksFile), links); err != nil {
		d.logf("%v", err)
	}
}

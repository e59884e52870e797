package status

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
)

// knownDaemons are the daemons whose checks the chain places; one left out of -daemons shows as
// "not configured".
var knownDaemons = []string{"sensord", "uplinkd"}

// Main runs statusd with args until ctx ends and returns the exit status: 2 for a bad flag, 1
// when serving fails.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("statusd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "", "comma-separated `ADDRESSES` (host:port) of the management port to serve on, e.g. 198.51.100.10:8080,[2001:db8::10]:8080; never a tap port (they have no address)")
	listenIface := fs.String("listen-iface", "", "`IFACE:PORT`: serve on every address of the management interface IFACE as DHCP, SLAAC or static configuration gives and takes them, bound to IFACE (never another interface; refused while IFACE is a silent tap port); instead of or beside -listen")
	allowAny := fs.Bool("listen-unspecified-exposes-every-port", false, "allow 0.0.0.0 or [::] in -listen: the page is then reachable on every interface with an address, not just the management port")
	daemons := fs.String("daemons", "sensord,uplinkd", "comma-separated daemons to read, each on /run/NAME/health.sock or NAME=SOCKET; a known daemon left out shows as not configured")
	optional := fs.String("optional", "netconfd", "comma-separated daemons (NAME or NAME=SOCKET) shown only when their socket answers")
	pwFile := fs.String("password-file", "/etc/gokr-pw.txt", "`FILE` holding the device password (gokrazy's); its first line is the password")
	timeout := fs.Duration("timeout", 2*time.Second, "how long to wait for a daemon's answer")
	cf := registerConfigFlags(fs)
	sampleEvery := fs.Duration("sample-every", defaultEvery, "how often to sample the daemons' counters for the rates and the 24-hour chart (at least 1s)")
	gokrazyURL := fs.String("gokrazy-url", "http://127.0.0.1/", "gokrazy's own status page, asked (with the device password) for the image's build timestamp; empty: not asked")
	updated := fs.String("updated", health.SocketPath("updated"), "updated's health `SOCKET`: the page's update section and its Update now and Pause buttons; empty: none")
	logLines := fs.Int("log-lines", defaultLogLines, "how many recent log lines of each daemon the page shows (0: none)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "statusd: unexpected arguments %q\n", fs.Args())
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "statusd: "+format+"\n", a...)
		return 2
	}
	var addrs []string
	if *listen != "" || *listenIface == "" {
		var err error
		if addrs, err = ListenAddrs(*listen, *allowAny); err != nil {
			return fail("%v", err)
		}
	}
	var follow *IfaceListener
	if *listenIface != "" {
		iface, port, err := ParseListenIface(*listenIface)
		if err != nil {
			return fail("%v", err)
		}
		follow = &IfaceListener{Iface: iface, Port: port}
	}
	pw, err := ReadPassword(*pwFile)
	if err != nil {
		return fail("-password-file: %v", err)
	}
	ds, err := parseDaemons(*daemons, false)
	if err != nil {
		return fail("-daemons: %v", err)
	}
	opt, err := parseDaemons(*optional, true)
	if err != nil {
		return fail("-optional: %v", err)
	}
	if *sampleEvery < time.Second {
		return fail("-sample-every %v: at least 1s", *sampleEvery)
	}
	if *logLines < 0 || *logLines > health.DefaultLogLines {
		return fail("-log-lines %d: between 0 and %d", *logLines, health.DefaultLogLines)
	}
	s := &Server{Daemons: append(ds, opt...), Known: knownDaemons, Password: pw, Timeout: *timeout,
		Logf: func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }}
	cf.setup(ctx, s, ds)
	s.Sampler = &Sampler{Daemons: s.Daemons, Every: *sampleEvery, Timeout: *timeout}
	s.Ident = DefaultIdentitySource(pw, socketOf(s.Daemons, "uplinkd"))
	s.Ident.GokrazyURL = *gokrazyURL
	s.Services = &GokrazyServices{URL: *gokrazyURL, Password: pw}
	s.LogLines = *logLines
	s.UpdatedSocket = *updated
	s.Clock = KernelClock
	go s.Sampler.Run(ctx)
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			fmt.Fprintf(stderr, "statusd: -listen: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "statusd: serving on http://%s/\n", ln.Addr())
		lns = append(lns, ln)
	}
	// Requests live in ctx: on SIGTERM a page still asking the daemons (which gokrazy is stopping
	// too, before a reboot) is answered with what it has, instead of holding statusd, and with it
	// gokrazy's reboot, for the shutdown grace below.
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	errc := make(chan error, len(lns)+1)
	for _, ln := range lns {
		go func() { errc <- srv.Serve(ln) }()
	}
	followDone := make(chan struct{})
	if follow != nil {
		follow.Logf = func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }
		follow.Serve = serveIgnoringClose(srv, s.Logf)
		go func() {
			defer close(followDone)
			if err := follow.Run(ctx); err != nil {
				errc <- err
			}
		}()
	} else {
		close(followDone)
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(shut)
	<-followDone
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		fmt.Fprintf(stderr, "statusd: %v\n", serveErr)
		return 1
	}
	return 0
}

// ListenAddrs checks -listen: each a host:port with a literal address; the unspecified addresses
// only with allowAny, since they would serve the page on every port with an address.
func ListenAddrs(list string, allowAny bool) ([]string, error) {
	var out []string
	for _, a := range strings.Split(list, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			return nil, fmt.Errorf("-listen %q: %v (want ADDRESS:PORT of the management port)", a, err)
		}
		ip, err := netip.ParseAddr(host)
		if host == "" || err == nil && ip.IsUnspecified() {
			if !allowAny {
				return nil, fmt.Errorf("-listen %q: listens on every interface, not only the management port; give the management port's address, or add -listen-unspecified-exposes-every-port if that is what you want", a)
			}
		} else if err != nil {
			return nil, fmt.Errorf("-listen %q: %q is not an IP address (a name could resolve to any interface's)", a, host)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, errors.New("-listen: no address given; give the management port's address, e.g. -listen 198.51.100.10:8080, or its interface, e.g. -listen-iface eth0:8080")
	}
	return out, nil
}

// ReadPassword reads the device password: the file's first line, without its line ending.
func ReadPassword(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	line = strings.TrimRight(line, "\r")
	if line == "" {
		return nil, fmt.Errorf("%s: empty; the page will not run without a password", path)
	}
	return []byte(line), nil
}

func parseDaemons(list string, optional bool) ([]Daemon, error) {
	var out []Daemon
	for _, d := range strings.Split(list, ",") {
		d = strings.TrimSpace(d)
		if d == "" {
			continue
		}
		name, sock, ok := strings.Cut(d, "=")
		if !ok {
			sock = health.SocketPath(name)
		}
		if name == "" || strings.ContainsAny(name, "/ ") || sock == "" {
			return nil, fmt.Errorf("%q: want NAME or NAME=SOCKET", d)
		}
		out = append(out, Daemon{Name: name, Socket: sock, Optional: optional})
	}
	return out, nil
}

func socketOf(ds []Daemon, name string) string {
	for _, d := range ds {
		if d.Name == name {
			return d.Socket
		}
	}
	return ""
}

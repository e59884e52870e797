// Command collector is the SOC collector: a sielink server on an
// ordinary Linux host that accepts many sensors (one API key each),
// stores what each delivers in rotated NMSG files under
// <dir>/<sensor>/, and serves per-sensor metrics on a loopback address.
// By default the data passes through a JetStream stream (an embedded
// server in <dir>/.jetstream, or a cluster with -nats) before the files.
//
// With -selftest-server it generates a self-signed certificate, a keys
// file and one sensor's API key file in a temporary directory, listens
// on loopback, and prints one JSON line telling a sensor (or a test)
// how to connect: {"url", "name", "api_key_file", "ca_file", "dir",
// "metrics"}.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sie-europe/dnssensor/uplink/internal/collector"
	"github.com/sie-europe/dnssensor/uplink/internal/collector/auth"
	"github.com/sie-europe/dnssensor/uplink/sielink"
	"github.com/sie-europe/dnssensor/uplink/spool"
)

func main() {
	var opts collector.Options
	flag.StringVar(&opts.Listen, "listen", ":8443", "sielink listen address")
	flag.StringVar(&opts.CertFile, "cert", "", "TLS certificate (PEM)")
	flag.StringVar(&opts.KeyFile, "key", "", "TLS private key (PEM), mode 0600")
	flag.BoolVar(&opts.PlainHTTP, "plain-http", false, "serve without TLS (loopback listen addresses only; for tests)")
	flag.StringVar(&opts.KeysFile, "keys", "", `sensor keys file, lines "<sensor> <api-key>", mode 0600`)
	flag.StringVar(&opts.Store.Dir, "dir", "", "directory for NMSG files (one subdirectory per sensor)")
	flag.DurationVar(&opts.Store.Rotate, "rotate", time.Minute, "file rotation interval (aligned to UTC)")
	flag.BoolVar(&opts.Store.Zlib, "zlib", false, "zlib-compress containers that arrive uncompressed")
	flag.BoolVar(&opts.Store.Sync, "fsync", true, "fsync each container before the sensor can see it confirmed (survives a power cut of this host)")
	flag.Int64Var(&opts.Store.Quota, "quota", 0, "octets each sensor's directory may hold; over it the sensor's session is refused and its data waits in its spool (0: no quota)")
	flag.StringVar(&opts.MetricsListen, "metrics", "127.0.0.1:9125", "metrics listen address (loopback only; empty disables)")
	flag.StringVar(&opts.Fleet.Listen, "fleet", "", "serve the fleet page (every sensor's last health report as HTML, JSON and Prometheus metrics) also on this loopback `ADDR` (it is always at /fleet on -metrics)")
	flag.DurationVar(&opts.Fleet.Silent, "fleet-silent", collector.DefaultFleetSilent, "a sensor that has not reported for this `DURATION` turns red on the fleet page (sensors report every 60 s)")
	flag.DurationVar(&opts.Heartbeat, "heartbeat", 30*time.Second, "sielink heartbeat interval")
	flag.IntVar(&opts.MaxUnauthenticated, "max-unauthenticated", collector.DefaultMaxUnauthenticated, "connections that are not sessions (yet) beyond which new ones are closed at once")
	flag.IntVar(&opts.MaxSessionsPerSensor, "max-sessions-per-sensor", sielink.DefaultMaxSessionsPerSensor, "concurrent sessions one sensor may hold")
	var js collector.JetStreamOptions
	direct := flag.Bool("direct", false, "store directly in the files, without JetStream (a resend across a restart is then stored twice)")
	flag.StringVar(&js.URL, "nats", "", "NATS cluster `URLs` (nats://a:4222,nats://b:4222,…) holding the stream; empty: an embedded single-node JetStream server without a port")
	flag.StringVar(&js.Dir, "nats-dir", "", "the embedded JetStream server's store `DIR` (default <dir>/.jetstream)")
	flag.StringVar(&js.Stream, "nats-stream", collector.DefaultStream, "JetStream stream name")
	flag.IntVar(&js.Replicas, "nats-replicas", 0, "stream replicas (default 3 with -nats, 1 embedded)")
	flag.DurationVar(&js.DupWindow, "nats-dup-window", collector.DefaultDupWindow, "how long the stream recognises a resent container (sensor, sequence_id, sequence) and stores it once")
	flag.BoolVar(&js.Pipeline, "nats-pipeline", false, "publish a session's containers without waiting for each PubAck (the sensor's ping is still answered only after all before it were acknowledged); for a cluster with a long round trip")
	flag.Int64Var(&js.MaxBytes, "nats-max-bytes", 0, "octets the stream may hold; the oldest are discarded first (0: no bound)")
	flag.DurationVar(&js.MaxAge, "nats-max-age", 0, "age after which the stream discards a container (0: no bound)")
	noArchive := flag.Bool("no-archive", false, "only take data into the stream; another collector's archiver writes the files")
	flag.StringVar(&js.ArchiveDurable, "archive-durable", "archive", "the archiver's durable consumer name (one per archive copy)")
	flag.StringVar(&js.ForwardDurable, "forward-durable", "forward", "the durable consumer that feeds -forward-spool from the stream (run the forward on one collector: collectors sharing the name each hand on much twice)")
	fanUDP := flag.String("fanout-udp", "", "also send the stream as NMSG/UDP to `host:port` (nmsgtool -l), a durable consumer fanout-udp")
	fanMTU := flag.Int("fanout-udp-mtu", 1280, "datagram size of -fanout-udp")
	fanJSON := flag.String("fanout-json", "", "also append the stream's base:dnsqr records to `FILE` as nmsgtool -J lines, a durable consumer fanout-json")
	selftest := flag.Bool("selftest-server", false, "run on loopback with a generated certificate and keys; print connection details as JSON")
	var fwd spool.Options
	flag.StringVar(&fwd.Dir, "forward-spool", "", "also spool everything received into this RAM-tier `DIR`, for an uplinkd on this host to forward to SIE Europe")
	flag.StringVar(&fwd.DiskDir, "forward-spool-disk", "", "disk tier `DIR` of the forward spool (used while the onward link is down)")
	flag.Int64Var(&fwd.DiskQuota, "forward-spool-disk-quota", 0, "octets the forward spool's disk tier may hold (0: the spool default)")
	flag.Parse()

	if !*selftest && (opts.KeysFile == "" || opts.Store.Dir == "" || (!opts.PlainHTTP && (opts.CertFile == "" || opts.KeyFile == ""))) {
		fmt.Fprintln(os.Stderr, "collector: -keys, -dir and (-cert and -key, or -plain-http) are required")
		flag.Usage()
		os.Exit(2)
	}
	if opts.Store.Quota < 0 || opts.MaxUnauthenticated < 1 || opts.MaxSessionsPerSensor < 1 {
		fmt.Fprintln(os.Stderr, "collector: -quota must be ≥ 0, -max-unauthenticated and -max-sessions-per-sensor ≥ 1")
		os.Exit(2)
	}
	if err := checkFleetFlags(opts.Fleet); err != nil {
		fmt.Fprintf(os.Stderr, "collector: %v\n", err)
		os.Exit(2)
	}
	if js.DupWindow <= 0 || js.MaxBytes < 0 || js.MaxAge < 0 || js.Replicas < 0 {
		fmt.Fprintln(os.Stderr, "collector: -nats-dup-window must be > 0, -nats-max-bytes, -nats-max-age and -nats-replicas ≥ 0")
		os.Exit(2)
	}
	if *direct && (*fanUDP != "" || *fanJSON != "") {
		fmt.Fprintln(os.Stderr, "collector: -fanout-udp and -fanout-json read the JetStream stream: drop -direct or them")
		os.Exit(2)
	}
	if *fanUDP != "" {
		js.FanOut = append(js.FanOut, collector.FanOut{Durable: "fanout-udp", UDP: *fanUDP, MTU: *fanMTU})
	}
	if *fanJSON != "" {
		js.FanOut = append(js.FanOut, collector.FanOut{Durable: "fanout-json", JSONFile: *fanJSON})
	}
	if !*direct {
		js.Sync, js.NoArchive = opts.Store.Sync, *noArchive
		opts.JetStream = &js
	}
	logger := log.New(os.Stderr, "", log.LstdFlags)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, opts, fwd, *selftest, logger)
	stop()
	if err != nil {
		logger.Fatalf("collector: %v", err)
	}
}

// checkFleetFlags refuses a fleet page that would mislead or be exposed.
func checkFleetFlags(f collector.FleetOptions) error {
	if f.Silent < collector.MinFleetSilent {
		return fmt.Errorf("-fleet-silent %v: must be at least %v, and above twice the sensors' report interval (uplinkd's report_interval, 60 s by default) or healthy sensors flicker red; e.g. -fleet-silent 5m", f.Silent, collector.MinFleetSilent)
	}
	if f.Listen != "" {
		if err := collector.CheckLoopback(f.Listen); err != nil {
			return fmt.Errorf("-fleet %s: %v: the page has no authentication; listen on 127.0.0.1:PORT or [::1]:PORT and put an authenticating proxy in front, or -fleet '' to disable it", f.Listen, err)
		}
	}
	return nil
}

// run is main without the exits, so that every deferred close (the forward spool's seal) runs
// whatever the outcome.
func run(ctx context.Context, opts collector.Options, fwd spool.Options, selftest bool, logger *log.Logger) (err error) {
	opts.Logf = logger.Printf
	opts.Store.Logf = logger.Printf
	if selftest {
		if err := selftestSetup(&opts); err != nil {
			return err
		}
	}
	if fwd.Dir != "" {
		fwd.Logf = logger.Printf
		p, err := spool.OpenProducer(fwd)
		if err != nil {
			return fmt.Errorf("-forward-spool: %v", err)
		}
		// Close seals the last segment and moves the RAM tier to disk, after Run has stopped
		// taking data.
		defer func() {
			if cerr := p.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("-forward-spool: closing: %v", cerr)
			}
		}()
		opts.Forward = collector.SpoolForwarder{P: p}
	}
	return collector.Run(ctx, opts)
}

// selftestSetup fills opts with generated material and arranges for
// the connection details to be printed once the collector listens.
func selftestSetup(opts *collector.Options) error {
	dir, err := os.MkdirTemp("", "collector-selftest-")
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := auth.CertPEM("127.0.0.1", "localhost")
	if err != nil {
		return err
	}
	opts.CertFile = filepath.Join(dir, "cert.pem")
	opts.KeyFile = filepath.Join(dir, "key.pem")
	if err := os.WriteFile(opts.CertFile, certPEM, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(opts.KeyFile, keyPEM, 0o600); err != nil {
		return err
	}
	keysFile, apiKeys, err := auth.WriteKeys(dir, "selftest")
	if err != nil {
		return err
	}
	opts.KeysFile = keysFile
	opts.PlainHTTP = false
	if opts.Listen == ":8443" {
		opts.Listen = "127.0.0.1:0"
	}
	if opts.MetricsListen == "127.0.0.1:9125" {
		opts.MetricsListen = "127.0.0.1:0"
	}
	if opts.Store.Dir == "" {
		opts.Store.Dir = filepath.Join(dir, "nmsg")
	}
	opts.Ready = func(addr, maddr string) {
		json.NewEncoder(os.Stdout).Encode(map[string]string{
			"url":          "wss://" + addr,
			"name":         "selftest",
			"api_key_file": apiKeys["selftest"],
			"ca_file":      opts.CertFile,
			"dir":          opts.Store.Dir,
			"metrics":      "http://" + maddr + "/metrics",
			"fleet":        "http://" + maddr + "/fleet",
		})
	}
	return nil
}

// Command uplinkd ships the sensor's spooled NMSG segments to SIE Europe, a SOC collector or NMSG/UDP
// relays, in order, deleting each only once every destination has it, and serves the health contract
// (internal/health) on /run/uplinkd/health.sock and its loopback metrics address.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/internal/procprio"
	"github.com/sie-europe/dnssensor/uplink/internal/uplinkd"
)

func main() {
	// At a boot every program starts at once: the image lets this one yield to the capture path
	// (internal/procprio).
	procprio.Boost("uplinkd", os.Stderr)
	configFile := flag.String("config", "", "JSON configuration `FILE` (spool, destinations, metrics)")
	spoolDir := flag.String("spool", "", "spool RAM tier `DIR` (overrides spool.dir)")
	spoolDisk := flag.String("spool-disk", "", "spool disk tier `DIR` (overrides spool.disk_dir)")
	healthSock := flag.String("health", "", "serve /health.json, /metrics and /metrics.json on this unix `SOCKET` (the health contract; the appliance: /run/uplinkd/health.sock) besides the config's loopback metrics address")
	flag.Parse()
	if *configFile == "" {
		fmt.Fprintln(os.Stderr, "uplinkd: -config FILE is required")
		os.Exit(2)
	}
	if _, err := os.Stat(*configFile); os.IsNotExist(err) {
		// Nothing to ship to until the operator configures a destination; 125 tells gokrazy not
		// to restart us every second (restart the service once the file is in place).
		fmt.Fprintf(os.Stderr, "uplinkd: %s does not exist yet: no destination configured, nothing to do\n", *configFile)
		os.Exit(health.ExitNotConfigured)
	}
	cfg, err := uplinkd.LoadConfig(*configFile)
	if err != nil {
		fmt.Fprintf(os.Stderr, "uplinkd: %v\n", err)
		os.Exit(2)
	}
	if *spoolDir != "" {
		cfg.Spool.Dir = *spoolDir
	}
	if *spoolDisk != "" {
		cfg.Spool.DiskDir = *spoolDisk
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Every log line is kept for the health contract's /log.json too (the status page).
	ring := health.NewLogRing(0)
	log.SetOutput(io.MultiWriter(os.Stderr, ring))
	// At boot sensord creates the spool; a sensord that does not start leaves uplinkd waiting
	// here, answering its health contract with the reason.
	if err := uplinkd.AwaitSpool(ctx, cfg, *healthSock, ring, log.Printf); err != nil {
		if ctx.Err() != nil {
			return
		}
		log.Fatalf("uplinkd: %v", err)
	}
	s, err := uplinkd.New(cfg, log.Printf)
	if err != nil {
		log.Fatalf("uplinkd: %v", err)
	}
	s.HealthSocket = *healthSock
	s.Log = ring
	if err := s.Run(ctx); err != nil {
		log.Fatalf("uplinkd: %v", err)
	}
}

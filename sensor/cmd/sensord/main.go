// Command sensord reads DNS traffic between a recursive resolver and authoritative servers and
// writes paired, privacy-scrubbed NMSG base:dnsqr records, compatible with nmsgtool -T dnsqr.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/sie-europe/dnssensor/internal/procprio"
	"github.com/sie-europe/dnssensor/sensor/internal/app"
)

func main() {
	// The capture path starts ahead of the other programs when the image says so; EndBoost
	// follows once the capture is open.
	procprio.Boost("sensord", os.Stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := app.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Command timed keeps the box's clock synchronised by NTP and tells the kernel so, with its error
// bound, for the status page and the records' timestamps (see package appliance/timesync).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/sie-europe/dnssensor/appliance/timesync"
	"github.com/sie-europe/dnssensor/internal/procprio"
)

func main() {
	// At a boot every program starts at once: the image lets this one yield to the capture path
	// (internal/procprio).
	procprio.Boost("timed", os.Stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := timesync.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

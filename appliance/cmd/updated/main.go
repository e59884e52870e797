// Command updated is the box's update agent: signed pull updates from a TUF repository with a
// test boot, a health gate and automatic rollback (package appliance/update).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/sie-europe/dnssensor/appliance/update"
	"github.com/sie-europe/dnssensor/internal/procprio"
)

func main() {
	// At a boot every program starts at once: the image lets this one yield to the capture path
	// (internal/procprio).
	procprio.Boost("updated", os.Stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := update.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

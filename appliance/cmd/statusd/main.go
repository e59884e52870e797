// Command statusd serves the box's status page on the management port: every daemon's health as
// one chain of causes for "why is there no data?", behind the device password.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/sie-europe/dnssensor/appliance/status"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := status.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Command netconfd configures the box's network ports: the management port by DHCPv4 or from the
// box configuration, the tap ports as silent capture ports that never send a frame; it publishes
// DNS and NTP servers and every port's state under /run/netconfd for the other daemons.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/sie-europe/dnssensor/appliance/netconf"
	"github.com/sie-europe/dnssensor/internal/procprio"
)

func main() {
	// The capture path starts ahead of the other programs when the image says so; EndBoost
	// follows once the tap ports are up.
	procprio.Boost("netconfd", os.Stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := netconf.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

package netconf

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sie-europe/dnssensor/internal/health"
)

// healthState is what the health server reads: the ports as last published in links.json and
// the management addressing, both written by the daemon's loop.
type healthState struct {
	mu    sync.Mutex
	links []Link
	addr  Addressing
	// txAtSilence is each tap port's transmit counter when it was made silent: the port must
	// never send again, so any increase is a finding (a driver or kernel path that bypasses
	// IFF_NOARP and disabled IPv6).
	txAtSilence map[string]uint64
}

func (h *healthState) setLinks(links []Link) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.links = links
	for _, l := range links {
		if l.Role != "tap" {
			continue
		}
		if l.Tap == nil || !l.Present {
			delete(h.txAtSilence, l.Name) // reconfigured (or replugged): counted afresh
			continue
		}
		if _, ok := h.txAtSilence[l.Name]; !ok {
			h.txAtSilence[l.Name] = l.TxPackets
		}
	}
}

func (h *healthState) setAddr(a Addressing) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.addr = a
}

func (h *healthState) link(name string) (Link, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, l := range h.links {
		if l.Name == name {
			return l, true
		}
	}
	return Link{}, false
}

// tree is netconfd's check tree: the management port (link, carrier, address, configuration)
// and each tap port (silenced, carrier, silent since).
func (h *healthState) tree(o *Options, now func() time.Time) *health.Tree {
	linkProbe := func(name string, want func(Link) (bool, string, string)) health.Probe {
		return func(time.Time) health.Result {
			l, ok := h.link(name)
			if !ok {
				return health.Result{Detail: "not read yet"}
			}
			okv, detail, fix := want(l)
			return health.Result{OK: okv, Detail: detail, Fix: fix}
		}
	}
	present := func(l Link) (bool, string, string) {
		if !l.Present {
			return false, "absent: " + l.Error, l.Fix
		}
		if !l.Up {
			return false, "present, link down", "see netconfd's log for why it could not bring " + l.Name + " up"
		}
		return true, "present, up, MTU " + fmt.Sprint(l.MTU), ""
	}
	carrier := func(l Link) (bool, string, string) {
		if !l.Carrier {
			return false, "no carrier", l.Fix
		}
		if l.SpeedMbps > 0 {
			return true, fmt.Sprintf("carrier, %d Mb/s %s duplex", l.SpeedMbps, l.Duplex), ""
		}
		return true, "carrier", ""
	}
	mgmt := health.NewNode("management port "+o.Mgmt, linkProbe(o.Mgmt, present),
		health.NewNode("carrier on "+o.Mgmt, linkProbe(o.Mgmt, carrier),
			health.NewNode("address on "+o.Mgmt, func(time.Time) health.Result {
				h.mu.Lock()
				a := h.addr
				h.mu.Unlock()
				switch {
				case a.Addr.IsValid():
					return health.Result{OK: true, Detail: fmt.Sprintf("%s (%s), router %s", a.Addr, a.Source, a.Router)}
				case a.Addr6.IsValid():
					return health.Result{OK: true, Detail: fmt.Sprintf("%s (static)", a.Addr6)}
				case a.State != "":
					return health.Result{Detail: "no IPv4 address; DHCP " + a.State,
						Fix: "check that the management network has a DHCP server that answers this box, or set a static address in the box configuration"}
				}
				return health.Result{Detail: "no IPv4 address yet",
					Fix: "check that the management network has a DHCP server that answers this box, or set a static address in the box configuration"}
			})),
		health.NewNode("configuration", func(time.Time) health.Result {
			h.mu.Lock()
			a := h.addr
			h.mu.Unlock()
			if a.ConfigError != "" {
				return health.Result{Detail: "not applied: " + a.ConfigError + "; the addressing in force stays",
					Fix: "correct the network section of the box configuration"}
			}
			src := a.Source
			if src == "" {
				src = "DHCP, no lease yet"
			}
			return health.Result{OK: true, Detail: "applied (" + src + ")"}
		}))
	roots := []*health.Node{mgmt}
	for _, t := range o.Taps {
		roots = append(roots, health.NewNode("tap port "+t, linkProbe(t, func(l Link) (bool, string, string) {
			if !l.Present {
				return false, "absent: " + l.Error, l.Fix
			}
			if l.Tap == nil {
				return false, "not silenced: " + l.Error, "see netconfd's log for the step that failed; the port stays down until it can be silenced"
			}
			return true, "silent capture port: no address, no ARP, no IPv6, promiscuous, offloads " + offloadSummary(*l.Tap), ""
		}),
			health.NewNode("carrier on "+t, linkProbe(t, carrier)),
			health.NewNode("nothing sent on "+t, linkProbe(t, func(l Link) (bool, string, string) {
				h.mu.Lock()
				base, ok := h.txAtSilence[t]
				h.mu.Unlock()
				if !ok {
					return false, "not silenced yet", ""
				}
				if n := l.TxPackets - base; l.TxPackets > base {
					return false, fmt.Sprintf("%d frames sent since the port was silenced", n),
						"report this: a tap port must never send; unplug the tap cable until it is understood"
				}
				return true, "0 frames sent since the port was silenced", ""
			}))))
	}
	return health.NewTree("netconfd", now, roots...)
}

// portCollector exports the ports' counters as links.json has them.
type portCollector struct{ h *healthState }

var (
	portRx      = prometheus.NewDesc("dnssensor_netconfd_port_rx_frames_total", "frames received, by port (the kernel's counter)", []string{"port", "role"}, nil)
	portTx      = prometheus.NewDesc("dnssensor_netconfd_port_tx_frames_total", "frames sent, by port (the kernel's counter; a tap port's stays where it was when it was silenced)", []string{"port", "role"}, nil)
	portDrop    = prometheus.NewDesc("dnssensor_netconfd_port_rx_dropped_total", "frames the kernel or driver dropped on receive, by port", []string{"port", "role"}, nil)
	portCarrier = prometheus.NewDesc("dnssensor_netconfd_port_carrier", "1 when the port has carrier", []string{"port", "role"}, nil)
)

func (c portCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- portRx
	ch <- portTx
	ch <- portDrop
	ch <- portCarrier
}

func (c portCollector) Collect(ch chan<- prometheus.Metric) {
	c.h.mu.Lock()
	links := c.h.links
	c.h.mu.Unlock()
	for _, l := range links {
		if !l.Present {
			continue
		}
		carrier := 0.0
		if l.Carrier {
			carrier = 1
		}
		ch <- prometheus.MustNewConstMetric(portRx, prometheus.CounterValue, float64(l.RxPackets), l.Name, l.Role)
		ch <- prometheus.MustNewConstMetric(portTx, prometheus.CounterValue, float64(l.TxPackets), l.Name, l.Role)
		ch <- prometheus.MustNewConstMetric(portDrop, prometheus.CounterValue, float64(l.RxDropped), l.Name, l.Role)
		ch <- prometheus.MustNewConstMetric(portCarrier, prometheus.GaugeValue, carrier, l.Name, l.Role)
	}
}

// serveHealth serves the contract on o.Health until ctx ends; the returned function waits for
// the server to stop.
func serveHealth(ctx context.Context, o *Options, h *healthState, logf func(string, ...any)) (func(), error) {
	if o.Health == "" {
		return func() {}, nil
	}
	ln, err := health.ListenUnix(o.Health)
	if err != nil {
		return nil, fmt.Errorf("-health: %v", err)
	}
	reg := health.NewRegistry()
	reg.MustRegister(portCollector{h})
	srv := &health.Server{Daemon: "netconfd", Tree: h.tree(o, time.Now), Registry: reg, Logf: logf}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx, []net.Listener{ln}...); err != nil {
			logf("health server: %v", err)
		}
	}()
	return func() { <-done }, nil
}

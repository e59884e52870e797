// Package netconf is netconfd: it configures the box's network ports and keeps them configured.
//
// Tap ports are made silent before they come up. A passive sensor that sends a single frame into
// the monitored link (an IPv6 router solicitation, a DAD probe, an MLD report, an ARP answer) is a
// finding in any security review, and Linux sends the first three within two seconds of a plain
// link up, unasked (TestTapSilent measures it). So IPv6 is disabled on the port before link up,
// ARP is off, no address is kept, the port is promiscuous, and receive offloads that merge or
// rewrite frames (GRO, LRO, VLAN tag stripping) are turned off, since the capture must see frames
// as they were on the wire.
//
// The management port gets its address by DHCPv4 (package dhcpc) and netconfd publishes what
// the other daemons need in its run directory: resolv.conf (DNS servers, for uplinkd), ntp.json
// (for the time daemon), lease.json and links.json (for the status page). Every file is replaced
// atomically.
package netconf

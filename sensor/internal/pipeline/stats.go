package pipeline

import (
	"fmt"
	"strings"

	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
	"github.com/sie-europe/dnssensor/sensor/internal/defrag"
	"github.com/sie-europe/dnssensor/sensor/internal/privacy"
	"github.com/sie-europe/dnssensor/sensor/internal/tcpdns"
)

// Stats are the pipeline's counters: every frame read ends in exactly one of them or in a record,
// so loss is never silent.
type Stats struct {
	Frames         uint64                    // frames offered
	Truncated      uint64                    // caplen < wire length: dropped, the message is cut
	Decode         [decode.NumResults]uint64 // frames that did not decode, by reason (OK unused)
	IP             uint64                    // IP datagrams decoded
	NotDNS         uint64                    // not UDP 53/5353, TCP 53 or an ICMP error about DNS
	NotResolver    uint64                    // not the resolver's own transaction (client traffic)
	DNSMalformed   uint64                    // DNS header or question did not parse
	ICMPMalformed  uint64
	ICMPMatched    uint64 // ICMP errors that closed a pending query
	FilteredQR     uint64 // dropped by -qr
	FilteredRD     uint64 // dropped by -rd
	FilteredQname  uint64 // dropped by -qname-exclude
	PrivacyDropped uint64 // records the scrubber could not vouch for
	StateEvicted   uint64 // pending queries pushed out by -state-max (emitted as unanswered)
	MDNSDropped    uint64 // port 5353 traffic without -mdns
	ICMPUnmatched  uint64 // ICMP errors quoting a resolver query that is not pending (or unreadable)
	Held           uint64 // responses held for a late query (-unsolicited-hold)
	HeldPaired     uint64 // of them, paired when their query arrived
	HoldEvicted    uint64 // held responses released early by the hold's bounds
	// UnsolicitedDropped counts responses that matched no query, dropped without -unsolicited.
	UnsolicitedDropped uint64
	// UnsolicitedClient counts unsolicited responses dropped because their sender was seen as a
	// client of the resolver (with -unsolicited).
	UnsolicitedClient uint64
	MemEvicted        uint64 // pending queries pushed out by -state-max-bytes (emitted as unanswered)
	MemDropped        uint64 // queries larger than all of -state-max-bytes, dropped
	OutputErrors      uint64 // records the output refused
	Records           [8]uint64
	Pending           uint64

	Defrag  defrag.Stats
	TCP     tcpdns.Stats
	Privacy privacy.Stats

	MemTable, MemFrag, MemTCP int
}

// String is the one-line summary sensord prints at exit and on -stats.
func (s *Stats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "frames=%d ip=%d truncated=%d", s.Frames, s.IP, s.Truncated)
	for r, n := range s.Decode {
		if n > 0 && decode.Result(r) != decode.OK {
			fmt.Fprintf(&b, " decode_%s=%d", decode.Result(r), n)
		}
	}
	fmt.Fprintf(&b, " not_dns=%d not_resolver=%d dns_malformed=%d icmp_malformed=%d icmp_matched=%d",
		s.NotDNS, s.NotResolver, s.DNSMalformed, s.ICMPMalformed, s.ICMPMatched)
	fmt.Fprintf(&b, " mdns_dropped=%d icmp_unmatched=%d held=%d held_paired=%d hold_evicted=%d unsolicited_dropped=%d unsolicited_client=%d",
		s.MDNSDropped, s.ICMPUnmatched, s.Held, s.HeldPaired, s.HoldEvicted, s.UnsolicitedDropped, s.UnsolicitedClient)
	fmt.Fprintf(&b, " filtered_qr=%d filtered_rd=%d filtered_qname=%d privacy_dropped=%d state_evicted=%d output_errors=%d",
		s.FilteredQR, s.FilteredRD, s.FilteredQname, s.PrivacyDropped, s.StateEvicted, s.OutputErrors)
	var total uint64
	for t, n := range s.Records {
		total += n
		if n > 0 {
			fmt.Fprintf(&b, " rec_%s=%d", strings.ToLower(dnsqr.Type(t).String()), n)
		}
	}
	fmt.Fprintf(&b, " records=%d pending=%d", total, s.Pending)
	fmt.Fprintf(&b, " frag_in=%d frag_done=%d frag_expired=%d frag_evicted=%d frag_overlap=%d frag_lost=%d",
		s.Defrag.Fragments, s.Defrag.Datagrams, s.Defrag.Expired, s.Defrag.Evicted, s.Defrag.Overlaps, s.Defrag.FragsLost)
	fmt.Fprintf(&b, " tcp_segments=%d tcp_messages=%d tcp_evicted=%d tcp_gaps=%d",
		s.TCP.Segments, s.TCP.Messages, s.TCP.StreamsEvicted, s.TCP.Gaps)
	fmt.Fprintf(&b, " ecs_scrubbed=%d options_zeroed=%d edns_zeroed=%d headers_zeroed=%d resolver_zeroed=%d",
		s.Privacy.ECSScrubbed, s.Privacy.OptionsZeroed, s.Privacy.EDNSZeroed, s.Privacy.HeadersZeroed, s.Privacy.ResolverZeroed)
	fmt.Fprintf(&b, " mem_table=%dKiB mem_frag=%dKiB mem_tcp=%dKiB", s.MemTable>>10, s.MemFrag>>10, s.MemTCP>>10)
	fmt.Fprintf(&b, " mem_evicted=%d mem_dropped=%d frag_no_budget=%d", s.MemEvicted, s.MemDropped, s.Defrag.NoBudget)
	return b.String()
}

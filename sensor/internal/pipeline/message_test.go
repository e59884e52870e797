package pipeline

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sie-europe/dnssensor/internal/pktbuild"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
)

// A message given without a packet must give the same record as the packet a tap would have seen.
func TestMessageMatchesCapturedUDP(t *testing.T) {
	q := msg(t, 11, "www.example.", dns.TypeA, false, false, netip.MustParsePrefix("10.53.0.0/24"))
	r := msg(t, 11, "www.example.", dns.TypeA, true, false, netip.Prefix{})
	rs, as := netip.AddrPortFrom(res4, 40000), netip.AddrPortFrom(auth4, 53)

	want := newHarness(t, Config{RD: -1})
	want.p.IPPacket(t0, pktbuild.AppendUDP(nil, rs, as, q))
	want.p.IPPacket(t0+1e6, pktbuild.AppendUDP(nil, as, rs, r))
	want.p.Flush()

	got := newHarness(t, Config{RD: -1})
	if !got.p.Message(t0, false, rs, as, q) || !got.p.Message(t0+1e6, false, as, rs, r) {
		t.Fatal("Message refused a valid UDP message")
	}
	got.p.Flush()
	if len(got.raw) != 1 || len(want.raw) != 1 || !bytes.Equal(got.raw[0], want.raw[0]) {
		t.Fatalf("records differ:\n got %x\nwant %x", got.raw, want.raw)
	}
	if s := got.p.Stats(); s.Privacy.ECSScrubbed != 1 {
		t.Errorf("ECS not scrubbed on the message path: %+v", s.Privacy)
	}
}

func TestMessageTCPPairs(t *testing.T) {
	h := newHarness(t, Config{RD: -1})
	rs, as := netip.AddrPortFrom(res6, 40000), netip.AddrPortFrom(auth6, 53)
	h.p.Message(t0, true, rs, as, msg(t, 5, "big.example.", dns.TypeTXT, false, false, netip.Prefix{}))
	h.p.Message(t0+2e6, true, as, rs, msg(t, 5, "big.example.", dns.TypeTXT, true, false, netip.Prefix{}))
	h.p.Flush()
	if len(h.recs) != 1 || h.recs[0].Type != dnsqr.TCP || len(h.recs[0].QueryPackets) != 1 || len(h.recs[0].ResponsePackets) != 1 {
		t.Fatalf("want one TCP transaction with one packet each way, got %+v", h.recs)
	}
}

func TestMessageRefusesImpossible(t *testing.T) {
	h := newHarness(t, Config{RD: -1})
	m := msg(t, 5, "x.example.", dns.TypeA, false, false, netip.Prefix{})
	if h.p.Message(t0, false, netip.AddrPortFrom(res4, 1), netip.AddrPortFrom(auth6, 53), m) {
		t.Error("mixed families accepted")
	}
	if h.p.Message(t0, false, netip.AddrPortFrom(res4, 1), netip.AddrPortFrom(auth4, 53), make([]byte, maxUDPMessage+1)) {
		t.Error("over-long UDP message accepted")
	}
	if s := h.p.Stats(); s.Frames != 0 {
		t.Errorf("refused messages were counted as frames: %d", s.Frames)
	}
}

func TestIdleExpiresWithoutPackets(t *testing.T) {
	h := newHarness(t, Config{RD: -1, QueryTimeout: 60 * time.Second})
	h.p.IPPacket(t0, udp(res4, 40000, auth4, 53, msg(t, 1, "lame.example.", dns.TypeA, false, false, netip.Prefix{})))
	h.p.Idle(t0 + 60e9)
	if len(h.recs) != 0 {
		t.Fatal("Idle expired at exactly the timeout")
	}
	h.p.Idle(t0 + 30e9) // time never goes back
	h.p.Idle(t0 + 61e9)
	if len(h.recs) != 1 || h.recs[0].Type != dnsqr.UDPUnansweredQuery {
		t.Fatalf("want one unanswered query after Idle past the timeout, got %d records", len(h.recs))
	}
	if s := h.p.Stats(); s.Frames != 1 {
		t.Errorf("Idle counted frames: %d", s.Frames)
	}
}

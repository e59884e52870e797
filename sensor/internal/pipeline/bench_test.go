package pipeline

import (
	"fmt"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
)

// benchFrames builds a resolver's upstream traffic: n transactions over IPv4 and IPv6 to a few
// authorities, Ethernet-framed, with answers of realistic size (referrals with glue).
func benchFrames(b *testing.B, n int) (frames [][]byte, times []int64) {
	t := &testing.T{}
	// A resolver talks to many authorities; 48 here, a third of them over IPv6.
	var auths []netip.Addr
	for i := 0; i < 32; i++ {
		auths = append(auths, netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}))
		if i%2 == 0 {
			auths = append(auths, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 2, 15: byte(10 + i)}))
		}
	}
	for i := 0; i < n; i++ {
		a := auths[i%len(auths)]
		r := res4
		if a.Is6() {
			r = res6
		}
		name := fmt.Sprintf("host%d.zone%d.example.", i, i%97)
		q := msg(t, uint16(i), name, dns.TypeA, false, false, netip.Prefix{})
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.Id, m.Response = uint16(i), true
		for j := 0; j < 4; j++ {
			ns := fmt.Sprintf("ns%d.zone%d.example.", j, i%97)
			m.Ns = append(m.Ns, &dns.NS{Hdr: dns.RR_Header{Name: "zone.example.", Rrtype: dns.TypeNS, Class: 1, Ttl: 3600}, Ns: ns})
			m.Extra = append(m.Extra, &dns.A{Hdr: dns.RR_Header{Name: ns, Rrtype: dns.TypeA, Class: 1, Ttl: 3600}, A: []byte{192, 0, 2, byte(j)}})
		}
		resp, _ := m.Pack()
		port := uint16(1024 + i%60000)
		for _, pkt := range [][]byte{udp(r, port, a, 53, q), udp(a, 53, r, port, resp)} {
			frame := append(make([]byte, 12), 0x08, 0x00)
			if pkt[0]>>4 == 6 {
				frame[13], frame[12] = 0xdd, 0x86
			}
			frames = append(frames, append(frame, pkt...))
			times = append(times, t0+int64(len(times))*20e3)
		}
	}
	return frames, times
}

// BenchmarkPipeline measures decode → pair → privacy → encode (NMSG containers to io.Discard) per
// packet, the sensor's whole CPU path after the capture read.
func BenchmarkPipeline(b *testing.B) {
	frames, times := benchFrames(b, 4096)
	for _, zero := range []bool{false, true} {
		b.Run(fmt.Sprintf("zero=%v", zero), func(b *testing.B) {
			fw, _ := nmsg.NewFileWriter(io.Discard, nmsg.FileOptions{CRC: true})
			var buf []byte
			var pl nmsg.Payload
			p, err := New(Config{RD: -1, ZeroResolver: zero,
				Resolvers: []netip.Prefix{netip.PrefixFrom(res4, 32), netip.PrefixFrom(res6, 128)}},
				func(r *dnsqr.Record) error {
					buf = dnsqr.AppendProto(buf[:0], r)
					t := r.Time()
					pl = nmsg.Payload{Vid: 1, Msgtype: 9, TimeSec: t / 1e9, TimeNsec: uint32(t % 1e9), Data: buf}
					return fw.Write(&pl)
				})
			if err != nil {
				b.Fatal(err)
			}
			replay(b, p.Frame, frames, times)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
			if s := p.Stats(); s.Records[dnsqr.UDPQueryResponse] == 0 && b.N > 2 {
				b.Fatalf("no pairs formed: %s", s.String())
			}
		})
	}
}

// TestPipelineAllocs holds the UDP fast path to zero allocations per packet in steady state: with
// the sensord defaults (responses held for late queries), and with unsolicited records kept while
// some responses find no query (the held ones keep their place in the output).
func TestPipelineAllocs(t *testing.T) {
	all, allTimes := benchFrames(nil, 512)
	for _, tc := range []struct {
		name        string
		unsolicited bool
	}{{"defaults", false}, {"unsolicited", true}} {
		frames, times := all, allTimes
		if tc.unsolicited {
			// Every 16th query goes missing: its response is held, then unsolicited.
			frames, times = nil, nil
			for j := range all {
				if j%32 != 0 {
					frames, times = append(frames, all[j]), append(times, allTimes[j])
				}
			}
		}
		fw, _ := nmsg.NewFileWriter(io.Discard, nmsg.FileOptions{CRC: true})
		var buf []byte
		var pl nmsg.Payload
		p, _ := New(Config{RD: -1, ZeroResolver: true, Hold: 500 * time.Millisecond, Unsolicited: tc.unsolicited,
			Resolvers: []netip.Prefix{netip.PrefixFrom(res4, 32), netip.PrefixFrom(res6, 128)}},
			func(r *dnsqr.Record) error {
				buf = dnsqr.AppendProto(buf[:0], r)
				pl = nmsg.Payload{Vid: 1, Msgtype: 9, Data: buf}
				return fw.Write(&pl)
			})
		var base int64
		run := func() {
			for j := range frames {
				p.Frame(decode.LinkEthernet, base+times[j], frames[j], len(frames[j]))
			}
			base += times[len(times)-1] - times[0] + 1e9
		}
		run() // warm up: table entries, buffers, map buckets
		run()
		allocs := testing.AllocsPerRun(5, run) / float64(len(frames))
		if allocs > 0.01 {
			t.Errorf("%s: %.3f allocations per packet, want 0", tc.name, allocs)
		}
		if s := p.Stats(); tc.unsolicited && (s.Records[dnsqr.UDPUnsolicitedResponse] == 0 || s.Held == 0) {
			t.Errorf("%s: no unsolicited responses held: %s", tc.name, s.String())
		}
	}
}

// replay feeds b.N frames from the set, shifting capture time by the set's span on every pass so
// transactions stay distinct, with the timer running only here.
func replay(b *testing.B, frame func(decode.LinkType, int64, []byte, int), frames [][]byte, times []int64) {
	b.ReportAllocs()
	b.ResetTimer()
	var base int64
	for i := 0; i < b.N; i++ {
		j := i % len(frames)
		if j == 0 && i > 0 {
			base += times[len(times)-1] - times[0] + 1e9
		}
		frame(decode.LinkEthernet, base+times[j], frames[j], len(frames[j]))
	}
}

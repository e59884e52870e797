package pipeline

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"testing"

	"github.com/miekg/dns"

	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
)

// bigQuery is a query padded (EDNS padding) to about n octets.
func bigQuery(t *testing.T, id uint16, n int) []byte {
	m := new(dns.Msg)
	m.SetQuestion("big.example.", dns.TypeA)
	m.Id = id
	o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
	o.SetUDPSize(65535)
	o.Option = append(o.Option, &dns.EDNS0_PADDING{Padding: make([]byte, n)})
	m.Extra = append(m.Extra, o)
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fragments4 cuts an IPv4 datagram into fragments carrying at most 1480 octets of data each.
func fragments4(dgram []byte) [][]byte {
	hl := int(dgram[0]&0xf) * 4
	data := dgram[hl:]
	var out [][]byte
	for off := 0; off < len(data); off += 1480 {
		end := min(off+1480, len(data))
		f := append(append([]byte(nil), dgram[:hl]...), data[off:end]...)
		binary.BigEndian.PutUint16(f[2:], uint16(len(f)))
		fo := uint16(off / 8)
		if end < len(data) {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(f[6:], fo)
		binary.BigEndian.PutUint16(f[4:], 0x4242)
		out = append(out, f)
	}
	return out
}

// TestStateBytesBounded: 4,000 pending fragmented 60 KB queries stay under the shared byte
// budget, the oldest evicted as unanswered and counted (-state-max bounded only entries: they
// held 283 MiB).
func TestStateBytesBounded(t *testing.T) {
	const queries, size, budget = 4000, 60000, 64 << 20
	var records [8]int
	p, err := New(Config{RD: -1, MaxBytes: budget,
		Resolvers: []netip.Prefix{netip.PrefixFrom(res4, 32)}},
		func(r *dnsqr.Record) error { records[r.Type]++; return nil })
	if err != nil {
		t.Fatal(err)
	}
	q := bigQuery(t, 0, size)
	maxHeld := 0
	for i := 0; i < queries; i++ {
		binary.BigEndian.PutUint16(q, uint16(i))
		dg := udp(res4, uint16(1024+i), auth4, 53, q)
		binary.BigEndian.PutUint16(dg[4:], uint16(i)) // IP id: one datagram each
		for _, f := range fragments4(dg) {
			binary.BigEndian.PutUint16(f[4:], uint16(i))
			p.IPPacket(t0+int64(i)*1e6, f)
		}
		held := p.t.bytes + p.frag.Bytes() + p.tcp.Bytes()
		maxHeld = max(maxHeld, held)
		if held > budget {
			t.Fatalf("after %d queries: %d MiB held, budget %d MiB; %s", i+1, held>>20, budget>>20, statsLine(p))
		}
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := p.Stats()
	t.Logf("held at most %d MiB (budget %d MiB), heap %d MiB; %d pending, %d evicted", maxHeld>>20, budget>>20, ms.HeapAlloc>>20, s.Pending, s.MemEvicted)
	if ms.HeapAlloc > budget+32<<20 {
		t.Errorf("heap %d MiB with a %d MiB state budget", ms.HeapAlloc>>20, budget>>20)
	}
	if s.Defrag.Datagrams != queries || s.MemEvicted == 0 || int(s.MemEvicted) != records[dnsqr.UDPUnansweredQuery] {
		t.Errorf("datagrams %d, evicted %d, unanswered records %d; %s", s.Defrag.Datagrams, s.MemEvicted, records[dnsqr.UDPUnansweredQuery], statsLine(p))
	}
	p.Flush()
	if records[dnsqr.UDPUnansweredQuery] != queries {
		t.Errorf("%d of %d queries came out; %s", records[dnsqr.UDPUnansweredQuery], queries, statsLine(p))
	}
}

func statsLine(p *Pipeline) string {
	s := p.Stats()
	return s.String()
}

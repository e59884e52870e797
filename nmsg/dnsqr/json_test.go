package dnsqr

import (
	"math"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// The JSON writer formats names, times and floats by hand; these oracles are the plain library
// calls it must match octet for octet.

func oracleName(wire []byte) []byte { return strconv.AppendQuote(nil, NameString(wire)) }

func oracleTime(ns int64) []byte {
	return time.Unix(0, ns).UTC().AppendFormat(nil, "2006-01-02 15:04:05.000000000")
}

func oracleFloat(f float64) []byte {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return []byte("null")
	}
	s := strconv.FormatFloat(f, 'g', 15, 64)
	if v, err := strconv.ParseFloat(s, 64); err == nil && v == f {
		return []byte(s)
	}
	return strconv.AppendFloat(nil, f, 'g', 17, 64)
}

func TestJSONNames(t *testing.T) {
	names := []string{"", "\x00", "\x03www\x07example\x00", "\x03a.b\x01\x00\x00", "\x04a\"\\b\x00",
		"\x02\x7f\x80\x00", "\x01 \x00", "\x40", "\x05abc", "\x03abc\x03de"}
	r := rand.New(rand.NewPCG(1, 1))
	for range 2000 {
		var w []byte
		for range r.IntN(4) {
			l := r.IntN(8)
			w = append(w, byte(l))
			for range l {
				w = append(w, byte(r.IntN(256)))
			}
		}
		if r.IntN(4) != 0 {
			w = append(w, 0)
		}
		names = append(names, string(w))
	}
	for _, n := range names {
		want := string(oracleName([]byte(n)))
		if got := string(appendQuotedName(nil, []byte(n))); got != want {
			t.Errorf("%q: got %s, want %s", n, got, want)
		}
	}
}

func TestJSONTimes(t *testing.T) {
	times := []int64{0, -1, 1, 999999999, 1e9, -1e9, -1e9 - 1, 1689270069408162000, math.MaxInt64, math.MinInt64,
		time.Date(2000, 2, 29, 23, 59, 59, 999999999, time.UTC).UnixNano(), time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()}
	r := rand.New(rand.NewPCG(2, 2))
	for range 5000 {
		times = append(times, r.Int64()-r.Int64(), r.Int64N(4e18))
	}
	for _, ns := range times {
		if got, want := string(appendTime(nil, ns)), string(oracleTime(ns)); got != want {
			t.Errorf("%d: got %s, want %s", ns, got, want)
		}
	}
}

func TestJSONFloats(t *testing.T) {
	fs := []float64{0, 0.00571, 0.024184, 61.25, 1e6, 1e15, 1e16, 1e21, 1e-5, 123456789.123456789, -3.5,
		math.Inf(1), math.NaN(), math.SmallestNonzeroFloat64, math.MaxFloat64}
	r := rand.New(rand.NewPCG(3, 3))
	for range 5000 {
		fs = append(fs, float64(r.Int64N(1e12))/1e9, r.Float64()*math.Pow(10, float64(r.IntN(40)-20)))
	}
	for _, f := range fs {
		if got, want := string(appendFloat(nil, f)), string(oracleFloat(f)); got != want {
			t.Errorf("%v: got %s, want %s", f, got, want)
		}
	}
}

// TestAppendJSONGolden pins whole lines (written by the library-call version of the writer).
func TestAppendJSONGolden(t *testing.T) {
	want := []string{
		`{"time":"2023-07-13 17:41:09.408162000","vname":"base","mname":"dnsqr","source":"19721976","message":{"type":"UDP_QUERY_RESPONSE","query_ip":"203.0.113.195","response_ip":"192.5.5.241","proto":"UDP","query_port":54924,"response_port":53,"id":60913,"qname":"icann.org.","qclass":"IN","qtype":"A","rcode":"NXDOMAIN","query_packet":["RQEC"],"query_time_sec":[1689270069],"query_time_nsec":[408162000],"response_packet":["RQM=","RQQF"],"response_time_sec":[1689270069,1689270069],"response_time_nsec":[413872000,413872999],"delay":0.005710999,"udp_checksum":"INCORRECT","resolver_address_zeroed":true}}`,
		`{"time":"1969-12-31 23:59:59.999999999","vname":"base","mname":"dnsqr","message":{"type":"UDP_UNANSWERED_QUERY","query_ip":"2001:db8::1","response_ip":"2001:db8::2","proto":"UDP","query_port":1,"response_port":53,"id":0,"query_packet":["YA=="],"query_time_sec":[-1],"query_time_nsec":[999999999],"response_packet":[],"response_time_sec":[],"response_time_nsec":[],"timeout":61.25}}`,
		`{"time":"1970-01-01 00:00:00.000000000","vname":"base","mname":"dnsqr","message":{"type":"ICMP","query_ip":"192.0.2.1","response_ip":"192.0.2.2","proto":"ICMP","query_port":0,"response_port":0,"id":0,"query_packet":[],"query_time_sec":[],"query_time_nsec":[],"response_packet":[],"response_time_sec":[],"response_time_nsec":[],"tcp":"","icmp":"RQAB"}}`,
	}
	for i, r := range sample() {
		p := PayloadInfo{Time: r.Time()}
		if i == 0 {
			p.Source, p.HasSource = 0x19721976, true
		}
		if got := string(AppendJSON(nil, p, r)); got != want[i] {
			t.Errorf("record %d:\n got %s\nwant %s", i, got, want[i])
		}
	}
}

func TestAppendJSONNoAllocs(t *testing.T) {
	r := realRecord(t)
	buf := make([]byte, 0, 8192)
	p := PayloadInfo{Time: r.Time(), Source: 1, HasSource: true}
	if n := testing.AllocsPerRun(100, func() { buf = AppendJSON(buf[:0], p, r) }); n != 0 {
		t.Errorf("%v allocations", n)
	}
}

// realRecord is an answered UDP query whose packets parse, so that every field of a line is written.
func realRecord(t testing.TB) *Record {
	q := []byte{0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 198, 51, 100, 2, 192, 0, 2, 10, 0x9c, 0x40, 0, 53, 0, 0, 0, 0,
		0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0, 0, 1, 0, 1}
	q[3] = byte(len(q))
	resp := append([]byte{}, q...)
	resp[12], resp[13], resp[14], resp[15], resp[16], resp[17], resp[18], resp[19] = 192, 0, 2, 10, 198, 51, 100, 2
	resp = append(resp, 0xc0, 12, 0, 1, 0, 1, 0, 0, 14, 16, 0, 4, 192, 0, 2, 99)
	resp[3] = byte(len(resp))
	resp[30] |= 0x80
	resp[35] = 1
	r := &Record{Type: UDPQueryResponse, QueryIP: netip.MustParseAddr("198.51.100.2"), ResponseIP: netip.MustParseAddr("192.0.2.10"),
		Proto: 17, QueryPort: 40000, ResponsePort: 53, ID: 0x1234, HasQuestion: true, Qname: []byte("\x07example\x00"), Qtype: 1, Qclass: 1,
		HasRcode: true, QueryPackets: [][]byte{q}, QueryTimes: []int64{1689270069408162000},
		ResponsePackets: [][]byte{resp}, ResponseTimes: []int64{1689270069413872000}, HasChecksum: true, UDPChecksum: ChecksumCorrect}
	if _, ok := DNSPayload(r.ResponsePackets); !ok {
		t.Fatal("test response does not parse")
	}
	return r
}

func BenchmarkAppendJSON(b *testing.B) {
	r := realRecord(b)
	buf := make([]byte, 0, 8192)
	p := PayloadInfo{Time: r.Time(), Source: 1, HasSource: true}
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendJSON(buf[:0], p, r)
	}
	b.SetBytes(int64(len(buf)))
}

func TestJSONSeconds(t *testing.T) {
	ns := []int64{0, 1, -1, 99999, 100000, -100000, 5710999, 1e9, 2e9, 20e9, 123456789012345, 1e15 - 1, 1e15, 1 << 53, math.MaxInt64, -math.MaxInt64}
	r := rand.New(rand.NewPCG(4, 4))
	for range 20000 {
		v := r.Int64N(int64(math.Pow(10, float64(1+r.IntN(17)))))
		if r.IntN(4) == 0 {
			v = -v
		}
		ns = append(ns, v, v/1000*1000, v/1e6*1e6)
	}
	for _, v := range ns {
		if got, want := string(appendSeconds(nil, v)), string(oracleFloat(float64(v)/1e9)); got != want {
			t.Errorf("%d: got %s, want %s", v, got, want)
		}
	}
}

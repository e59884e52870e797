package dnswire

import (
	"testing"

	"github.com/miekg/dns"
)

func pack(t testing.TB, m *dns.Msg) []byte {
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestQuestionAndECS(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("WwW.Example.COM.", dns.TypeAAAA)
	m.SetEdns0(1232, true)
	m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_SUBNET{Code: 8, Family: 1, SourceNetmask: 24, Address: []byte{203, 0, 113, 0}})
	b := pack(t, m)
	h, ok := ParseHeader(b)
	if !ok || h.QDCount != 1 || h.Response() {
		t.Fatalf("header %+v", h)
	}
	q, ok := ParseQuestion(b)
	if !ok || q.Type != dns.TypeAAAA || q.Class != 1 || string(q.Name) != "\x03WwW\x07Example\x03COM\x00" {
		t.Fatalf("question %+v", q)
	}
	if !EqualFold(q.Name, []byte("\x03www\x07example\x03com\x00")) || EqualFold(q.Name, []byte("\x03www\x07example\x03org\x00")) {
		t.Error("EqualFold")
	}
	var found []Option
	if !FindOptions(b, func(o Option) { found = append(found, o) }) {
		t.Fatal("FindOptions failed")
	}
	if len(found) != 1 || found[0].Code != OptionECS || found[0].Len != 7 || b[found[0].Off+4+4] != 203 {
		t.Errorf("options %+v", found)
	}
}

// FuzzParse checks the wire readers never panic and agree with miekg/dns on what they both parse.
func FuzzParse(f *testing.F) {
	m := new(dns.Msg)
	m.SetQuestion("example.com.", dns.TypeA)
	m.SetEdns0(4096, false)
	f.Add(pack(f, m))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, ok := ParseHeader(b)
		if !ok {
			return
		}
		q, qok := ParseQuestion(b)
		FindOptions(b, func(o Option) {
			if o.Off < 0 || o.Off+4+o.Len > len(b) {
				t.Fatalf("option out of bounds: %+v in %d octets", o, len(b))
			}
		})
		var dm dns.Msg
		if h.QDCount == 1 && qok && dm.Unpack(b) == nil && len(dm.Question) == 1 {
			if dm.Question[0].Qtype != q.Type {
				t.Fatalf("qtype %d, miekg %d", q.Type, dm.Question[0].Qtype)
			}
		}
	})
}

// TestScanOptionsCut pins where a message stops being accounted for.
func TestScanOptionsCut(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("example.com.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_SUBNET{Code: 8, Family: 1, SourceNetmask: 24, Address: []byte{203, 0, 113, 0}})
	good := pack(t, m)
	// The OPT record is last; its RDATA is the final 11 octets: code, length, family, source
	// prefix, scope prefix, 3 address octets.
	for _, tc := range []struct {
		name string
		msg  []byte
		cut  int
	}{
		{"well formed", good, len(good)},
		{"trailing octet", append(append([]byte{}, good...), 0), len(good)},
		{"short header", good[:11], 0},
		{"record cut short", good[:len(good)-3], len(good) - 11 - 11},
		{"ECS one octet short of its prefix", func() []byte {
			b := append([]byte{}, good...)
			b[len(b)-5] = 25 // source prefix /25 needs 4 address octets, the option has 3
			return b
		}(), len(good) - 11},
		{"unknown family", func() []byte {
			b := append([]byte{}, good...)
			b[len(b)-6] = 3
			return b
		}(), len(good) - 11},
		{"compression pointer beyond the message", func() []byte {
			b := append([]byte{}, good...)
			b[12], b[13] = 0xe0, 0x30 // the question's name becomes a pointer to offset 0x2030
			return b
		}(), 12},
		{"compression pointer forward", func() []byte {
			b := append([]byte{}, good...)
			b[12], b[13] = 0xc0, 20
			return b
		}(), 12},
		{"option overruns RDATA", func() []byte {
			b := append([]byte{}, good...)
			b[len(b)-12]-- // RDLENGTH one less than the option needs
			return append(b, 0)
		}(), len(good) - 11},
	} {
		if got := ScanOptions(tc.msg, func(Option) {}); got != tc.cut {
			t.Errorf("%s: cut %d, want %d (len %d)", tc.name, got, tc.cut, len(tc.msg))
		}
	}
}

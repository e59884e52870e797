package decode

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// udp4 is a minimal IPv4/UDP datagram 192.0.2.1:5300 -> 192.0.2.2:53 carrying "abcd".
func udp4() []byte {
	b := []byte{0x45, 0, 0, 32, 0, 1, 0, 0, 64, 17, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2,
		0x14, 0xb4, 0, 53, 0, 12, 0, 0, 'a', 'b', 'c', 'd'}
	return b
}

func eth(etype uint16, payload []byte) []byte {
	b := make([]byte, 12, 14+len(payload))
	b = binary.BigEndian.AppendUint16(b, etype)
	return append(b, payload...)
}

// tag prepends an 802.1Q-style tag (TCI 7) whose inner type is inner.
func tag(inner uint16, payload []byte) []byte {
	b := binary.BigEndian.AppendUint16([]byte{0, 7}, inner)
	return append(b, payload...)
}

func TestDecodeLinkStacks(t *testing.T) {
	ip := udp4()
	qinq := append([]byte{}, tag(0x8100, tag(0x0800, ip))...)
	mpls := append([]byte{0, 0x01, 0x00, 0x40, 0, 0x02, 0x01, 0x40}, ip...) // two labels, bottom-of-stack on the second
	padded := append(append([]byte{}, ip...), 0, 0, 0, 0, 0, 0)             // Ethernet minimum-size padding
	sll := append(make([]byte, 14), append([]byte{0x08, 0x00}, ip...)...)
	sll2 := append(append([]byte{0x08, 0x00}, make([]byte, 18)...), ip...)
	for _, tc := range []struct {
		name  string
		link  LinkType
		frame []byte
	}{
		{"raw", LinkRaw, ip},
		{"ethernet", LinkEthernet, eth(0x0800, ip)},
		{"ethernet padded", LinkEthernet, eth(0x0800, padded)},
		{"802.1Q", LinkEthernet, eth(0x8100, tag(0x0800, ip))},
		{"QinQ 88a8", LinkEthernet, eth(0x88a8, qinq)},
		{"QinQ 9100", LinkEthernet, eth(0x9100, qinq)},
		{"MPLS", LinkEthernet, eth(0x8847, mpls)},
		{"SLL", LinkSLL, sll},
		{"SLL2", LinkSLL2, sll2},
		{"null", LinkNull, append([]byte{2, 0, 0, 0}, ip...)},
	} {
		var p Packet
		if r := Decode(tc.link, tc.frame, &p); r != OK {
			t.Errorf("%s: %v", tc.name, r)
			continue
		}
		if p.Src != netip.MustParseAddr("192.0.2.1") || p.DstPort != 53 || p.SrcPort != 5300 || string(p.Payload) != "abcd" || len(p.Net) != 32 {
			t.Errorf("%s: got %v:%d -> %v:%d payload %q net %d", tc.name, p.Src, p.SrcPort, p.Dst, p.DstPort, p.Payload, len(p.Net))
		}
	}
}

func TestDecodeIPv6ExtensionHeaders(t *testing.T) {
	udp := []byte{0x14, 0xb4, 0, 53, 0, 12, 0, 0, 'a', 'b', 'c', 'd'}
	// hop-by-hop (8 octets) -> destination options (16 octets: length 1) -> routing (8) -> UDP.
	// The C reference drops any packet with an extension header of length >= 1.
	ext := []byte{60, 0, 1, 4, 0, 0, 0, 0,
		43, 1, 1, 12, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
		17, 0, 0, 0, 0, 0, 0, 0}
	pl := append(ext, udp...)
	b := []byte{0x60, 0, 0, 0, 0, byte(len(pl)), 0, 64}
	b = append(b, netip.MustParseAddr("2001:db8::1").AsSlice()...)
	b = append(b, netip.MustParseAddr("2001:db8::2").AsSlice()...)
	b = append(b, pl...)
	var p Packet
	if r := DecodeIP(b, &p); r != OK {
		t.Fatalf("DecodeIP: %v", r)
	}
	if p.Proto != ProtoUDP || p.DstPort != 53 || string(p.Payload) != "abcd" || p.HdrLen != 40+len(ext) {
		t.Errorf("got proto %d port %d payload %q hdr %d", p.Proto, p.DstPort, p.Payload, p.HdrLen)
	}
}

func TestDecodeRejects(t *testing.T) {
	ip := udp4()
	for _, tc := range []struct {
		name  string
		frame []byte
		want  Result
	}{
		{"short", ip[:10], BadIPv4},
		{"cut", ip[:30], IPTruncated},
		{"bad ihl", append([]byte{0x41}, ip[1:]...), BadIPv4},
		{"udp length beyond", append(append([]byte{}, ip[:24]...), 0, 200, 0, 0, 'a', 'b', 'c', 'd'), L4Truncated},
		{"version 5", append([]byte{0x55}, ip[1:]...), NotIP},
	} {
		var p Packet
		if r := DecodeIP(tc.frame, &p); r != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, r, tc.want)
		}
	}
	var p Packet
	many := udp4()
	for i := 0; i < maxTags+1; i++ {
		many = tag(0x8100, many)
		many[2], many[3] = 0x81, 0x00
	}
	if r := Decode(LinkEthernet, eth(0x8100, many), &p); r != TooManyTags {
		t.Errorf("deep tag stack: %v", r)
	}
}

// FuzzDecode checks that no frame panics the decoder and that, whenever gopacket fully decodes a
// frame to UDP or TCP, the two decoders agree on addresses, ports and payload.
func FuzzDecode(f *testing.F) {
	f.Add(uint8(1), eth(0x0800, udp4()))
	f.Add(uint8(1), eth(0x8100, tag(0x0800, udp4())))
	f.Add(uint8(101), udp4())
	f.Fuzz(func(t *testing.T, lt uint8, frame []byte) {
		links := []LinkType{LinkEthernet, LinkRaw, LinkSLL, LinkSLL2, LinkNull}
		link := links[int(lt)%len(links)]
		var p Packet
		r := Decode(link, frame, &p)
		if link != LinkEthernet || r != OK || p.Frag {
			return
		}
		var e layers.Ethernet
		var d1 layers.Dot1Q
		var ip4 layers.IPv4
		var ip6 layers.IPv6
		var u layers.UDP
		var tc layers.TCP
		parser := gopacket.NewDecodingLayerParser(layers.LayerTypeEthernet, &e, &d1, &ip4, &ip6, &u, &tc)
		parser.IgnoreUnsupported = true
		var got []gopacket.LayerType
		if err := parser.DecodeLayers(frame, &got); err != nil || len(got) == 0 {
			return
		}
		last := got[len(got)-1]
		if last != layers.LayerTypeUDP && last != layers.LayerTypeTCP {
			return
		}
		var src []byte
		if p.Src.Is4() {
			src = ip4.SrcIP.To4()
		} else {
			src = ip6.SrcIP.To16()
		}
		if !bytes.Equal(src, p.Src.AsSlice()) {
			t.Fatalf("source %v, gopacket %v", p.Src, src)
		}
		if last == layers.LayerTypeUDP && (uint16(u.DstPort) != p.DstPort || !bytes.Equal(u.Payload, p.Payload)) {
			t.Fatalf("UDP port %d payload %x, gopacket %d %x", p.DstPort, p.Payload, u.DstPort, u.Payload)
		}
		if last == layers.LayerTypeTCP && (uint16(tc.SrcPort) != p.SrcPort || tc.Seq != p.TCPSeq) {
			t.Fatalf("TCP port %d seq %d, gopacket %d %d", p.SrcPort, p.TCPSeq, tc.SrcPort, tc.Seq)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	frame := eth(0x8100, tag(0x0800, udp4()))
	var p Packet
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if Decode(LinkEthernet, frame, &p) != OK {
			b.Fatal("decode")
		}
	}
}

//go:build ignore

// distinct-copies rewrites a capture made of time-shifted copies of one capture (what
// ci/bench-sensor builds) so that the copies no longer repeat each other's records: each copy gets
// its own substitution of the letters of every DNS name, its own DNS ids and fresh DNSSEC
// signatures, the same within a copy so that queries still pair with their responses. Replicated
// records compress 26:1, distinct traffic about 3:1, so zlib benchmarks need this. IP fragments are
// copied unchanged (their responses then no longer pair).
//
//	go run ci/distinct-copies.go IN.pcap OUT.pcap PACKETS_PER_COPY
package main

import (
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/miekg/dns"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "distinct-copies:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) != 4 {
		return fmt.Errorf("usage: distinct-copies IN.pcap OUT.pcap PACKETS_PER_COPY")
	}
	per, err := strconv.Atoi(os.Args[3])
	if err != nil || per < 1 {
		return fmt.Errorf("PACKETS_PER_COPY: %q is not a positive number", os.Args[3])
	}
	in, err := os.Open(os.Args[1])
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(os.Args[2])
	if err != nil {
		return err
	}
	r, err := pcapgo.NewReader(in)
	if err != nil {
		return err
	}
	w := pcapgo.NewWriter(out)
	if err := w.WriteFileHeader(65536, r.LinkType()); err != nil {
		return err
	}
	var c copyState
	changed, kept := 0, 0
	for i := 0; ; i++ {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF {
			break
		} else if err != nil {
			return err
		}
		if i%per == 0 {
			c = newCopy(uint64(i / per))
		}
		if b, ok := c.rewrite(data, uint64(i)); ok {
			data, ci.CaptureLength, ci.Length = b, len(b), len(b)
			changed++
		} else {
			kept++
		}
		if err := w.WritePacket(ci, data); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "distinct-copies: %d DNS packets rewritten, %d copied\n", changed, kept)
	return out.Close()
}

type copyState struct {
	letters [26]byte
	idMask  uint16
}

func newCopy(n uint64) copyState {
	rng := rand.New(rand.NewPCG(n, 42))
	var c copyState
	for j, v := range rng.Perm(26) {
		c.letters[j] = 'a' + byte(v)
	}
	c.idMask = uint16(rng.Uint32())
	return c
}

func (c *copyState) name(s string) string {
	b := []byte(strings.ToLower(s))
	for j, x := range b {
		if x >= 'a' && x <= 'z' {
			b[j] = c.letters[x-'a']
		}
	}
	return string(b)
}

// rewrite returns the packet with its DNS message rewritten, or false for anything that is not
// one whole unfragmented DNS message over UDP.
func (c *copyState) rewrite(data []byte, seed uint64) ([]byte, bool) {
	pkt := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
	udp, _ := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if udp == nil || pkt.ErrorLayer() != nil || (udp.SrcPort != 53 && udp.DstPort != 53) {
		return nil, false
	}
	if ip4, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok && (ip4.Flags&layers.IPv4MoreFragments != 0 || ip4.FragOffset != 0) {
		return nil, false
	}
	var m dns.Msg
	if m.Unpack(udp.Payload) != nil {
		return nil, false
	}
	m.Id ^= c.idMask
	for j := range m.Question {
		m.Question[j].Name = c.name(m.Question[j].Name)
	}
	sig := rand.New(rand.NewPCG(seed, 7))
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			if h.Rrtype == dns.TypeOPT {
				continue
			}
			h.Name = c.name(h.Name)
			switch v := rr.(type) {
			case *dns.NS:
				v.Ns = c.name(v.Ns)
			case *dns.CNAME:
				v.Target = c.name(v.Target)
			case *dns.SOA:
				v.Ns, v.Mbox = c.name(v.Ns), c.name(v.Mbox)
			case *dns.NSEC:
				v.NextDomain = c.name(v.NextDomain)
			case *dns.RRSIG:
				v.SignerName = c.name(v.SignerName)
				b, _ := base64.StdEncoding.DecodeString(v.Signature)
				for k := range b {
					b[k] = byte(sig.Uint32())
				}
				v.Signature = base64.StdEncoding.EncodeToString(b)
			}
		}
	}
	m.Compress = true
	payload, err := m.Pack()
	if err != nil {
		return nil, false
	}
	var ls []gopacket.SerializableLayer
	for _, l := range pkt.Layers() {
		switch l := l.(type) {
		case *layers.IPv4:
			udp.SetNetworkLayerForChecksum(l)
		case *layers.IPv6:
			udp.SetNetworkLayerForChecksum(l)
		}
		if l == udp {
			ls = append(ls, udp, gopacket.Payload(payload))
			break
		}
		s, ok := l.(gopacket.SerializableLayer)
		if !ok {
			return nil, false
		}
		ls = append(ls, s)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		return nil, false
	}
	return buf.Bytes(), true
}

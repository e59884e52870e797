package nmsg

import "testing"

// BenchmarkParse measures the protobuf field reading alone: a container's fields (payloads and
// their CRCs), each payload's fields, and a fragment's, without I/O, zlib or CRC checks.
func BenchmarkParse(b *testing.B) {
	ps := benchPayloads()
	var body []byte
	var bld builder
	bld.withCRC = true
	bld.reset()
	for i := range 64 {
		p := &ps[i]
		_, psize, crc := bld.sizeWith(p, 0)
		bld.add(p, psize, crc)
	}
	bld.finish(true, 7, 0x1234567890)
	body = bld.buf[HeaderSize:]
	b.Run("container", func(b *testing.B) {
		var c container
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			if err := parseNmsg(body, &c); err != nil || len(c.payloads) != 64 {
				b.Fatal(err, len(c.payloads))
			}
		}
	})
	var c container
	if err := parseNmsg(body, &c); err != nil {
		b.Fatal(err)
	}
	b.Run("payload", func(b *testing.B) {
		var p Payload
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := ParsePayload(c.payloads[i%len(c.payloads)], &p); err != nil {
				b.Fatal(err)
			}
		}
	})
	frag := appendFragment(nil, 0x12345678, 3, 9, ps[0].Data, true, 0xdeadbeef)
	b.Run("fragment", func(b *testing.B) {
		var fr fragment
		b.ReportAllocs()
		for b.Loop() {
			if err := parseFragment(frag, &fr); err != nil {
				b.Fatal(err)
			}
		}
	})
}

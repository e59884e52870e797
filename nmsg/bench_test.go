package nmsg

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
	"time"
)

func benchPayloads() []Payload {
	r := rand.New(rand.NewPCG(1, 2))
	ps := make([]Payload, 256)
	for i := range ps {
		ps[i] = testPayload(i, compressibleData(r, 150+r.IntN(400)))
	}
	return ps
}

func BenchmarkFileWriter(b *testing.B) {
	for _, z := range []bool{false, true} {
		name := "plain"
		if z {
			name = "zlib"
		}
		b.Run(name, func(b *testing.B) {
			ps := benchPayloads()
			fw, _ := NewFileWriter(io.Discard, FileOptions{Zlib: z, CRC: true})
			b.ReportAllocs()
			b.ResetTimer()
			var n int
			for i := 0; b.Loop(); i++ {
				p := &ps[i%len(ps)]
				n += len(p.Data)
				fw.Write(p)
			}
			fw.Flush()
			b.SetBytes(int64(n / max(1, b.N)))
		})
	}
}

func BenchmarkReader(b *testing.B) {
	for _, z := range []bool{false, true} {
		name := "plain"
		if z {
			name = "zlib"
		}
		b.Run(name, func(b *testing.B) {
			ps := benchPayloads()
			var buf bytes.Buffer
			fw, _ := NewFileWriter(&buf, FileOptions{Zlib: z, CRC: true, MaxSize: 64 << 10})
			for range 8 {
				for i := range ps {
					fw.Write(&ps[i])
				}
			}
			fw.Close()
			data := buf.Bytes()
			src := bytes.NewReader(data)
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				src.Reset(data)
				rd := NewReader(src, ReaderOptions{})
				for {
					if _, err := rd.Next(); err != nil {
						if err != io.EOF {
							b.Fatal(err)
						}
						break
					}
				}
			}
		})
	}
}

func BenchmarkReassembler(b *testing.B) {
	ps := benchPayloads()
	var c capture
	dw, _ := NewDatagramWriter(c.send, DatagramOptions{CRC: true, Rand: newDetRand(4)})
	for i := range ps {
		dw.Write(&ps[i])
	}
	big := testPayload(0, compressibleData(rand.New(rand.NewPCG(5, 5)), 5000))
	dw.Write(&big)
	dw.Flush()
	r := NewReassembler(ReassemblerOptions{})
	now := time.Unix(1700000000, 0)
	b.ReportAllocs()
	for b.Loop() {
		for _, d := range c.dgrams {
			if _, err := r.Feed("s", d, now); err != nil {
				b.Fatal(err)
			}
		}
	}
}

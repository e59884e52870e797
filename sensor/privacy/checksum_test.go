package privacy

import (
	"math/rand/v2"
	"testing"
)

func naive(b []byte, odd bool) uint16 {
	var s uint32
	for i, c := range b {
		if (i%2 == 0) != odd {
			s += uint32(c) << 8
		} else {
			s += uint32(c)
		}
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// TestSumMatchesNaive pins the 64-bit checksum loop to the textbook 16-bit definition.
func TestSumMatchesNaive(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := 0; n < 300; n++ {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if n%7 == 0 {
			for i := range b {
				b[i] = 0xff
			}
		}
		for _, odd := range []bool{false, true} {
			if got, want := fold(sum(0, b, odd)), naive(b, odd); got != want {
				t.Fatalf("len %d odd %v: %#04x, want %#04x", n, odd, got, want)
			}
		}
	}
}

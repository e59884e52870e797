package inet

import (
	"math/rand/v2"
	"testing"
)

func TestSumMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		b := make([]byte, r.IntN(200))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		if i%7 == 0 {
			for j := range b {
				b[j] = 0xff // carries everywhere
			}
		}
		cut := 0
		if len(b) > 0 {
			cut = r.IntN(len(b) + 1)
		}
		got := Fold(Sum(Sum(0, b[:cut], false), b[cut:], cut%2 == 1))
		if want := Reference(b); got != want {
			t.Fatalf("len %d cut %d: Sum %04x, reference %04x", len(b), cut, got, want)
		}
	}
}

// TestUpdate: patching a checksum after changing octets gives the checksum computed afresh.
func TestUpdate(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 1000 {
		b := make([]byte, 2+2*r.IntN(60))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		hc := ^Reference(b)
		at := 2 * r.IntN(len(b)/2)
		n := min(len(b)-at, 2*(1+r.IntN(4)))
		old := Sum(0, b[at:at+n], false)
		clear(b[at : at+n])
		if got, want := Update(hc, old, 0), ^Reference(b); got != want && !(got == 0xffff && want == 0) && !(got == 0 && want == 0xffff) {
			t.Fatalf("Update = %04x, recomputed %04x", got, want)
		}
	}
}

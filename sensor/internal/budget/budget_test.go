package budget

import "testing"

// fake holds items of given sizes with increasing times.
type fake struct {
	times, sizes []int64
	evicted      int
}

func (f *fake) Bytes() int {
	n := 0
	for _, s := range f.sizes {
		n += int(s)
	}
	return n
}

func (f *fake) Oldest() (int64, bool) {
	if len(f.times) == 0 {
		return 0, false
	}
	return f.times[0], true
}

func (f *fake) EvictOldest() {
	f.times, f.sizes = f.times[1:], f.sizes[1:]
	f.evicted++
}

// TestOldestFirstAcrossHolders: room is made by evicting the oldest item of any holder, one at
// a time, until the new octets fit; what cannot fit at all is refused.
func TestOldestFirstAcrossHolders(t *testing.T) {
	a := &fake{times: []int64{1, 4, 6}, sizes: []int64{10, 10, 10}}
	b := &fake{times: []int64{2, 3, 5}, sizes: []int64{20, 20, 20}}
	bg := New(100)
	bg.Register(a)
	bg.Register(b)
	if bg.Used() != 90 {
		t.Fatalf("used %d", bg.Used())
	}
	if !bg.Reserve(10) || a.evicted+b.evicted != 0 {
		t.Fatalf("reserve within the budget evicted %d/%d", a.evicted, b.evicted)
	}
	// 90 + 45 > 100: evict t=1 (a, 10), t=2 (b, 20): 60 + 45 = 105 > 100, then t=3 (b, 20).
	if !bg.Reserve(45) || a.evicted != 1 || b.evicted != 2 || bg.Evicted(0) != 1 || bg.Evicted(1) != 2 {
		t.Fatalf("evicted a %d, b %d; want 1, 2", a.evicted, b.evicted)
	}
	if bg.Reserve(101) {
		t.Error("more than the whole budget reserved")
	}
	var nb *Budget
	if !nb.Reserve(1<<40) || nb.Used() != 0 {
		t.Error("a nil budget bounds something")
	}
}

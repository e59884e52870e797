package health

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// clock is a settable fake clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time      { return c.t }
func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock               { return &clock{t: time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)} }
func flag(ok *bool) Probe {
	return func(time.Time) Result { return Result{OK: *ok, Detail: "d", Fix: "f"} }
}
func find(cs []*Check, path ...string) *Check {
	for _, c := range cs {
		if c.Name == path[0] {
			if len(path) == 1 {
				return c
			}
			return find(c.Children, path[1:]...)
		}
	}
	return nil
}

// marked lists the names of every check marked first_failure.
func marked(cs []*Check) []string {
	var out []string
	for _, c := range cs {
		if c.FirstFailure {
			out = append(out, c.Name)
		}
		out = append(out, marked(c.Children)...)
	}
	return out
}

func TestFirstFailure(t *testing.T) {
	// link → frames → dns ; pairs (a second root) → output
	for _, tc := range []struct {
		name     string
		failing  []string
		wantPath []string
	}{
		{"all ok", nil, nil},
		{"leaf", []string{"dns"}, []string{"link", "frames", "dns"}},
		{"parent before its failing child", []string{"frames", "dns"}, []string{"link", "frames"}},
		{"root before everything", []string{"link", "output"}, []string{"link"}},
		{"second root", []string{"output"}, []string{"pairs", "output"}},
		{"depth first: a child of the first root before the second root", []string{"pairs", "dns"}, []string{"link", "frames", "dns"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok := map[string]*bool{}
			node := func(name string, children ...*Node) *Node {
				b := true
				ok[name] = &b
				return NewNode(name, flag(&b), children...)
			}
			tree := NewTree("testd", newClock().now,
				node("link", node("frames", node("dns"))),
				node("pairs", node("output")))
			for _, f := range tc.failing {
				*ok[f] = false
			}
			r := tree.Evaluate()
			if !reflect.DeepEqual(r.FirstFailurePath, tc.wantPath) {
				t.Errorf("first_failure_path = %q, want %q", r.FirstFailurePath, tc.wantPath)
			}
			if r.OK != (tc.wantPath == nil) {
				t.Errorf("ok = %v with %d failing", r.OK, len(tc.failing))
			}
			m := marked(r.Checks)
			if tc.wantPath == nil && m != nil || tc.wantPath != nil && (len(m) != 1 || m[0] != tc.wantPath[len(tc.wantPath)-1]) {
				t.Errorf("marked %q, want only the last of %q", m, tc.wantPath)
			}
			for _, f := range tc.failing {
				if c := find(r.Checks, pathOf(f)...); c == nil || c.OK {
					t.Errorf("%s: %+v, want failing (every check is evaluated, not only up to the first failure)", f, c)
				}
			}
		})
	}
}

func pathOf(name string) []string {
	return map[string][]string{"link": {"link"}, "frames": {"link", "frames"}, "dns": {"link", "frames", "dns"},
		"pairs": {"pairs"}, "output": {"pairs", "output"}}[name]
}

func TestSince(t *testing.T) {
	c := newClock()
	start := c.now()
	ok := true
	tree := NewTree("testd", c.now, NewNode("x", flag(&ok)))
	since := func() time.Time { return tree.Evaluate().Checks[0].Since }

	c.add(time.Minute)
	if got := since(); !got.Equal(start) {
		t.Errorf("first evaluation: since %v, want the start %v", got, start)
	}
	c.add(time.Minute)
	if got := since(); !got.Equal(start) {
		t.Errorf("unchanged: since %v, want %v", got, start)
	}
	c.add(time.Minute)
	ok = false
	flipped := c.now()
	if got := since(); !got.Equal(flipped) {
		t.Errorf("after the change: since %v, want %v", got, flipped)
	}
	c.add(time.Hour)
	if got := since(); !got.Equal(flipped) {
		t.Errorf("still failing: since %v, want %v", got, flipped)
	}
	ok = true
	if got := since(); !got.Equal(c.now()) {
		t.Errorf("recovered: since %v, want %v", got, c.now())
	}
}

func TestIncreasing(t *testing.T) {
	c := newClock()
	var v uint64
	const window = time.Minute
	tree := NewTree("testd", c.now, NewNode("frames", Increasing(func() uint64 { return v }, window, "frames", "check the cable")))
	check := func(step string, wantOK bool, wantSince time.Time, wantDetail string) {
		t.Helper()
		ch := tree.Evaluate().Checks[0]
		if ch.OK != wantOK || !ch.Since.Equal(wantSince) || !strings.Contains(ch.Detail, wantDetail) {
			t.Errorf("%s: ok=%v since=%v detail=%q, want ok=%v since=%v detail ~ %q", step, ch.OK, ch.Since, ch.Detail, wantOK, wantSince, wantDetail)
		}
		if !ch.OK && ch.Fix != "check the cable" {
			t.Errorf("%s: fix %q", step, ch.Fix)
		}
	}
	start := c.now()
	check("nothing yet", false, start, "no frames yet")
	c.add(10 * time.Second)
	v = 5
	check("first frames", true, c.now(), "5 frames")
	moved := c.now()
	c.add(30 * time.Second)
	check("within the window", true, moved, "5 frames")
	c.add(5 * time.Minute)
	// The counter went stale one window after its last seen move, not when someone looked.
	check("stalled", false, moved.Add(window), "none in the last 1m0s")
	c.add(time.Second)
	v = 6
	check("moving again", true, c.now(), "6 frames")
}

func TestStill(t *testing.T) {
	c := newClock()
	var v uint64
	const window = time.Minute
	tree := NewTree("testd", c.now, NewNode("output", Still(func() uint64 { return v }, window, "output errors", "free the disk")))
	eval := func() *Check { return tree.Evaluate().Checks[0] }
	if ch := eval(); !ch.OK || ch.Detail != "no output errors" {
		t.Errorf("clean: %+v", ch)
	}
	c.add(time.Second)
	v = 3
	bad := c.now()
	if ch := eval(); ch.OK || !ch.Since.Equal(bad) || ch.Fix != "free the disk" {
		t.Errorf("errors: %+v, want failing since %v", ch, bad)
	}
	c.add(30 * time.Second)
	if ch := eval(); ch.OK {
		t.Errorf("within the window: %+v", ch)
	}
	c.add(time.Hour)
	if ch := eval(); !ch.OK || !ch.Since.Equal(bad.Add(window)) || !strings.Contains(ch.Detail, "3 output errors in all") {
		t.Errorf("quiet again: %+v, want ok since %v", ch, bad.Add(window))
	}

	// Errors counted before the first look are recent: the daemon may have just started failing.
	v2 := uint64(7)
	tree2 := NewTree("testd", c.now, NewNode("output", Still(func() uint64 { return v2 }, window, "output errors", "")))
	if ch := tree2.Evaluate().Checks[0]; ch.OK {
		t.Errorf("errors before the first look: %+v", ch)
	}
}

func TestNamesRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"empty name", func() { NewNode("", Fixed(true, "", "")) }},
		{"slash", func() { NewNode("a/b", Fixed(true, "", "")) }},
		{"no probe", func() { NewNode("a", nil) }},
		{"sibling twice", func() {
			NewNode("p", Fixed(true, "", ""), NewNode("a", Fixed(true, "", "")), NewNode("a", Fixed(true, "", "")))
		}},
		{"root twice", func() { NewTree("d", nil, NewNode("a", Fixed(true, "", "")), NewNode("a", Fixed(true, "", ""))) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("accepted")
				}
			}()
			tc.f()
		})
	}
}

func TestReportSchema(t *testing.T) {
	c := newClock()
	bad := false
	tree := NewTree("testd", c.now,
		NewNode("link", Fixed(true, "eth0 up", ""), NewNode("frames", flag(&bad), NewNode("dns", Fixed(true, "", "")))),
		NewNode("empty", Fixed(true, "", "")))
	for _, ok := range []bool{false, true} {
		bad = ok
		b, err := json.Marshal(tree.Evaluate())
		if err != nil {
			t.Fatal(err)
		}
		validDoc(t, "health.schema.json", b)
	}
	b, _ := json.Marshal(NewTree("testd", c.now).Evaluate())
	validDoc(t, "health.schema.json", b)
}

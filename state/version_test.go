package state

import (
	"math"
	"testing"
	"time"
)

func TestVersionOrderIsTotal(t *testing.T) {
	rng := newRand(1)
	for range 20000 {
		a, b, c := smallRecord(rng).Version, smallRecord(rng).Version, smallRecord(rng).Version
		if a.Compare(b) != -b.Compare(a) {
			t.Fatalf("not antisymmetric: %v vs %v", a, b)
		}
		if (a.Compare(b) == 0) != (a == b) {
			t.Fatalf("compare 0 but not equal: %v vs %v", a, b)
		}
		if a.Compare(b) <= 0 && b.Compare(c) <= 0 && a.Compare(c) > 0 {
			t.Fatalf("not transitive: %v <= %v <= %v but %v > %v", a, b, c, a, c)
		}
	}
}

func TestVersionOrdersByWallThenLogicalThenNode(t *testing.T) {
	ordered := []Version{
		{WallNanos: 1, Logical: 9, Node: "z"},
		{WallNanos: 2, Logical: 0, Node: "z"},
		{WallNanos: 2, Logical: 1, Node: "a"},
		{WallNanos: 2, Logical: 1, Node: "b"},
	}
	for i := 1; i < len(ordered); i++ {
		if !ordered[i-1].Less(ordered[i]) {
			t.Errorf("%v should be older than %v", ordered[i-1], ordered[i])
		}
	}
}

func TestHLCFollowsPhysicalClock(t *testing.T) {
	c := newFakeClock()
	h := NewHLC("n1", c.Now)
	v := h.Now()
	if v.WallNanos != c.Now().UnixNano() || v.Logical != 0 || v.Node != "n1" {
		t.Fatalf("first stamp %v, want wall %d logical 0 node n1", v, c.Now().UnixNano())
	}
	c.Advance(time.Millisecond)
	if w := h.Now(); w.WallNanos != c.Now().UnixNano() || w.Logical != 0 {
		t.Fatalf("after clock advanced got %v", w)
	}
}

func TestHLCIsStrictlyIncreasingWhenClockStallsOrStepsBack(t *testing.T) {
	c := newFakeClock()
	h := NewHLC("n1", c.Now)
	prev := h.Now()
	for i := range 1000 {
		switch i % 3 {
		case 0: // stall
		case 1:
			c.Advance(-time.Second)
		case 2:
			c.Advance(time.Microsecond)
		}
		v := h.Now()
		if !prev.Less(v) {
			t.Fatalf("step %d: %v not newer than %v", i, v, prev)
		}
		prev = v
	}
}

func TestHLCObserveMakesNextStampNewer(t *testing.T) {
	c := newFakeClock()
	h := NewHLC("a", c.Now)
	ahead := Version{WallNanos: c.Now().Add(time.Hour).UnixNano(), Logical: 7, Node: "z"}
	h.Observe(ahead)
	if v := h.Now(); !ahead.Less(v) {
		t.Fatalf("stamp %v after observing %v is not newer", v, ahead)
	}
	// An older remote stamp does not move the clock back.
	last := h.Last()
	h.Observe(Version{WallNanos: 1, Node: "z"})
	if h.Last() != last {
		t.Fatalf("observing an old stamp moved the clock: %v -> %v", last, h.Last())
	}
}

func TestHLCBorrowsNanosecondWhenCounterIsSpent(t *testing.T) {
	c := newFakeClock()
	h := NewHLC("a", c.Now)
	wall := c.Now().UnixNano()
	h.Observe(Version{WallNanos: wall, Logical: math.MaxUint32, Node: "b"})
	v := h.Now()
	if v.WallNanos != wall+1 || v.Logical != 0 {
		t.Fatalf("got %v, want wall %d logical 0", v, wall+1)
	}
}

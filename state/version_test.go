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

// newer reports whether v's clock part (wall time, counter) is after w's;
// the node name is the clock's own, not part of its progress.
func newer(v, w Version) bool {
	return v.WallNanos > w.WallNanos || (v.WallNanos == w.WallNanos && v.Logical > w.Logical)
}

func TestHLCNeverWrapsAtTheEndOfItsRange(t *testing.T) {
	const maxWall, maxLogical = math.MaxInt64, math.MaxUint32
	tests := []struct {
		name     string
		physical int64   // the physical clock's reading
		observed Version // what the clock observed first
		want     []Version
	}{
		{"counter runs up to the end", 0, Version{WallNanos: maxWall, Logical: maxLogical - 1},
			[]Version{{WallNanos: maxWall, Logical: maxLogical}, {WallNanos: maxWall, Logical: maxLogical}}},
		{"borrows the last nanosecond", 0, Version{WallNanos: maxWall - 1, Logical: maxLogical},
			[]Version{{WallNanos: maxWall, Logical: 0}, {WallNanos: maxWall, Logical: 1}}},
		{"saturates at the end", 0, Version{WallNanos: maxWall, Logical: maxLogical},
			[]Version{{WallNanos: maxWall, Logical: maxLogical}, {WallNanos: maxWall, Logical: maxLogical}}},
		{"physical clock at the end", maxWall, Version{},
			[]Version{{WallNanos: maxWall, Logical: 0}, {WallNanos: maxWall, Logical: 1}}},
		{"physical clock before the epoch", math.MinInt64, Version{},
			[]Version{{WallNanos: 0, Logical: 1}, {WallNanos: 0, Logical: 2}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHLC("a", func() time.Time { return timeAt(tt.physical) })
			h.Observe(tt.observed)
			for i, want := range tt.want {
				want.Node = "a"
				if got := h.Now(); got != want {
					t.Fatalf("stamp %d = %v, want %v", i, got, want)
				}
			}
		})
	}
}

// Whatever it observes and whatever the physical clock says, the clock never
// goes backwards, never panics, and stamps strictly newer versions until
// it reaches the end of its range.
func FuzzHLCNeverGoesBackwards(f *testing.F) {
	f.Add(int64(1_893_456_000_000_000_000), int64(1_893_456_000_000_000_000), uint32(0), uint8(3))
	f.Add(int64(0), int64(math.MaxInt64), uint32(math.MaxUint32), uint8(2))
	f.Add(int64(math.MaxInt64), int64(math.MaxInt64-1), uint32(math.MaxUint32-1), uint8(5))
	f.Add(int64(math.MinInt64), int64(-5), uint32(7), uint8(1))
	f.Fuzz(func(t *testing.T, physical, wall int64, logical uint32, stamps uint8) {
		h := NewHLC("a", func() time.Time { return timeAt(physical) })
		remote := Version{WallNanos: wall, Logical: logical, Node: "b"}
		h.Observe(remote)
		prev := h.Last()
		for i := range int(stamps)%8 + 1 {
			v := h.Now()
			end := v.WallNanos == math.MaxInt64 && v.Logical == math.MaxUint32
			if newer(prev, v) || (!newer(v, prev) && !end) {
				t.Fatalf("stamp %d: %v after %v", i, v, prev)
			}
			if newer(remote, v) || (!newer(v, remote) && !end) {
				t.Fatalf("stamp %d: %v is not newer than the observed %v", i, v, remote)
			}
			if v.WallNanos < physical {
				t.Fatalf("stamp %d: %v behind the physical clock %d", i, v, physical)
			}
			prev = v
		}
	})
}

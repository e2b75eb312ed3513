package state

import (
	"cmp"
	"fmt"
	"math"
	"sync"
	"time"
)

// Version is a hybrid logical clock stamp. Versions are totally ordered by
// wall time, then logical counter, then node name, so two nodes never produce
// versions that compare equal unless one record was copied from the other.
type Version struct {
	// WallNanos is physical time in nanoseconds since the Unix epoch, as the
	// writing node's HLC saw it.
	WallNanos int64 `json:"wall"`
	// Logical orders events that share a wall time.
	Logical uint32 `json:"logical"`
	// Node is the name of the node that made the write.
	Node string `json:"node"`
}

// Compare returns -1, 0 or +1 as v is older than, equal to, or newer than w.
func (v Version) Compare(w Version) int {
	if c := cmp.Compare(v.WallNanos, w.WallNanos); c != 0 {
		return c
	}
	if c := cmp.Compare(v.Logical, w.Logical); c != 0 {
		return c
	}
	return cmp.Compare(v.Node, w.Node)
}

// Less reports whether v is older than w.
func (v Version) Less(w Version) bool { return v.Compare(w) < 0 }

// IsZero reports whether v is the zero Version, which no write carries.
func (v Version) IsZero() bool { return v == Version{} }

// Time returns the wall-clock part of v.
func (v Version) Time() time.Time { return time.Unix(0, v.WallNanos) }

// String formats v as wall.logical@node, for logs.
func (v Version) String() string {
	return fmt.Sprintf("%d.%d@%s", v.WallNanos, v.Logical, v.Node)
}

// HLC is a hybrid logical clock: its stamps follow physical time when the
// clock moves forward and stay strictly increasing when it does not (clock
// stepped back, many writes in one tick, or a peer's clock running ahead).
// It is safe for concurrent use.
//
// A stamp from a peer whose clock runs ahead pulls this clock ahead with it;
// that keeps causality (a write made after seeing a record wins over it) at
// the cost of wall times that run fast until real time catches up. The clock
// trusts whatever it observes; a Store therefore observes only versions
// within Options.MaxClockDrift of its physical clock, so that a peer a year
// ahead cannot drag every node a year ahead with it.
type HLC struct {
	mu    sync.Mutex
	clock func() time.Time
	node  string
	last  Version
}

// NewHLC returns a clock that stamps versions with node's name and reads
// physical time from clock. A nil clock means time.Now.
func NewHLC(node string, clock func() time.Time) *HLC {
	if clock == nil {
		clock = time.Now
	}
	return &HLC{clock: clock, node: node}
}

// Now returns a new version, strictly newer than every version this clock
// has returned or observed. The one exception is the end of the range
// (wall time math.MaxInt64, counter math.MaxUint32), where Now keeps
// returning that version instead of wrapping around to the oldest one. Only
// a version observed unchecked (drift bound disabled, or already in the state
// file) can bring the clock there.
func (h *HLC) Now() Version {
	h.mu.Lock()
	defer h.mu.Unlock()
	pt := h.clock().UnixNano()
	switch {
	case pt > h.last.WallNanos:
		h.last.WallNanos, h.last.Logical = pt, 0
	case h.last.Logical < math.MaxUint32:
		h.last.Logical++
	case h.last.WallNanos < math.MaxInt64:
		// The counter is spent for this wall time: borrow the next
		// nanosecond rather than wrap and go backwards.
		h.last.WallNanos, h.last.Logical = h.last.WallNanos+1, 0
	default:
		// Nothing is newer: saturate rather than wrap to the oldest time.
	}
	h.last.Node = h.node
	return h.last
}

// Observe moves the clock past remote, so the next stamp from Now is newer
// than remote whatever the local physical clock says. It takes remote as it
// is: callers that get versions from peers bound them first (see
// Store.Apply).
func (h *HLC) Observe(remote Version) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if remote.WallNanos > h.last.WallNanos ||
		(remote.WallNanos == h.last.WallNanos && remote.Logical > h.last.Logical) {
		h.last.WallNanos, h.last.Logical = remote.WallNanos, remote.Logical
	}
}

// Last returns the newest version this clock has returned or observed.
func (h *HLC) Last() Version {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

package state

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock for tests.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }

// smallRecord draws from a tiny domain so that equal versions, equal
// versions from different nodes and tombstones all come up often.
func smallRecord(rng *rand.Rand) Record {
	nodes := []string{"a", "b", "c"}
	bodies := []string{"", `{}`, `{"x":1}`, `[1,2]`}
	r := Record{
		Kind: "job",
		ID:   "web",
		Version: Version{
			WallNanos: int64(rng.IntN(3)),
			Logical:   uint32(rng.IntN(2)),
			Node:      nodes[rng.IntN(len(nodes))],
		},
		Deleted: rng.IntN(3) == 0,
	}
	if b := bodies[rng.IntN(len(bodies))]; b != "" {
		r.Body = []byte(b)
	}
	return r
}

// sameRecord reports whether a and b are the same record, treating a nil and
// an empty body alike.
func sameRecord(a, b Record) bool {
	return a.Kind == b.Kind && a.ID == b.ID && compareRecords(a, b) == 0
}

func openMemory(t testing.TB, node string, clock func() time.Time) *Store {
	t.Helper()
	s, err := OpenMemory(Options{Node: node, Clock: clock})
	if err != nil {
		t.Fatalf("open memory store: %v", err)
	}
	return s
}

func openFile(t testing.TB, path, node string, clock func() time.Time) *Store {
	t.Helper()
	s, err := Open(path, Options{Node: node, Clock: clock})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func timeAt(nanos int64) time.Time { return time.Unix(0, nanos) }

// sampleRecords returns a mix of live records and tombstones.
func sampleRecords() []Record {
	return []Record{
		{Kind: "job", ID: "web", Version: Version{WallNanos: 1_700_000_000_000_000_000, Logical: 3, Node: "node-a"}, Body: []byte(`{"image":"nginx","replicas":3}`)},
		{Kind: "endpoint", ID: "node-b/web/0", Version: Version{WallNanos: 1_700_000_000_000_000_001, Node: "node-b"}, Body: []byte(`{"ip":"10.42.1.5"}`)},
		{Kind: "job", ID: "old", Version: Version{WallNanos: 5, Logical: 1 << 31, Node: "n"}, Deleted: true},
		{Kind: "k", ID: "ünïcode", Version: Version{Node: "ñ"}},
	}
}

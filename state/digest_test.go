package state

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

func fill(t testing.TB, s *Store, n int, tag string) {
	t.Helper()
	recs := make([]Record, 0, n)
	for i := range n {
		recs = append(recs, Record{
			Kind:    "endpoint",
			ID:      fmt.Sprintf("node-%d/job-%d/%d", i%50, i, i%3),
			Version: Version{WallNanos: 1_700_000_000_000_000_000 + int64(i), Node: fmt.Sprintf("node-%d", i%50)},
			Body:    fmt.Appendf(nil, `{"ip":"10.42.%d.%d","tag":%q}`, i/250, i%250, tag),
		})
	}
	if _, err := s.Apply(recs); err != nil {
		t.Fatal(err)
	}
}

func TestDigestDoesNotDependOnInsertOrder(t *testing.T) {
	recs := sampleRecords()
	a, b := openMemory(t, "a", nil), openMemory(t, "b", nil)
	for _, r := range recs {
		a.Put(r)
	}
	for _, r := range slices.Backward(recs) {
		b.Put(r)
	}
	if a.Digest() != b.Digest() {
		t.Fatal("same records inserted in another order give another digest")
	}
}

func TestDiffBucketsFindsExactlyTheChangedBucket(t *testing.T) {
	a, b := openMemory(t, "a", nil), openMemory(t, "b", nil)
	fill(t, a, 1000, "x")
	fill(t, b, 1000, "x")
	if diff := DiffBuckets(a.Digest(), b.Digest()); diff != nil {
		t.Fatalf("equal stores differ in buckets %v", diff)
	}
	r, err := a.Write("job", "web", []byte(`{}`), false)
	if err != nil {
		t.Fatal(err)
	}
	want := []int{BucketOf(r.Kind, r.ID)}
	if diff := DiffBuckets(a.Digest(), b.Digest()); !slices.Equal(diff, want) {
		t.Fatalf("DiffBuckets = %v, want %v", diff, want)
	}
}

func TestDigestSeesBodyAndTombstoneDifferencesAtEqualVersions(t *testing.T) {
	base := Record{Kind: "job", ID: "web", Version: Version{WallNanos: 1, Node: "n"}, Body: []byte(`{"v":1}`)}
	otherBody := base
	otherBody.Body = []byte(`{"v":2}`)
	tomb := base
	tomb.Body, tomb.Deleted = nil, true
	for _, other := range []Record{otherBody, tomb} {
		a, b := openMemory(t, "a", nil), openMemory(t, "b", nil)
		a.Put(base)
		b.Put(other)
		if a.Digest().Root == b.Digest().Root {
			t.Errorf("stores holding %+v and %+v look in sync", base, other)
		}
	}
}

func TestDigestCacheMatchesFullRecompute(t *testing.T) {
	s := openMemory(t, "a", nil)
	fill(t, s, 500, "x")
	s.Digest()
	if _, err := s.Write("job", "web", []byte(`{}`), false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete("endpoint", "node-3/job-3/0"); err != nil {
		t.Fatal(err)
	}
	cached := s.Digest()
	for i := range s.dirty {
		s.dirty[i] = true
	}
	s.rootDirty = true
	if full := s.Digest(); full != cached {
		t.Fatalf("incremental digest differs from a full recompute in buckets %v", DiffBuckets(full, cached))
	}
}

func TestEncodedDigestIsCompact(t *testing.T) {
	empty := openMemory(t, "a", nil)
	if n := len(EncodeDigest(empty.Digest())); n != 65 {
		t.Errorf("empty store digest is %d bytes, want 65", n)
	}
	full := openMemory(t, "a", nil)
	fill(t, full, 10000, "x")
	if n := len(EncodeDigest(full.Digest())); n > MaxDigestLen || n > 2200 {
		t.Errorf("10k-record digest is %d bytes, want at most %d", n, MaxDigestLen)
	}
}

func TestBucketsSpreadRecordsEvenly(t *testing.T) {
	s := openMemory(t, "a", nil)
	fill(t, s, 10000, "x")
	lo, hi := 10000, 0
	for i := range NumBuckets {
		n := len(s.BucketRecords(i))
		lo, hi = min(lo, n), max(hi, n)
	}
	// 10000/256 = 39 on average; a decent hash keeps every bucket near it.
	if lo < 15 || hi > 70 {
		t.Errorf("bucket sizes range %d..%d, want about 39 each", lo, hi)
	}
}

// antiEntropy runs one digest exchange from a to b and back, as the gossip
// layer would, and returns the bytes that crossed the wire. Records skipped
// for being too far ahead do not fail the exchange, as in the gossip layer.
func antiEntropy(t testing.TB, a, b *Store) int {
	t.Helper()
	da := a.Digest()
	sent := len(da.Root)
	db := b.Digest()
	if da.Root == db.Root {
		return sent
	}
	wire := EncodeDigest(db)
	sent += len(wire)
	got, err := DecodeDigest(wire)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range DiffBuckets(da, got) {
		for _, pair := range [][2]*Store{{a, b}, {b, a}} {
			buf := EncodeRecords(pair[0].BucketRecords(i))
			sent += len(buf)
			recs, err := DecodeRecords(buf, 1<<24)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := pair[1].Apply(recs); err != nil && !errors.Is(err, ErrFutureVersion) {
				t.Fatal(err)
			}
		}
	}
	return sent
}

func TestEqualStoresExchangeOnlyTheRoot(t *testing.T) {
	a, b := openMemory(t, "a", nil), openMemory(t, "b", nil)
	fill(t, a, 10000, "x")
	fill(t, b, 10000, "x")
	if n := antiEntropy(t, a, b); n != 32 {
		t.Fatalf("in-sync stores exchanged %d bytes, want 32", n)
	}
}

func TestOneChangeCostsOneBucket(t *testing.T) {
	a, b := openMemory(t, "a", nil), openMemory(t, "b", nil)
	fill(t, a, 10000, "x")
	fill(t, b, 10000, "x")
	if _, err := b.Write("job", "web", []byte(`{"replicas":3}`), false); err != nil {
		t.Fatal(err)
	}
	n := antiEntropy(t, a, b)
	if a.Digest().Root != b.Digest().Root {
		t.Fatal("stores still differ after anti-entropy")
	}
	// 32 root + up to 2,113 digest + two copies of one ~40-record bucket.
	if n > 32+MaxDigestLen+2*80*100 {
		t.Errorf("one change cost %d bytes", n)
	}
	t.Logf("one change among 10k records: %d bytes exchanged", n)
}

func TestStoresConvergeThroughAntiEntropy(t *testing.T) {
	clock := newFakeClock()
	rng := newRand(7)
	stores := []*Store{
		openMemory(t, "a", clock.Now),
		openMemory(t, "b", clock.Now),
		openMemory(t, "c", clock.Now),
	}
	// Concurrent writes, deletes and partial pushes on every node.
	for range 2000 {
		clock.Advance(time.Duration(rng.IntN(1000)))
		s := stores[rng.IntN(len(stores))]
		id := fmt.Sprintf("job-%d", rng.IntN(200))
		var r Record
		var err error
		if rng.IntN(5) == 0 {
			r, err = s.Delete("job", id)
		} else {
			r, err = s.Write("job", id, fmt.Appendf(nil, `{"n":%d}`, rng.IntN(100)), false)
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, peer := range stores {
			if peer != s && rng.IntN(3) == 0 { // most pushes are lost
				if _, err := peer.Put(r); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for round := 0; ; round++ {
		if round > 10 {
			t.Fatal("no convergence after 10 rounds")
		}
		antiEntropy(t, stores[0], stores[1])
		antiEntropy(t, stores[1], stores[2])
		antiEntropy(t, stores[2], stores[0])
		r0 := stores[0].Digest().Root
		if r0 == stores[1].Digest().Root && r0 == stores[2].Digest().Root {
			break
		}
	}
	want := stores[0].List("job")
	for _, s := range stores[1:] {
		got := s.List("job")
		if len(got) != len(want) {
			t.Fatalf("%s lists %d jobs, %s lists %d", s.Node(), len(got), stores[0].Node(), len(want))
		}
		for i := range got {
			if !sameRecord(got[i], want[i]) {
				t.Fatalf("%s has %+v, %s has %+v", s.Node(), got[i], stores[0].Node(), want[i])
			}
		}
	}
}

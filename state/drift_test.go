package state

import (
	"errors"
	"fmt"
	"math"
	"testing"
	"time"
)

func openWithDrift(t testing.TB, node string, clock func() time.Time, drift time.Duration) *Store {
	t.Helper()
	s, err := OpenMemory(Options{Node: node, Clock: clock, MaxClockDrift: drift})
	if err != nil {
		t.Fatalf("open memory store: %v", err)
	}
	return s
}

// skipped returns the records a *FutureVersionsError in err lists.
func skipped(t testing.TB, err error) []Record {
	t.Helper()
	if !errors.Is(err, ErrFutureVersion) {
		t.Fatalf("got error %v, want ErrFutureVersion", err)
	}
	var fe *FutureVersionsError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v is not a *FutureVersionsError", err)
	}
	return fe.Records
}

func TestApplySkipsAndCountsRecordsBeyondTheDriftBound(t *testing.T) {
	const bound = time.Minute
	tests := []struct {
		name string
		// version of the record from the future, given the clock reading
		version func(now int64) Version
		deleted bool
	}{
		{"one nanosecond past the bound", func(now int64) Version {
			return Version{WallNanos: now + int64(bound) + 1, Node: "fast"}
		}, false},
		{"a year ahead", func(now int64) Version {
			return Version{WallNanos: now + int64(365*24*time.Hour), Node: "fast"}
		}, false},
		{"a tombstone a year ahead", func(now int64) Version {
			return Version{WallNanos: now + int64(365*24*time.Hour), Node: "fast"}
		}, true},
		{"the end of time", func(int64) Version {
			return Version{WallNanos: math.MaxInt64, Logical: math.MaxUint32, Node: "forged"}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			now := clock.Now().UnixNano()
			s := openWithDrift(t, "a", clock.Now, bound)
			held := Record{Kind: "job", ID: "web", Version: Version{WallNanos: now - 10, Node: "b"}, Body: []byte(`{"v":1}`)}
			if _, err := s.Put(held); err != nil {
				t.Fatal(err)
			}
			far := Record{Kind: "job", ID: "web", Version: tt.version(now), Deleted: tt.deleted}
			if !tt.deleted {
				far.Body = []byte(`{"v":"future"}`)
			}
			past := Record{Kind: "job", ID: "db", Version: Version{WallNanos: now - int64(time.Hour), Node: "b"}, Body: []byte(`{}`)}
			atBound := Record{Kind: "job", ID: "cache", Version: Version{WallNanos: now + int64(bound), Logical: 9, Node: "b"}, Body: []byte(`{}`)}

			changed, err := s.Apply([]Record{past, far, atBound})
			if got := skipped(t, err); len(got) != 1 || !sameRecord(got[0], far) {
				t.Fatalf("skipped %+v, want the far record only", got)
			}
			if len(changed) != 2 || !sameRecord(changed[0], past) || !sameRecord(changed[1], atBound) {
				t.Fatalf("changed = %+v, want the rest of the batch", changed)
			}
			if got, ok := s.Get("job", "web"); !ok || !sameRecord(got, held) {
				t.Fatalf("job/web = %+v, %v; want the held record untouched", got, ok)
			}
			if n := s.Stats().FutureRejected; n != 1 {
				t.Fatalf("FutureRejected = %d, want 1", n)
			}
			if last := s.HLC().Last(); last.WallNanos != atBound.Version.WallNanos || last.Logical != atBound.Version.Logical {
				t.Fatalf("clock at %v, want the newest accepted version %v", last, atBound.Version)
			}
			// A local write still wins locally, and would win at every
			// peer that applies the same bound.
			w, err := s.Write("job", "web", []byte(`{"v":2}`), false)
			if err != nil {
				t.Fatal(err)
			}
			if w.Version.WallNanos > now+int64(bound)+1 {
				t.Fatalf("local write stamped %v, beyond the bound", w.Version)
			}
			// The count is cumulative: offering the record again counts again.
			if _, err := s.Put(far); !errors.Is(err, ErrFutureVersion) {
				t.Fatalf("second offer: got %v, want ErrFutureVersion", err)
			}
			if n := s.Stats().FutureRejected; n != 2 {
				t.Fatalf("FutureRejected = %d after a second offer, want 2", n)
			}
		})
	}
}

func TestApplyObservesRecordsWithinTheDriftBound(t *testing.T) {
	tests := []struct {
		name  string
		drift time.Duration // store option; 0 is the default
		ahead time.Duration
	}{
		{"half the default bound", 0, DefaultMaxClockDrift / 2},
		{"exactly the default bound", 0, DefaultMaxClockDrift},
		{"behind the clock", 0, -time.Hour},
		{"within a wider bound", time.Hour, 59 * time.Minute},
		{"a year ahead with the bound disabled", -1, 365 * 24 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			s := openWithDrift(t, "a", clock.Now, tt.drift)
			r := Record{Kind: "job", ID: "web", Version: Version{WallNanos: clock.Now().Add(tt.ahead).UnixNano(), Logical: 3, Node: "b"}, Body: []byte(`{}`)}
			changed, err := s.Apply([]Record{r})
			if err != nil {
				t.Fatal(err)
			}
			if len(changed) != 1 || !sameRecord(changed[0], r) {
				t.Fatalf("changed = %+v, want the record", changed)
			}
			if n := s.Stats().FutureRejected; n != 0 {
				t.Fatalf("FutureRejected = %d, want 0", n)
			}
			w, err := s.Write("job", "other", []byte(`{}`), false)
			if err != nil {
				t.Fatal(err)
			}
			if !r.Version.Less(w.Version) {
				t.Fatalf("local write %v is not newer than the observed %v", w.Version, r.Version)
			}
		})
	}
}

func TestOptionsDefaultTheDriftBound(t *testing.T) {
	s := openMemory(t, "a", nil)
	if s.opts.MaxClockDrift != DefaultMaxClockDrift {
		t.Fatalf("MaxClockDrift = %v, want %v", s.opts.MaxClockDrift, DefaultMaxClockDrift)
	}
}

// A node whose clock runs fast drags its peers only as far as the bound
// lets it; when its clock jumps a year ahead, its writes stop spreading
// and nobody else's clock follows.
func TestAFastNodeCannotDragItsPeersPastTheBound(t *testing.T) {
	base := newFakeClock().Now()
	clocks := map[string]*fakeClock{"fast": newFakeClock(), "b": newFakeClock(), "c": newFakeClock()}
	clocks["fast"].Advance(50 * time.Second)
	stores := map[string]*Store{}
	for name, c := range clocks {
		stores[name] = openWithDrift(t, name, c.Now, time.Minute)
	}
	deliver := func(to string, r Record) error {
		_, err := stores[to].Put(r)
		return err
	}

	// 50 s ahead: within the bound, so it spreads, and b's own writes
	// carry the fast time on to c, still within the bound.
	w, err := stores["fast"].Write("job", "a", []byte(`{}`), false)
	if err != nil {
		t.Fatal(err)
	}
	if err := deliver("b", w); err != nil {
		t.Fatal(err)
	}
	wb, err := stores["b"].Write("job", "b", []byte(`{}`), false)
	if err != nil {
		t.Fatal(err)
	}
	if err := deliver("c", wb); err != nil {
		t.Fatal(err)
	}

	// The fast node's clock jumps a year ahead.
	clocks["fast"].Advance(365 * 24 * time.Hour)
	far, err := stores["fast"].Write("job", "a", []byte(`{"late":true}`), false)
	if err != nil {
		t.Fatal(err)
	}
	for _, peer := range []string{"b", "c"} {
		if err := deliver(peer, far); !errors.Is(err, ErrFutureVersion) {
			t.Fatalf("%s accepted a version a year ahead: %v", peer, err)
		}
		limit := base.Add(time.Minute).UnixNano()
		if last := stores[peer].HLC().Last(); last.WallNanos > limit {
			t.Fatalf("%s's clock at %v, past now+bound %d", peer, last, limit)
		}
	}
	// A later write on b beats the fast node's year-ahead record
	// everywhere it is accepted.
	wb2, err := stores["b"].Write("job", "a", []byte(`{"fixed":true}`), false)
	if err != nil {
		t.Fatal(err)
	}
	if err := deliver("c", wb2); err != nil {
		t.Fatal(err)
	}
	if got, _ := stores["c"].Get("job", "a"); !sameRecord(got, wb2) {
		t.Fatalf("c holds %+v, want b's later write", got)
	}
}

// Peers never move the clock past the physical clock plus the bound,
// whatever versions they send.
func TestPeersNeverPushTheClockPastTheBound(t *testing.T) {
	const bound = time.Minute
	rng := newRand(11)
	clock := newFakeClock()
	s := openWithDrift(t, "a", clock.Now, bound)
	var wantRejected uint64
	for i := range 3000 {
		clock.Advance(time.Duration(rng.IntN(int(2 * time.Second))))
		now := clock.Now().UnixNano()
		if rng.IntN(4) == 0 {
			if _, err := s.Write("job", fmt.Sprint("local-", i), []byte(`{}`), false); err != nil {
				t.Fatal(err)
			}
		}
		batch := make([]Record, 1+rng.IntN(4))
		var far int
		for j := range batch {
			var wall int64
			switch rng.IntN(10) {
			case 0:
				wall = math.MaxInt64
			case 1:
				wall = rng.Int64() // anywhere in the non-negative range
			default:
				wall = now + rng.Int64N(int64(4*bound)) - int64(2*bound)
			}
			if wall > now+int64(bound) {
				far++
			}
			// Unique keys: every record would win if it were accepted.
			batch[j] = Record{Kind: "job", ID: fmt.Sprintf("peer-%d-%d", i, j), Version: Version{WallNanos: wall, Logical: rng.Uint32(), Node: "p"}, Body: []byte(`{}`)}
		}
		changed, err := s.Apply(batch)
		if far > 0 {
			if got := skipped(t, err); len(got) != far {
				t.Fatalf("step %d: skipped %d records, want %d", i, len(got), far)
			}
		} else if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if len(changed) != len(batch)-far {
			t.Fatalf("step %d: %d changed, want %d", i, len(changed), len(batch)-far)
		}
		wantRejected += uint64(far)
		// Borrowed nanoseconds (a spent counter) are the only way past.
		if last := s.HLC().Last(); last.WallNanos > now+int64(bound)+1 {
			t.Fatalf("step %d: clock at %v, more than %v ahead of %d", i, last, bound, now)
		}
	}
	if got := s.Stats().FutureRejected; got != wantRejected {
		t.Fatalf("FutureRejected = %d, want %d", got, wantRejected)
	}
}

// A peer holding a far-future record keeps differing in one digest bucket:
// every exchange resends that bucket and skips the record again, but the
// other records converge, and the record is accepted once the clock is
// within the bound of it.
func TestAntiEntropyConvergesAroundAFarFutureRecord(t *testing.T) {
	clock := newFakeClock()
	poisoned := openWithDrift(t, "p", clock.Now, -1) // accepted it unchecked
	b := openWithDrift(t, "b", clock.Now, time.Minute)
	fill(t, poisoned, 2000, "x")
	fill(t, b, 1000, "y")
	far := Record{Kind: "job", ID: "web", Version: Version{WallNanos: clock.Now().Add(time.Hour).UnixNano(), Node: "fast"}, Body: []byte(`{}`)}
	if _, err := poisoned.Put(far); err != nil {
		t.Fatal(err)
	}

	antiEntropy(t, poisoned, b)
	if n := b.Stats().FutureRejected; n != 1 {
		t.Fatalf("FutureRejected = %d, want 1", n)
	}
	if _, ok := b.Get("job", "web"); ok {
		t.Fatal("the far-future record was applied")
	}
	diff := DiffBuckets(poisoned.Digest(), b.Digest())
	if want := []int{BucketOf("job", "web")}; len(diff) != 1 || diff[0] != want[0] {
		t.Fatalf("stores differ in buckets %v, want only %v", diff, want)
	}
	if p, q := poisoned.Stats(), b.Stats(); p.Live != q.Live+1 {
		t.Fatalf("live records: %d and %d, want all but the far one synced", p.Live, q.Live)
	}

	// Every later exchange costs one bucket and counts the record again.
	n := antiEntropy(t, poisoned, b)
	if n > 32+MaxDigestLen+2*80*100 {
		t.Errorf("an exchange around the far record cost %d bytes", n)
	}
	if got := b.Stats().FutureRejected; got != 2 {
		t.Fatalf("FutureRejected = %d after a second exchange, want 2", got)
	}

	clock.Advance(time.Hour - time.Minute)
	antiEntropy(t, poisoned, b)
	if poisoned.Digest().Root != b.Digest().Root {
		t.Fatal("stores still differ once the clock is within the bound")
	}
}

func TestFutureVersionsErrorNamesTheRecord(t *testing.T) {
	now := newFakeClock().Now()
	e := &FutureVersionsError{
		Records: []Record{
			{Kind: "job", ID: "web", Version: Version{WallNanos: math.MaxInt64, Logical: math.MaxUint32, Node: "x"}},
			{Kind: "job", ID: "db", Version: Version{WallNanos: math.MaxInt64, Node: "x"}},
		},
		Now:      now,
		MaxDrift: time.Minute,
	}
	want := fmt.Sprintf("skipped 2 records more than 1m0s ahead of the clock: job/web at %d.%d@x (%v ahead) and 1 more",
		int64(math.MaxInt64), uint32(math.MaxUint32), time.Duration(math.MaxInt64-now.UnixNano()))
	if got := e.Error(); got != want {
		t.Fatalf("Error() = %q\nwant      %q", got, want)
	}
	if (&FutureVersionsError{}).Error() == "" {
		t.Fatal("empty error message")
	}
}

func TestClampedArithmeticDoesNotWrap(t *testing.T) {
	tests := []struct {
		a, b, sum, diff int64
	}{
		{1, 2, 3, -1},
		{math.MaxInt64, 1, math.MaxInt64, math.MaxInt64 - 1},
		{math.MaxInt64, -1, math.MaxInt64 - 1, math.MaxInt64},
		{math.MinInt64, -1, math.MinInt64, math.MinInt64 + 1},
		{math.MinInt64, 1, math.MinInt64 + 1, math.MinInt64},
		{math.MaxInt64, math.MinInt64, -1, math.MaxInt64},
		{0, math.MinInt64, math.MinInt64, math.MaxInt64},
	}
	for _, tt := range tests {
		if got := addClamped(tt.a, tt.b); got != tt.sum {
			t.Errorf("addClamped(%d, %d) = %d, want %d", tt.a, tt.b, got, tt.sum)
		}
		if got := subClamped(tt.a, tt.b); got != tt.diff {
			t.Errorf("subClamped(%d, %d) = %d, want %d", tt.a, tt.b, got, tt.diff)
		}
	}
}

// Whatever a peer sends and whatever the clock and bound, Apply neither
// panics nor lets the clock past the bound, and keeps what it returns.
func FuzzApplyDriftBound(f *testing.F) {
	f.Add(int64(1_893_456_000_000_000_000), int64(time.Minute), int64(math.MaxInt64), uint32(math.MaxUint32))
	f.Add(int64(0), int64(math.MaxInt64), int64(math.MaxInt64), uint32(0))
	f.Add(int64(-1), int64(-1), int64(5), uint32(7))
	f.Add(int64(math.MaxInt64), int64(1), int64(math.MaxInt64), uint32(math.MaxUint32))
	f.Fuzz(func(t *testing.T, now, drift, wall int64, logical uint32) {
		if drift == 0 {
			drift = int64(DefaultMaxClockDrift)
		}
		s := openWithDrift(t, "a", func() time.Time { return timeAt(now) }, time.Duration(drift))
		r := Record{Kind: "job", ID: "web", Version: Version{WallNanos: wall, Logical: logical, Node: "p"}, Body: []byte(`{}`)}
		changed, err := s.Apply([]Record{r})
		switch {
		case wall < 0:
			if !errors.Is(err, ErrInvalidRecord) {
				t.Fatalf("negative wall time: got %v, want ErrInvalidRecord", err)
			}
			return
		case drift > 0 && wall > addClamped(now, drift):
			if !errors.Is(err, ErrFutureVersion) || len(changed) != 0 || s.HLC().Last() != (Version{}) {
				t.Fatalf("beyond the bound: changed %v, err %v, clock %v", changed, err, s.HLC().Last())
			}
		default:
			last := s.HLC().Last()
			if err != nil || len(changed) != 1 || last.WallNanos != wall || last.Logical != logical {
				t.Fatalf("within the bound: changed %v, err %v, clock %v", changed, err, last)
			}
		}
		// A local write wins over what the store holds, or fails when the
		// clock has no newer version left; it never silently loses.
		before, held := s.Get("job", "web")
		w, err := s.Write("job", "web", []byte(`{"local":true}`), false)
		switch {
		case err == nil:
			if held && !before.Version.Less(w.Version) {
				t.Fatalf("local write %v is not newer than %v", w.Version, before.Version)
			}
		case !held || wall != math.MaxInt64 || logical != math.MaxUint32:
			t.Fatalf("local write failed with the clock short of its end: %v", err)
		}
	})
}

// At the end of the clock's range a local write that could not win fails
// instead of being silently undone by the next sync.
func TestWriteFailsRatherThanLoseWhenTheClockIsSpent(t *testing.T) {
	end := Version{WallNanos: math.MaxInt64, Logical: math.MaxUint32}
	tests := []struct {
		name    string
		held    string // node name on the held version
		id      string // key written locally
		wantErr bool
	}{
		{"same key, held by a node that sorts after this one", "z", "web", true},
		{"same key, held by a node that sorts before this one", "0", "web", false},
		{"another key", "z", "db", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openWithDrift(t, "a", newFakeClock().Now, -1)
			v := end
			v.Node = tt.held
			if _, err := s.Put(Record{Kind: "job", ID: "web", Version: v, Body: []byte(`{}`)}); err != nil {
				t.Fatal(err)
			}
			w, err := s.Write("job", tt.id, []byte(`{"local":true}`), false)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("write stamped %v, which cannot beat the held %v", w.Version, v)
				}
				if got, _ := s.Get("job", "web"); got.Version != v {
					t.Fatalf("a failed write changed the store: %v", got.Version)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if w.Version.WallNanos != math.MaxInt64 || w.Version.Logical != math.MaxUint32 {
				t.Fatalf("write stamped %v, want the end of the range", w.Version)
			}
		})
	}
}

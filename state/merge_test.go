package state

import (
	"testing"
)

const mergeTrials = 20000

func TestMergeIsCommutative(t *testing.T) {
	rng := newRand(2)
	for range mergeTrials {
		a, b := smallRecord(rng), smallRecord(rng)
		if ab, ba := Merge(a, b), Merge(b, a); !sameRecord(ab, ba) {
			t.Fatalf("Merge(%+v, %+v) = %+v but reversed = %+v", a, b, ab, ba)
		}
	}
}

func TestMergeIsAssociative(t *testing.T) {
	rng := newRand(3)
	for range mergeTrials {
		a, b, c := smallRecord(rng), smallRecord(rng), smallRecord(rng)
		left := Merge(Merge(a, b), c)
		right := Merge(a, Merge(b, c))
		if !sameRecord(left, right) {
			t.Fatalf("(a+b)+c = %+v, a+(b+c) = %+v for a=%+v b=%+v c=%+v", left, right, a, b, c)
		}
	}
}

func TestMergeIsIdempotent(t *testing.T) {
	rng := newRand(4)
	for range mergeTrials {
		a, b := smallRecord(rng), smallRecord(rng)
		if m := Merge(a, a); !sameRecord(m, a) {
			t.Fatalf("Merge(a, a) = %+v, want %+v", m, a)
		}
		// Merging in something already merged changes nothing.
		ab := Merge(a, b)
		if m := Merge(ab, b); !sameRecord(m, ab) {
			t.Fatalf("Merge(Merge(a, b), b) = %+v, want %+v", m, ab)
		}
	}
}

func TestMergeResultIsOneOfItsInputs(t *testing.T) {
	rng := newRand(5)
	for range mergeTrials {
		a, b := smallRecord(rng), smallRecord(rng)
		m := Merge(a, b)
		if !sameRecord(m, a) && !sameRecord(m, b) {
			t.Fatalf("Merge(%+v, %+v) = %+v, neither input", a, b, m)
		}
	}
}

func TestMergeLastWriterWins(t *testing.T) {
	old := Record{Kind: "job", ID: "web", Version: Version{WallNanos: 10, Node: "b"}, Body: []byte(`{"v":1}`)}
	tests := []struct {
		name   string
		remote Record
		want   Record
	}{
		{
			name:   "newer wall time wins",
			remote: Record{Kind: "job", ID: "web", Version: Version{WallNanos: 11, Node: "a"}, Body: []byte(`{"v":2}`)},
		},
		{
			name:   "same wall, higher counter wins",
			remote: Record{Kind: "job", ID: "web", Version: Version{WallNanos: 10, Logical: 1, Node: "a"}, Body: []byte(`{"v":2}`)},
		},
		{
			name:   "same wall and counter, greater node name wins",
			remote: Record{Kind: "job", ID: "web", Version: Version{WallNanos: 10, Node: "c"}, Body: []byte(`{"v":2}`)},
		},
		{
			name:   "newer tombstone wins over live record",
			remote: Record{Kind: "job", ID: "web", Version: Version{WallNanos: 12, Node: "a"}, Deleted: true},
		},
		{
			name:   "identical version, tombstone wins",
			remote: Record{Kind: "job", ID: "web", Version: Version{WallNanos: 10, Node: "b"}, Deleted: true},
		},
		{
			name:   "identical version, greater body wins",
			remote: Record{Kind: "job", ID: "web", Version: Version{WallNanos: 10, Node: "b"}, Body: []byte(`{"v":9}`)},
		},
		{
			name:   "older write loses",
			remote: Record{Kind: "job", ID: "web", Version: Version{WallNanos: 9, Logical: 5, Node: "z"}, Body: []byte(`{"v":0}`)},
			want:   old,
		},
		{
			name:   "same wall and counter, smaller node name loses",
			remote: Record{Kind: "job", ID: "web", Version: Version{WallNanos: 10, Node: "a"}, Body: []byte(`{"v":2}`)},
			want:   old,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.want
			if want.Kind == "" {
				want = tt.remote
			}
			if got := Merge(old, tt.remote); !sameRecord(got, want) {
				t.Errorf("Merge = %+v, want %+v", got, want)
			}
		})
	}
}

// Any delivery order, with duplicates, ends in the same state.
func TestApplyConvergesWhateverTheDeliveryOrder(t *testing.T) {
	rng := newRand(6)
	var recs []Record
	for i := range 300 {
		r := smallRecord(rng)
		r.ID = []string{"a", "b", "c", "d", "e"}[i%5]
		r.Version.WallNanos += 1_000_000_000 // keep tombstones young
		recs = append(recs, r)
	}
	clock := newFakeClock()
	clock.Set(timeAt(0))
	var want Digest
	for trial := range 5 {
		s := openMemory(t, "n", clock.Now)
		order := rng.Perm(len(recs))
		for _, i := range order {
			if _, err := s.Put(recs[i]); err != nil {
				t.Fatal(err)
			}
			if rng.IntN(4) == 0 { // duplicate delivery
				if _, err := s.Put(recs[i]); err != nil {
					t.Fatal(err)
				}
			}
		}
		d := s.Digest()
		if trial == 0 {
			want = d
		} else if d != want {
			t.Fatalf("trial %d: digest differs: buckets %v", trial, DiffBuckets(want, d))
		}
	}
}

package state

import (
	"fmt"
	"path/filepath"
	"testing"
)

// BenchmarkDigest10k measures rehashing every bucket of a 10,000-record store
// (the cost after a restart or a bulk sync), and the usual case of one
// changed bucket.
func BenchmarkDigest10k(b *testing.B) {
	s := openMemory(b, "a", nil)
	fill(b, s, 10000, "x")
	b.Run("all-buckets", func(b *testing.B) {
		for b.Loop() {
			for i := range s.dirty {
				s.dirty[i] = true
			}
			s.rootDirty = true
			s.Digest()
		}
	})
	b.Run("one-bucket", func(b *testing.B) {
		for b.Loop() {
			s.dirty[7], s.rootDirty = true, true
			s.Digest()
		}
	})
}

func BenchmarkMerge(b *testing.B) {
	rng := newRand(8)
	recs := make([]Record, 1024)
	for i := range recs {
		recs[i] = smallRecord(rng)
	}
	var sink Record
	i := 0
	for b.Loop() {
		sink = Merge(recs[i&1023], recs[(i+1)&1023])
		i++
	}
	_ = sink
}

// BenchmarkPutDurable measures one local write committed and fsync'd to
// bbolt: the latency an API write pays before it is acknowledged.
func BenchmarkPutDurable(b *testing.B) {
	s := openFile(b, filepath.Join(b.TempDir(), "state.db"), "a", nil)
	body := []byte(`{"image":"registry.local/web:1.2.3","replicas":3,"cpu":250,"memory":128}`)
	i := 0
	for b.Loop() {
		if _, err := s.Write("job", fmt.Sprintf("job-%d", i%1000), body, false); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkApplyBatchDurable measures applying 100 peer records in one
// commit, as anti-entropy does.
func BenchmarkApplyBatchDurable(b *testing.B) {
	s := openFile(b, filepath.Join(b.TempDir(), "state.db"), "a", nil)
	src := openMemory(b, "b", nil)
	fill(b, src, 100, "x")
	var recs []Record
	for i := range NumBuckets {
		recs = append(recs, src.BucketRecords(i)...)
	}
	wall := int64(2_000_000_000_000_000_000)
	for b.Loop() {
		for i := range recs {
			wall++
			recs[i].Version.WallNanos = wall
		}
		if _, err := s.Apply(recs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeRecords decodes a batch of 100 records, about the size of
// two buckets' worth in a 10k-record cluster.
func BenchmarkDecodeRecords(b *testing.B) {
	src := openMemory(b, "a", nil)
	fill(b, src, 100, "x")
	var recs []Record
	for i := range NumBuckets {
		recs = append(recs, src.BucketRecords(i)...)
	}
	buf := EncodeRecords(recs)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if _, err := DecodeRecords(buf, len(buf)); err != nil {
			b.Fatal(err)
		}
	}
}

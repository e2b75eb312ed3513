package state

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"slices"
)

// NumBuckets is how many digest buckets the key space is split into. It is
// part of the wire protocol: every node must use the same number.
const NumBuckets = 256

// Digest summarises a store's records for anti-entropy. Two stores with the
// same records (same keys, versions, tombstones and bodies) have the same
// digest; a difference in one record changes its bucket's hash and the root.
type Digest struct {
	// Root is SHA-256 over the big-endian bucket hashes in order.
	Root [32]byte
	// Buckets holds a 64-bit hash per bucket; zero means the bucket is empty.
	Buckets [NumBuckets]uint64
}

// DiffBuckets returns, in ascending order, the buckets whose hashes differ
// between a and b. It returns nil when the roots agree.
func DiffBuckets(a, b Digest) []int {
	if a.Root == b.Root {
		return nil
	}
	var diff []int
	for i := range a.Buckets {
		if a.Buckets[i] != b.Buckets[i] {
			diff = append(diff, i)
		}
	}
	return diff
}

// BucketOf returns the digest bucket of a key: the first byte of
// SHA-256(uvarint(len(kind)) || kind || id).
func BucketOf(kind, id string) int {
	var buf [binary.MaxVarintLen64 + MaxKindLen + MaxIDLen]byte
	b := binary.AppendUvarint(buf[:0], uint64(len(kind)))
	b = append(b, kind...)
	b = append(b, id...)
	sum := sha256.Sum256(b)
	return int(sum[0])
}

// bodySum is the 64-bit body hash a bucket hash covers, so that two copies
// with equal versions but different bodies do not look in sync.
func bodySum(body []byte) uint64 {
	sum := sha256.Sum256(body)
	return binary.BigEndian.Uint64(sum[:8])
}

// hashBucket hashes the entries of one bucket: SHA-256 over, for each record
// sorted by (kind, id), str(kind) str(id) wall[8] logical[4] str(node)
// deleted[1] bodysum[8], with str a uvarint length and the bytes, and fixed
// fields big-endian. The hash is the first 8 bytes, never zero for a
// non-empty bucket; an empty bucket hashes to zero.
func hashBucket(entries []*entry) uint64 {
	if len(entries) == 0 {
		return 0
	}
	slices.SortFunc(entries, compareEntryKeys)
	h := sha256.New()
	var buf []byte
	for _, e := range entries {
		r := &e.rec
		buf = appendString(buf[:0], r.Kind)
		buf = appendString(buf, r.ID)
		buf = binary.BigEndian.AppendUint64(buf, uint64(r.Version.WallNanos))
		buf = binary.BigEndian.AppendUint32(buf, r.Version.Logical)
		buf = appendString(buf, r.Version.Node)
		if r.Deleted {
			buf = append(buf, 1)
		} else {
			buf = append(buf, 0)
		}
		buf = binary.BigEndian.AppendUint64(buf, e.sum)
		h.Write(buf)
	}
	var sum [sha256.Size]byte
	v := binary.BigEndian.Uint64(h.Sum(sum[:0]))
	if v == 0 {
		v = 1
	}
	return v
}

func rootOf(buckets *[NumBuckets]uint64) [32]byte {
	var buf [8 * NumBuckets]byte
	for i, v := range buckets {
		binary.BigEndian.PutUint64(buf[8*i:], v)
	}
	return sha256.Sum256(buf[:])
}

func compareEntryKeys(a, b *entry) int {
	if c := cmp.Compare(a.rec.Kind, b.rec.Kind); c != 0 {
		return c
	}
	return cmp.Compare(a.rec.ID, b.rec.ID)
}

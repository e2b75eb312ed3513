package lb

import (
	"errors"
	"fmt"
)

// DefaultMaglevTableSize is the number of buckets of a maglev service,
// one nftables map element each. It is prime, as the permutation needs.
// Maglev's disruption shrinks as the table grows past the endpoint count:
// with 10 endpoints, one leaving moves 15.2% of clients at 251 buckets,
// 12.3% at 1021 and 10.9% at 4093 (ideal: 10%). 1021 keeps a maglev
// service at about 36 KB of netlink batch and each of up to ~100 endpoints
// at 10 or more buckets; each endpoint gets floor(M/N) or ceil(M/N).
const DefaultMaglevTableSize = 1021

// ErrMaglevSize is returned for a table size that is not a prime >= 2, or
// smaller than the number of endpoints.
var ErrMaglevSize = errors.New("maglev table size must be a prime >= the number of endpoints")

// Maglev builds the lookup table of Maglev consistent hashing (Eisenbud et
// al., NSDI 2016, section 3.4) for the endpoints named by ids: entry b of
// the result is the index in ids of the endpoint that owns bucket b.
//
// Each id gets a permutation of the buckets from two hashes of the id
// (offset and skip); endpoints take turns claiming their next preferred
// free bucket until all m are taken. The table depends on the ids only, not
// on where a particular id sits in the slice except to break ties, so
// callers pass ids in a canonical (sorted) order. When one of N ids leaves,
// about 1/N of the buckets change owner, a little more than the ideal
// because the permutations interleave.
//
// m must be a prime no smaller than len(ids). With no ids the table is nil.
func Maglev(ids []string, m int) ([]int, error) {
	if m < 2 || !isPrime(m) || m < len(ids) {
		return nil, fmt.Errorf("maglev table of %d buckets for %d endpoints: %w", m, len(ids), ErrMaglevSize)
	}
	n := len(ids)
	if n == 0 {
		return nil, nil
	}
	offset := make([]uint64, n)
	skip := make([]uint64, n)
	next := make([]uint64, n)
	for i, id := range ids {
		h := hash64(id)
		offset[i] = h % uint64(m)
		skip[i] = fmix64(h^0x9e3779b97f4a7c15)%uint64(m-1) + 1
	}
	table := make([]int, m)
	for i := range table {
		table[i] = -1
	}
	filled := 0
	for {
		for i := range n {
			c := (offset[i] + next[i]*skip[i]) % uint64(m)
			for table[c] >= 0 {
				next[i]++
				c = (offset[i] + next[i]*skip[i]) % uint64(m)
			}
			table[c] = i
			next[i]++
			filled++
			if filled == m {
				return table, nil
			}
		}
	}
}

// isPrime is trial division; table sizes are small.
func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

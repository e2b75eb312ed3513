// Package state holds the cluster's replicated records: a last-writer-wins
// map keyed by (kind, id), versioned by hybrid logical clocks, persisted in
// bbolt and summarised by a Merkle-style digest for anti-entropy.
//
// The package does no network I/O and starts no goroutines. The gossip layer
// moves the bytes; this package decides what they mean:
//
//   - A local write ([Store.Write]) stamps a record with the store's HLC and
//     node name, commits it to disk and returns it for the caller to push to
//     peers.
//   - Records from peers go through [Store.Apply], which merges each one with
//     [Merge] and returns only those that changed local state.
//   - Anti-entropy between two nodes A and B: A sends its [Digest.Root]
//     (32 bytes). If B's root differs, B answers with [EncodeDigest] of its
//     digest (at most 2,113 bytes). A computes [DiffBuckets] and both sides
//     exchange [Store.BucketRecords] of the differing buckets, encoded with
//     [EncodeRecords], and feed what they receive to [Store.Apply].
//
// Replication is AP: during a partition both sides accept writes, and when it
// heals the later version of each record wins everywhere. Tombstones keep a
// delete visible to peers until [Store.GC] drops them; the expiry must be
// longer than any node stays away, or a node returning with an old live copy
// resurrects the record.
package state

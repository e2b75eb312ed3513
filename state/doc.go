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
// Records may carry their writer's signature ([Record.Sig], made by
// [Store.WriteSigned] over [Record.SignedBytes]: kind, id, version and
// body). It travels and is stored with the record; checking it, and
// deciding which kinds need one, is the caller's business (the node checks
// records from peers before they reach Apply).
//
// Peers' clocks are trusted only so far. Apply skips a record whose version
// is more than [Options.MaxClockDrift] ahead of this node's physical clock:
// it is not stored, not observed by the HLC, and not among the changed
// records a caller forwards; it is counted in [Stats.FutureRejected] and
// listed in the [FutureVersionsError] that Apply returns beside the rest of
// the batch, which it still applies.
// No peer can therefore move this node's clock more than the bound past real
// time, and a fast clock wins merges it should lose for at most that long. A
// node whose own clock runs further ahead still writes locally, but its
// writes reach no peer until real time catches up with them. The state file
// is this node's own history and is trusted: Open observes every version in
// it.
//
// A peer holding such a record keeps a digest that differs from this node's
// in that record's bucket. Every anti-entropy exchange with it resends that
// one bucket, and Apply skips and counts the record again, while the other
// records of that bucket and of every other bucket still converge. The
// digests agree once this node's clock comes within the bound of the
// record's version and Apply accepts it.
//
// Replication is AP: during a partition both sides accept writes, and when it
// heals the later version of each record wins everywhere. Tombstones keep a
// delete visible to peers until [Store.GC] drops them; the expiry must be
// longer than any node stays away, or a node returning with an old live copy
// resurrects the record.
package state

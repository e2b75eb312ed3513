package state

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Defaults for Options fields left zero.
const (
	// DefaultTombstoneExpiry is how long a delete stays replicable. It must
	// outlast the longest time a node can be partitioned or down and still
	// rejoin with its old data; a day covers reboots and maintenance.
	DefaultTombstoneExpiry = 24 * time.Hour
	// DefaultLockTimeout is how long Open waits for another process that
	// holds the state file, before failing instead of hanging.
	DefaultLockTimeout = time.Second
	// DefaultMaxClockDrift is how far ahead of this node's clock a peer's
	// version may be. NTP keeps clocks within milliseconds of each other; a
	// minute still accepts a node whose time sync has lapsed for a while,
	// and bounds how long a fast clock can win merges it should lose.
	DefaultMaxClockDrift = time.Minute
)

// On-disk layout: bucket "records" maps uvarint(len(kind))||kind||id to an
// encoded record (see codec.go); bucket "meta" holds the format number.
var (
	recordsBucket = []byte("records")
	metaBucket    = []byte("meta")
	formatKey     = []byte("format")
	formatV1      = []byte("1")
)

// Options configures a Store.
type Options struct {
	// Node is this node's name, stamped on local writes. Required.
	Node string
	// Clock reads physical time for the HLC and for ageing tombstones that
	// arrive through Apply. Nil means time.Now; tests pass a fake.
	Clock func() time.Time
	// TombstoneExpiry makes Apply drop incoming tombstones already older
	// than this, so a tombstone one node has collected is not copied back
	// from a peer that has not collected it yet. Use the expiry passed to
	// GC. Zero means DefaultTombstoneExpiry; negative disables the check.
	TombstoneExpiry time.Duration
	// LockTimeout bounds how long Open waits for the file lock. Zero means
	// DefaultLockTimeout.
	LockTimeout time.Duration
	// MaxClockDrift bounds how far ahead of Clock the version of a record
	// from a peer may be. Apply skips records beyond it, neither storing nor
	// observing them, so a node whose clock runs a year fast, or a forged
	// version, cannot drag every node's HLC a year ahead and win every
	// last-writer-wins merge until then. Local writes are not checked.
	//
	// The trade-off: a larger bound tolerates worse clocks, but lets a fast
	// node's writes beat other nodes' later writes for up to that long; a
	// smaller one delays records from nodes whose clocks run ahead until
	// this clock comes within the bound (anti-entropy offers them again).
	// Set it above the largest skew between any two nodes' clocks: a peer's
	// versions may run as far ahead as the fastest clock it has observed,
	// and this node's clock may itself be behind. Zero means
	// DefaultMaxClockDrift; negative disables the bound.
	MaxClockDrift time.Duration
}

func (o *Options) fill() error {
	if err := checkName("node name", o.Node, MaxNodeLen); err != nil {
		return err
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.TombstoneExpiry == 0 {
		o.TombstoneExpiry = DefaultTombstoneExpiry
	}
	if o.LockTimeout == 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.MaxClockDrift == 0 {
		o.MaxClockDrift = DefaultMaxClockDrift
	}
	return nil
}

// Store is this node's copy of the replicated record set: an in-memory index
// in front of a bbolt file. Every write is committed and fsync'd before the
// method that made it returns.
//
// A Store is safe for concurrent use. One mutex guards it, and is held across
// the disk commit so memory and disk change in the same order; reads wait
// while a write is being synced.
type Store struct {
	mu     sync.Mutex
	db     *bolt.DB // nil for a memory-only store
	path   string
	opts   Options
	hlc    *HLC
	closed bool

	byKind  map[string]map[string]*entry
	buckets [NumBuckets]map[Key]*entry

	// Digest cache: a bucket's hash is recomputed only after it changed.
	hashes    [NumBuckets]uint64
	dirty     [NumBuckets]bool
	root      [32]byte
	rootDirty bool

	tombstones     int
	futureRejected uint64
}

type entry struct {
	rec    Record
	sum    uint64 // bodySum(rec.Body)
	bucket uint8
}

// Stats counts a store's records, and the records it refused.
type Stats struct {
	Live       int // records that are not deleted
	Tombstones int // deleted records not yet collected
	// FutureRejected counts the records Apply has skipped since the store
	// was opened because their versions were more than MaxClockDrift ahead
	// of the clock. A record offered again is counted again, so a peer
	// holding one raises it on every anti-entropy exchange.
	FutureRejected uint64
}

func newStore(opts Options) (*Store, error) {
	if err := opts.fill(); err != nil {
		return nil, fmt.Errorf("state options: %w", err)
	}
	s := &Store{
		opts:      opts,
		hlc:       NewHLC(opts.Node, opts.Clock),
		byKind:    make(map[string]map[string]*entry),
		rootDirty: true,
	}
	for i := range s.buckets {
		s.buckets[i] = make(map[Key]*entry)
	}
	return s, nil
}

// Open opens (creating if needed) the state file at path and loads every
// record into memory. The clock is moved past every stored version, so a
// write after a restart wins over writes made before it even if the machine's
// clock went back.
func Open(path string, opts Options) (*Store, error) {
	if path == "" {
		return nil, errors.New("open state: empty path")
	}
	s, err := newStore(opts)
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: s.opts.LockTimeout})
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	s.db, s.path = db, path
	if err := s.load(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	return s, nil
}

// OpenMemory returns a store that keeps records in memory only, for
// simulations and tests. It forgets everything when the process exits.
func OpenMemory(opts Options) (*Store, error) {
	return newStore(opts)
}

func (s *Store) load() error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		switch f := meta.Get(formatKey); {
		case f == nil:
			if err := meta.Put(formatKey, formatV1); err != nil {
				return err
			}
		case !bytes.Equal(f, formatV1):
			return fmt.Errorf("unsupported state format %q", f)
		}
		_, err = tx.CreateBucketIfNotExists(recordsBucket)
		return err
	})
	if err != nil {
		return fmt.Errorf("prepare buckets: %w", err)
	}
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(recordsBucket).ForEach(func(k, v []byte) error {
			r, err := decodeRecord(v)
			if err != nil {
				return fmt.Errorf("load record %q: %w", k, err)
			}
			if !bytes.Equal(k, diskKey(r.Kind, r.ID)) {
				return fmt.Errorf("load record %q: stored under the wrong key: %w", k, ErrMalformed)
			}
			// bbolt's memory is only valid inside the transaction.
			r.Body, r.Sig = bytes.Clone(r.Body), bytes.Clone(r.Sig)
			s.hlc.Observe(r.Version)
			s.set(r)
			return nil
		})
	})
}

// Close closes the state file. Later writes fail with ErrClosed; reads keep
// answering from memory.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.db == nil {
		return nil
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close state %s: %w", s.path, err)
	}
	return nil
}

// Node returns the name this store stamps on local writes.
func (s *Store) Node() string { return s.opts.Node }

// HLC returns the store's hybrid logical clock.
func (s *Store) HLC() *HLC { return s.hlc }

// Write makes a local write: it stamps a record for (kind, id) with a fresh
// version from the store's clock and node name, commits it, and returns it
// for the caller to push to peers. A delete (deleted true) drops the body and
// leaves a tombstone.
func (s *Store) Write(kind, id string, body []byte, deleted bool) (Record, error) {
	return s.write(kind, id, body, deleted, nil)
}

// Signer returns the signature of a record's SignedBytes.
type Signer func(signed []byte) ([]byte, error)

// WriteSigned is Write of a live record that carries sign's signature over
// its SignedBytes. The signature is made once the version is stamped (under
// the store's lock), so it covers the version the record is stored and
// sent with.
func (s *Store) WriteSigned(kind, id string, body []byte, sign Signer) (Record, error) {
	if sign == nil {
		return Record{}, fmt.Errorf("write %s/%s: no signer", kind, id)
	}
	return s.write(kind, id, body, false, sign)
}

func (s *Store) write(kind, id string, body []byte, deleted bool, sign Signer) (Record, error) {
	if deleted {
		body = nil
	}
	r := Record{Kind: kind, ID: id, Body: bytes.Clone(body), Deleted: deleted}
	r.Version.Node = s.opts.Node
	if err := r.Validate(); err != nil {
		return Record{}, fmt.Errorf("write %s/%s: %w", kind, id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Record{}, fmt.Errorf("write %s/%s: %w", kind, id, ErrClosed)
	}
	cur, have := s.lookup(kind, id)
	if have {
		s.hlc.Observe(cur.rec.Version) // already true; kept as a guarantee
	}
	r.Version = s.hlc.Now()
	if have && !cur.rec.Version.Less(r.Version) {
		// Only a clock saturated at the end of its range (see HLC.Now) gets
		// here; a write that cannot win would be undone by the next sync.
		return Record{}, fmt.Errorf("write %s/%s: clock cannot stamp a version newer than %v", kind, id, cur.rec.Version)
	}
	if sign != nil {
		sig, err := sign(r.SignedBytes())
		if err != nil {
			return Record{}, fmt.Errorf("write %s/%s: sign: %w", kind, id, err)
		}
		if len(sig) == 0 || len(sig) > MaxSigLen {
			return Record{}, fmt.Errorf("write %s/%s: signature of %d bytes: %w", kind, id, len(sig), ErrInvalidRecord)
		}
		r.Sig = bytes.Clone(sig)
	}
	if err := s.commit([]Record{r}, nil); err != nil {
		return Record{}, fmt.Errorf("write %s/%s: %w", kind, id, err)
	}
	s.set(r)
	return r, nil
}

// Delete is Write(kind, id, nil, true).
func (s *Store) Delete(kind, id string) (Record, error) {
	return s.Write(kind, id, nil, true)
}

// Put merges one record, from a peer or elsewhere, into the store. It
// reports whether the record won and changed the store. Like Apply, it skips
// a record too far ahead of the clock and returns an error matching
// ErrFutureVersion.
func (s *Store) Put(r Record) (bool, error) {
	changed, err := s.Apply([]Record{r})
	return len(changed) > 0, err
}

// Apply merges records into the store in one durable commit and returns the
// records that changed it, in input order. Records that lose to what the
// store holds are ignored; so is a tombstone older than the tombstone expiry,
// except that it still removes an older live record it wins over. The store's
// clock observes every record it does not skip, so later local writes win
// over them. If any record is invalid nothing is applied.
//
// A record that would win but whose version is more than
// Options.MaxClockDrift ahead of the clock is skipped: not stored, not
// observed, counted in Stats.FutureRejected. The rest of the batch is still
// applied, so one bad record does not hold back the others, and Apply
// returns what changed together with a *FutureVersionsError (matching
// ErrFutureVersion) that lists the skipped records. Any other error means
// nothing was applied.
func (s *Store) Apply(recs []Record) ([]Record, error) {
	for i := range recs {
		if err := recs[i].Validate(); err != nil {
			return nil, fmt.Errorf("apply record %d (%s): %w", i, recs[i].Key(), err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("apply %d records: %w", len(recs), ErrClosed)
	}
	now := s.opts.Clock()
	cutoff := int64(math.MinInt64)
	if s.opts.TombstoneExpiry > 0 {
		cutoff = now.Add(-s.opts.TombstoneExpiry).UnixNano()
	}
	horizon := int64(math.MaxInt64)
	if s.opts.MaxClockDrift > 0 {
		horizon = addClamped(now.UnixNano(), int64(s.opts.MaxClockDrift))
	}
	type pending struct {
		rec    Record
		remove bool
	}
	var (
		order   []Key
		batch   = make(map[Key]*pending)
		changed []Record
		future  []Record
	)
	for _, r := range recs {
		k := r.Key()
		var cur Record
		var have bool
		if p, ok := batch[k]; ok {
			cur, have = p.rec, true
		} else if e, ok := s.lookup(k.Kind, k.ID); ok {
			cur, have = e.rec, true
		}
		if have && compareRecords(r, cur) <= 0 {
			continue // the clock has already observed cur, so r too
		}
		if r.Version.WallNanos > horizon {
			// Checked before Observe: observing it is what would drag the
			// clock, and every later local write, into the future.
			future = append(future, r)
			continue
		}
		s.hlc.Observe(r.Version)
		expired := r.Deleted && r.Version.WallNanos < cutoff
		if expired && (!have || cur.Deleted) {
			continue // nothing live to remove
		}
		r.Body, r.Sig = bytes.Clone(r.Body), bytes.Clone(r.Sig)
		if _, ok := batch[k]; !ok {
			order = append(order, k)
		}
		batch[k] = &pending{rec: r, remove: expired}
		changed = append(changed, r)
	}
	var skipped error
	if len(future) > 0 {
		s.futureRejected += uint64(len(future))
		skipped = fmt.Errorf("apply %d records: %w", len(recs),
			&FutureVersionsError{Records: future, Now: now, MaxDrift: s.opts.MaxClockDrift})
	}
	if len(order) == 0 {
		return nil, skipped
	}
	var puts []Record
	var dels []Key
	for _, k := range order {
		if p := batch[k]; p.remove {
			dels = append(dels, k)
		} else {
			puts = append(puts, p.rec)
		}
	}
	if err := s.commit(puts, dels); err != nil {
		return nil, fmt.Errorf("apply %d records: %w", len(recs), err)
	}
	for _, r := range puts {
		s.set(r)
	}
	for _, k := range dels {
		s.remove(k)
	}
	// A record replaced later in the same batch is not news.
	out := changed[:0]
	for _, r := range changed {
		if compareRecords(r, batch[r.Key()].rec) == 0 {
			out = append(out, r)
		}
	}
	return out, skipped
}

// FutureVersionsError lists the records Apply skipped because their
// versions were more than Options.MaxClockDrift ahead of the store's clock.
// It matches ErrFutureVersion. Apply still applied the rest of the batch.
type FutureVersionsError struct {
	// Records are the skipped records, in input order. They share their
	// bodies with the slice passed to Apply.
	Records []Record
	// Now is the clock reading the versions were compared with.
	Now time.Time
	// MaxDrift is the bound they exceeded.
	MaxDrift time.Duration
}

func (e *FutureVersionsError) Error() string {
	if len(e.Records) == 0 {
		return ErrFutureVersion.Error()
	}
	first := e.Records[0]
	ahead := time.Duration(subClamped(first.Version.WallNanos, e.Now.UnixNano()))
	msg := fmt.Sprintf("skipped %d records more than %v ahead of the clock: %s at %s (%v ahead)",
		len(e.Records), e.MaxDrift, first.Key(), first.Version, ahead)
	if len(e.Records) > 1 {
		msg += fmt.Sprintf(" and %d more", len(e.Records)-1)
	}
	return msg
}

// Unwrap makes errors.Is(err, ErrFutureVersion) hold.
func (e *FutureVersionsError) Unwrap() error { return ErrFutureVersion }

// GC drops tombstones whose version is older than now minus expiry, and
// returns how many it dropped. Choose expiry longer than any node stays
// partitioned or down; see DefaultTombstoneExpiry.
func (s *Store) GC(now time.Time, expiry time.Duration) (int, error) {
	if expiry <= 0 {
		return 0, fmt.Errorf("collect tombstones: expiry %v is not positive", expiry)
	}
	cutoff := now.Add(-expiry).UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, fmt.Errorf("collect tombstones: %w", ErrClosed)
	}
	var dels []Key
	for _, ids := range s.byKind {
		for _, e := range ids {
			if e.rec.Deleted && e.rec.Version.WallNanos < cutoff {
				dels = append(dels, e.rec.Key())
			}
		}
	}
	if len(dels) == 0 {
		return 0, nil
	}
	if err := s.commit(nil, dels); err != nil {
		return 0, fmt.Errorf("collect %d tombstones: %w", len(dels), err)
	}
	for _, k := range dels {
		s.remove(k)
	}
	return len(dels), nil
}

// Get returns the live record for (kind, id). It reports false if there is
// none or it has been deleted.
func (s *Store) Get(kind, id string) (Record, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.lookup(kind, id)
	if !ok || e.rec.Deleted {
		return Record{}, false
	}
	return e.rec, true
}

// Wins reports whether r would win over the copy of its key the store
// holds (or whether the store holds none), so a caller can skip the work of
// checking records that Apply would ignore anyway.
func (s *Store) Wins(r Record) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.lookup(r.Kind, r.ID)
	return !ok || compareRecords(r, e.rec) > 0
}

// Deleted reports whether (kind, id) is known to have been deleted: a
// tombstone not yet collected.
func (s *Store) Deleted(kind, id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.lookup(kind, id)
	return ok && e.rec.Deleted
}

// List returns the live records of a kind, sorted by id.
func (s *Store) List(kind string) []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := s.byKind[kind]
	out := make([]Record, 0, len(ids))
	for _, e := range ids {
		if !e.rec.Deleted {
			out = append(out, e.rec)
		}
	}
	slices.SortFunc(out, func(a, b Record) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Stats counts the store's live records and tombstones, and the records
// Apply skipped for being too far ahead of the clock.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	total := 0
	for _, ids := range s.byKind {
		total += len(ids)
	}
	return Stats{Live: total - s.tombstones, Tombstones: s.tombstones, FutureRejected: s.futureRejected}
}

// Digest returns the store's digest. Only buckets changed since the last
// call are rehashed.
func (s *Store) Digest() Digest {
	s.mu.Lock()
	defer s.mu.Unlock()
	var scratch []*entry
	for i := range s.buckets {
		if !s.dirty[i] {
			continue
		}
		scratch = scratch[:0]
		for _, e := range s.buckets[i] {
			scratch = append(scratch, e)
		}
		s.hashes[i] = hashBucket(scratch)
		s.dirty[i] = false
	}
	if s.rootDirty {
		s.root = rootOf(&s.hashes)
		s.rootDirty = false
	}
	return Digest{Root: s.root, Buckets: s.hashes}
}

// BucketRecords returns every record in digest bucket i, tombstones
// included, sorted by key. It returns nil if i is out of range.
func (s *Store) BucketRecords(i int) []Record {
	if i < 0 || i >= NumBuckets {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	entries := make([]*entry, 0, len(s.buckets[i]))
	for _, e := range s.buckets[i] {
		entries = append(entries, e)
	}
	slices.SortFunc(entries, compareEntryKeys)
	out := make([]Record, len(entries))
	for j, e := range entries {
		out[j] = e.rec
	}
	return out
}

func (s *Store) lookup(kind, id string) (*entry, bool) {
	e, ok := s.byKind[kind][id]
	return e, ok
}

// set stores r in memory, replacing any record with its key. Callers hold mu.
func (s *Store) set(r Record) {
	ids := s.byKind[r.Kind]
	if ids == nil {
		ids = make(map[string]*entry)
		s.byKind[r.Kind] = ids
	}
	if old, ok := ids[r.ID]; ok && old.rec.Deleted {
		s.tombstones--
	}
	if r.Deleted {
		s.tombstones++
	}
	e := &entry{rec: r, sum: bodySum(r.Body), bucket: uint8(BucketOf(r.Kind, r.ID))}
	ids[r.ID] = e
	s.buckets[e.bucket][r.Key()] = e
	s.dirty[e.bucket], s.rootDirty = true, true
}

// remove forgets k in memory. Callers hold mu.
func (s *Store) remove(k Key) {
	e, ok := s.lookup(k.Kind, k.ID)
	if !ok {
		return
	}
	if e.rec.Deleted {
		s.tombstones--
	}
	delete(s.byKind[k.Kind], k.ID)
	if len(s.byKind[k.Kind]) == 0 {
		delete(s.byKind, k.Kind)
	}
	delete(s.buckets[e.bucket], k)
	s.dirty[e.bucket], s.rootDirty = true, true
}

// commit writes puts and deletes in one bbolt transaction, which fsyncs
// before it returns. Callers hold mu.
func (s *Store) commit(puts []Record, dels []Key) error {
	if s.db == nil {
		return nil
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(recordsBucket)
		for i := range puts {
			r := &puts[i]
			if err := b.Put(diskKey(r.Kind, r.ID), appendRecord(nil, r)); err != nil {
				return fmt.Errorf("store %s: %w", r.Key(), err)
			}
		}
		for _, k := range dels {
			if err := b.Delete(diskKey(k.Kind, k.ID)); err != nil {
				return fmt.Errorf("delete %s: %w", k, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("commit to %s: %w", s.path, err)
	}
	return nil
}

func diskKey(kind, id string) []byte {
	b := make([]byte, 0, binary.MaxVarintLen64+len(kind)+len(id))
	b = binary.AppendUvarint(b, uint64(len(kind)))
	b = append(b, kind...)
	return append(b, id...)
}

// addClamped returns a+b, clamped to the int64 range instead of wrapping, so
// a huge MaxClockDrift cannot turn the horizon into a time in the past.
func addClamped(a, b int64) int64 {
	sum := a + b
	switch {
	case b > 0 && sum < a:
		return math.MaxInt64
	case b < 0 && sum > a:
		return math.MinInt64
	}
	return sum
}

// subClamped returns a-b, clamped to the int64 range instead of wrapping.
func subClamped(a, b int64) int64 {
	diff := a - b
	switch {
	case b < 0 && diff < a:
		return math.MaxInt64
	case b > 0 && diff > a:
		return math.MinInt64
	}
	return diff
}

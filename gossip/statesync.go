package gossip

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/shoalmesh/shoal/state"
)

// State sync protocols.
const (
	// ProtocolStatePush carries freshly written records to a few peers,
	// who forward what was new to them: epidemic spread, each version
	// forwarded at most once per node.
	ProtocolStatePush = protocol.ID("/shoal/state/push/1.0.0")
	// ProtocolStateSync is push-pull anti-entropy: compare digest roots,
	// then bucket hashes, then exchange only the differing buckets.
	ProtocolStateSync = protocol.ID("/shoal/state/sync/1.0.0")
)

// Wire limits. A frame is a 4-byte big-endian length and a payload.
const (
	// MaxFrame bounds one frame; bigger record sets are split.
	MaxFrame = 4 << 20
	// chunkTarget is the size records are batched to before a new frame.
	chunkTarget = 1 << 20
	inSync      = 0x00
	// futureWarnEvery spaces out warnings about records skipped for being
	// too far ahead of the local clock: a peer holding one offers it again
	// on every anti-entropy exchange.
	futureWarnEvery = time.Minute
	// dropWarnEvery spaces out warnings about records dropped from one
	// peer: anti-entropy offers a dropped record again every round.
	dropWarnEvery = time.Minute
	// maxDropLogPeers bounds the per-peer warning clocks; past it they are
	// forgotten at once (a peer can make up new ids).
	maxDropLogPeers = 1024
)

// ErrFrameTooLarge is returned for a frame over MaxFrame.
var ErrFrameTooLarge = errors.New("frame too large")

// SyncStore is what state sync needs of the local store.
type SyncStore interface {
	Apply(recs []state.Record) ([]state.Record, error)
	Digest() state.Digest
	BucketRecords(i int) []state.Record
	// Wins reports whether a record would change the store, so that
	// records it already holds are not checked again on every exchange.
	Wins(r state.Record) bool
}

// SyncConfig tunes dissemination.
type SyncConfig struct {
	// AntiEntropyInterval is how often this node reconciles with one random
	// alive peer.
	AntiEntropyInterval time.Duration
	// MinFanout is the least number of peers a push goes to; the fanout
	// grows as ln(N)+2 so that epidemic spread reaches everyone with high
	// probability, and anti-entropy repairs the rest.
	MinFanout int
	// Timeout bounds one push or one anti-entropy exchange.
	Timeout time.Duration

	// MaxStreams bounds the state streams (push and anti-entropy) this
	// node serves at once, from all peers together; MaxStreamsPerPeer
	// bounds those from one peer. An honest peer has about one push and
	// one exchange open with a node at a time; streams over a bound are
	// reset at once and what they carried comes again by anti-entropy.
	// Zero means the default.
	MaxStreams, MaxStreamsPerPeer int
	// MaxStreamRecords and MaxStreamBytes bound the records one stream
	// may carry, in count and in encoded bytes. Records are applied a
	// frame (at most MaxFrame bytes) at a time, so a stream holds one
	// frame in memory; the bounds cap the work one stream can cause. They
	// must fit the whole store, which a new node pulls in one exchange.
	// Zero means the default.
	MaxStreamRecords int
	MaxStreamBytes   int

	// Accept, when set, is asked about every record a peer sends that
	// would change the local store, before it is stored or forwarded. A
	// record it refuses is dropped, counted in SyncStats by the reason
	// (errors wrapping ErrBadSignature or ErrUnknownSigner, else invalid)
	// and logged at most once a minute per peer; the rest of the batch is
	// applied. The node validates records here as it validates API input.
	Accept func(state.Record) error
}

// DefaultSyncConfig returns the defaults.
func DefaultSyncConfig() SyncConfig {
	return SyncConfig{
		AntiEntropyInterval: 2 * time.Second, MinFanout: 3, Timeout: 10 * time.Second,
		MaxStreams: 64, MaxStreamsPerPeer: 4,
		MaxStreamRecords: 1 << 20, MaxStreamBytes: 256 << 20,
	}
}

// withDefaults fills the limits left zero.
func (c SyncConfig) withDefaults() SyncConfig {
	d := DefaultSyncConfig()
	if c.MaxStreams <= 0 {
		c.MaxStreams = d.MaxStreams
	}
	if c.MaxStreamsPerPeer <= 0 {
		c.MaxStreamsPerPeer = d.MaxStreamsPerPeer
	}
	if c.MaxStreamRecords <= 0 {
		c.MaxStreamRecords = d.MaxStreamRecords
	}
	if c.MaxStreamBytes <= 0 {
		c.MaxStreamBytes = d.MaxStreamBytes
	}
	return c
}

// SyncStats are cumulative counters, safe to read concurrently.
type SyncStats struct {
	BytesSent, BytesReceived         atomic.Uint64
	PushesSent, PushesReceived       atomic.Uint64
	RecordsApplied                   atomic.Uint64
	SyncRounds, SyncInSync, SyncFail atomic.Uint64
	Rejected                         atomic.Uint64
	PushFailures                     atomic.Uint64
	// Records from peers that SyncConfig.Accept refused, by reason: a
	// record offered again is counted again.
	RecordsInvalid, RecordsBadSignature, RecordsUnknownSigner atomic.Uint64
	// StreamsRefused counts inbound state streams reset for going over
	// SyncConfig.MaxStreams or MaxStreamsPerPeer.
	StreamsRefused atomic.Uint64
}

// Drop reasons, as Dropped reports them (a metrics label).
const (
	DropInvalid       = "invalid"
	DropBadSignature  = "signature"
	DropUnknownSigner = "unknown_signer"
)

// Dropped returns the records dropped so far by reason, for a counter
// such as shoal_state_records_dropped_total{reason}.
func (s *SyncStats) Dropped() map[string]uint64 {
	return map[string]uint64{
		DropInvalid:       s.RecordsInvalid.Load(),
		DropBadSignature:  s.RecordsBadSignature.Load(),
		DropUnknownSigner: s.RecordsUnknownSigner.Load(),
	}
}

// StateSync moves state records between nodes over libp2p streams.
type StateSync struct {
	cfg     SyncConfig
	host    *Host
	cluster *Cluster
	store   SyncStore
	log     *slog.Logger
	stats   SyncStats
	// onChange is called with records that changed the local store because
	// of a peer (not local writes).
	onChange func([]state.Record)

	queue chan pushItem
	// busy is set while the push loop holds dequeued records.
	busy atomic.Bool
	wg   sync.WaitGroup
	// lastFutureWarn is when (Unix nanoseconds) skipped future records were
	// last logged at warning level.
	lastFutureWarn atomic.Int64
	// limits bounds the streams served at once.
	limits streamLimits
	// dropMu guards dropWarned: when records dropped from each peer were
	// last logged at warning level.
	dropMu     sync.Mutex
	dropWarned map[string]time.Time
}

// streamLimits counts the inbound state streams open, in total and per
// peer.
type streamLimits struct {
	mu      sync.Mutex
	total   int
	perPeer map[peer.ID]int
}

// acquire takes a slot for a stream from p, or reports false when a bound
// is reached.
func (l *streamLimits) acquire(p peer.ID, maxTotal, maxPeer int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= maxTotal || l.perPeer[p] >= maxPeer {
		return false
	}
	if l.perPeer == nil {
		l.perPeer = map[peer.ID]int{}
	}
	l.total++
	l.perPeer[p]++
	return true
}

func (l *streamLimits) release(p peer.ID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perPeer[p]--; l.perPeer[p] <= 0 {
		delete(l.perPeer, p)
	}
}

type pushItem struct {
	recs    []state.Record
	exclude string // peer name not to send back to
}

// NewStateSync registers the sync protocols on host. Call Run to start
// pushing and anti-entropy.
func NewStateSync(cfg SyncConfig, host *Host, cluster *Cluster, store SyncStore, onChange func([]state.Record), log *slog.Logger) *StateSync {
	s := &StateSync{
		cfg: cfg.withDefaults(), host: host, cluster: cluster, store: store, log: log,
		onChange:   onChange,
		queue:      make(chan pushItem, 1024),
		dropWarned: map[string]time.Time{},
	}
	host.Handle(ProtocolStatePush, s.servePush)
	host.Handle(ProtocolStateSync, s.serveSync)
	return s
}

// Stats returns the counters.
func (s *StateSync) Stats() *SyncStats { return &s.stats }

// Publish pushes records written locally to peers at once. It never blocks
// the caller for long: if the queue is full, anti-entropy will carry them.
func (s *StateSync) Publish(recs []state.Record) {
	select {
	case s.queue <- pushItem{recs: recs}:
	default:
		s.log.Warn("state push queue full; anti-entropy will deliver", "records", len(recs))
	}
}

// Run pushes queued records and runs anti-entropy until ctx ends.
func (s *StateSync) Run(ctx context.Context) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.pushLoop(ctx)
	}()
	s.antiEntropyLoop(ctx)
	s.wg.Wait()
}

// SyncNow runs one anti-entropy exchange with a random alive peer.
func (s *StateSync) SyncNow(ctx context.Context) error {
	peers := s.peers("")
	if len(peers) == 0 {
		return nil
	}
	return s.SyncWith(ctx, peers[rand.IntN(len(peers))])
}

func (s *StateSync) antiEntropyLoop(ctx context.Context) {
	for {
		// Jitter desynchronises nodes that started together.
		d := s.cfg.AntiEntropyInterval/2 + rand.N(s.cfg.AntiEntropyInterval)
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		sctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		if err := s.SyncNow(sctx); err != nil && ctx.Err() == nil {
			s.log.Debug("anti-entropy", "err", err)
		}
		cancel()
	}
}

// peers returns alive members other than this node and exclude.
func (s *StateSync) peers(exclude string) []Member {
	var out []Member
	self := s.cluster.LocalName()
	for _, m := range s.cluster.Members() {
		if m.Status == StatusAlive && m.Name != self && m.Name != exclude && m.Meta.PeerID != "" {
			out = append(out, m)
		}
	}
	return out
}

// Fanout is how many peers a push goes to in a cluster of n peers.
func Fanout(n, minFanout int) int {
	f := int(math.Ceil(math.Log(float64(max(n, 1))))) + 2
	return min(max(f, minFanout), n)
}

func (s *StateSync) pushLoop(ctx context.Context) {
	for {
		var item pushItem
		select {
		case <-ctx.Done():
			return
		case item = <-s.queue:
			s.busy.Store(true)
		}
		// Batch what else is waiting for the same audience.
	drain:
		for len(item.recs) < 512 {
			select {
			case next := <-s.queue:
				if next.exclude != item.exclude {
					s.send(ctx, item)
					item = next
					continue
				}
				item.recs = append(item.recs, next.recs...)
			default:
				break drain
			}
		}
		s.send(ctx, item)
		s.busy.Store(false)
	}
}

// Flush waits until every queued push has been sent, then runs one
// anti-entropy round, so that writes acknowledged just before a shutdown
// reach a peer. Run must still be running.
func (s *StateSync) Flush(ctx context.Context) error {
	for len(s.queue) > 0 || s.busy.Load() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("flush state pushes: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return s.SyncNow(ctx)
}

func (s *StateSync) send(ctx context.Context, item pushItem) {
	peers := s.peers(item.exclude)
	rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	peers = peers[:Fanout(len(peers), s.cfg.MinFanout)]
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
			defer cancel()
			if err := s.push(pctx, p, item.recs); err != nil {
				s.stats.PushFailures.Add(1)
				s.log.Debug("state push", "peer", p.Name, "err", err)
			}
		}()
	}
	wg.Wait()
}

func (s *StateSync) push(ctx context.Context, m Member, recs []state.Record) error {
	st, err := s.host.Open(ctx, m, ProtocolStatePush)
	if err != nil {
		return err
	}
	defer st.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(dl)
	}
	w := bufio.NewWriter(&countingWriter{w: st, n: &s.stats.BytesSent})
	if err := writeRecordFrames(w, recs); err != nil {
		st.Reset()
		return fmt.Errorf("push to %s: %w", m.Name, err)
	}
	if err := w.Flush(); err != nil {
		st.Reset()
		return fmt.Errorf("push to %s: %w", m.Name, err)
	}
	_ = st.CloseWrite()
	// Wait for the receiver to finish (EOF) so the push is applied on return.
	_, _ = io.Copy(io.Discard, io.LimitReader(st, 1))
	s.stats.PushesSent.Add(1)
	return nil
}

func (s *StateSync) servePush(st network.Stream) {
	defer st.Close()
	if !s.admit(st, "push") {
		return
	}
	defer s.limits.release(st.Conn().RemotePeer())
	_ = st.SetDeadline(time.Now().Add(s.cfg.Timeout))
	from := s.memberName(st)
	r := bufio.NewReader(&countingReader{r: st, n: &s.stats.BytesReceived})
	var changed []state.Record
	err := s.readRecordFrames(r, func(recs []state.Record) {
		changed = append(changed, s.apply(from, recs)...)
	})
	if err != nil {
		// What came before the bad frame was valid and stays applied.
		s.reject(st, "push", from, err)
		return
	}
	s.stats.PushesReceived.Add(1)
	if len(changed) > 0 {
		// Forward only what was new here: each node relays a version once.
		select {
		case s.queue <- pushItem{recs: changed, exclude: from}:
		default:
		}
	}
}

// admit takes a stream slot for st's peer, or resets st when the peer or
// the node is at its bound.
func (s *StateSync) admit(st network.Stream, what string) bool {
	p := st.Conn().RemotePeer()
	if s.limits.acquire(p, s.cfg.MaxStreams, s.cfg.MaxStreamsPerPeer) {
		return true
	}
	s.stats.StreamsRefused.Add(1)
	s.log.Debug("refused state stream: too many open", "protocol", what, "peer", p.String())
	_ = st.Reset()
	return false
}

// apply merges records received from peer from into the store and returns
// those that changed it. Records the store would not take are skipped
// before Accept sees them; those Accept refuses are dropped.
func (s *StateSync) apply(from string, recs []state.Record) []state.Record {
	if len(recs) == 0 {
		return nil
	}
	kept := recs[:0:0]
	for _, r := range recs {
		if !s.store.Wins(r) {
			continue
		}
		if s.cfg.Accept != nil {
			if err := s.cfg.Accept(r); err != nil {
				s.drop(from, r, err)
				continue
			}
		}
		kept = append(kept, r)
	}
	if len(kept) == 0 {
		return nil
	}
	changed, err := s.store.Apply(kept)
	switch {
	case errors.Is(err, state.ErrFutureVersion):
		// The rest of the batch was applied. The skipped records stay out
		// (and are not forwarded) until this clock is within the drift
		// bound of them; anti-entropy keeps offering them until then.
		s.warnFuture(from, err)
	case err != nil:
		s.log.Warn("apply records from peer", "peer", from, "err", err)
		return nil
	}
	if len(changed) > 0 {
		s.stats.RecordsApplied.Add(uint64(len(changed)))
		if s.onChange != nil {
			s.onChange(changed)
		}
	}
	return changed
}

// drop counts a record Accept refused and logs it, at warning level at
// most once per dropWarnEvery per peer.
func (s *StateSync) drop(from string, r state.Record, err error) {
	switch {
	case errors.Is(err, ErrBadSignature):
		s.stats.RecordsBadSignature.Add(1)
	case errors.Is(err, ErrUnknownSigner):
		s.stats.RecordsUnknownSigner.Add(1)
	default:
		s.stats.RecordsInvalid.Add(1)
	}
	level := slog.LevelDebug
	now := time.Now()
	s.dropMu.Lock()
	if now.Sub(s.dropWarned[from]) >= dropWarnEvery {
		if len(s.dropWarned) >= maxDropLogPeers {
			clear(s.dropWarned)
		}
		s.dropWarned[from] = now
		level = slog.LevelWarn
	}
	s.dropMu.Unlock()
	s.log.Log(context.Background(), level, "dropped a record from a peer (further drops from it are logged at debug level for a minute)",
		"peer", from, "record", r.Key().String(), "writer", r.Version.Node, "err", err)
}

// warnFuture logs records skipped for being too far ahead, at warning level
// at most once per futureWarnEvery and at debug level otherwise, since a
// peer holding one resends it every anti-entropy round.
func (s *StateSync) warnFuture(from string, err error) {
	level := slog.LevelDebug
	now := time.Now().UnixNano()
	if last := s.lastFutureWarn.Load(); now-last >= int64(futureWarnEvery) && s.lastFutureWarn.CompareAndSwap(last, now) {
		level = slog.LevelWarn
	}
	s.log.Log(context.Background(), level, "skipped records from peer too far ahead of this node's clock; check time sync on both",
		"peer", from, "err", err)
}

func (s *StateSync) reject(st network.Stream, what, from string, err error) {
	s.stats.Rejected.Add(1)
	s.log.Warn("rejected state message", "protocol", what, "peer", from, "err", err)
	_ = st.Reset()
}

// memberName maps a stream's remote peer to a member name, or to its peer
// id when no member publishes it (a node not yet seen, or a key holder
// that is no member), so logs and per-peer limits tell such peers apart.
func (s *StateSync) memberName(st network.Stream) string {
	id := st.Conn().RemotePeer().String()
	if name := s.cluster.NameOfPeer(id); name != "" {
		return name
	}
	return "peer:" + id
}

// SyncWith runs one push-pull anti-entropy exchange with m:
//
//	A -> B  root[32]
//	B -> A  0x00 (in sync, done) | B's encoded digest
//	A -> B  bitmap of differing buckets, then A's records in them
//	B -> A  B's records in them that A did not send as-is
func (s *StateSync) SyncWith(ctx context.Context, m Member) error {
	s.stats.SyncRounds.Add(1)
	st, err := s.host.Open(ctx, m, ProtocolStateSync)
	if err != nil {
		s.stats.SyncFail.Add(1)
		return err
	}
	defer st.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(dl)
	}
	err = s.syncInitiator(st, m.Name)
	if err != nil {
		s.stats.SyncFail.Add(1)
		st.Reset()
		return fmt.Errorf("anti-entropy with %s: %w", m.Name, err)
	}
	return nil
}

func (s *StateSync) syncInitiator(st network.Stream, peer string) error {
	w := bufio.NewWriter(&countingWriter{w: st, n: &s.stats.BytesSent})
	r := bufio.NewReader(&countingReader{r: st, n: &s.stats.BytesReceived})
	mine := s.store.Digest()
	if err := writeFrame(w, mine.Root[:]); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	reply, err := readFrame(r)
	if err != nil {
		return err
	}
	if len(reply) == 1 && reply[0] == inSync {
		s.stats.SyncInSync.Add(1)
		return nil
	}
	theirs, err := state.DecodeDigest(reply)
	if err != nil {
		return err
	}
	diff := state.DiffBuckets(mine, theirs)
	var sent []state.Record
	for _, b := range diff {
		sent = append(sent, s.store.BucketRecords(b)...)
	}
	if err := writeFrame(w, encodeBitmap(diff)); err != nil {
		return err
	}
	if err := writeRecordFrames(w, sent); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return s.readRecordFrames(r, func(recs []state.Record) { s.apply(peer, recs) })
}

func (s *StateSync) serveSync(st network.Stream) {
	defer st.Close()
	if !s.admit(st, "sync") {
		return
	}
	defer s.limits.release(st.Conn().RemotePeer())
	_ = st.SetDeadline(time.Now().Add(s.cfg.Timeout))
	from := s.memberName(st)
	w := bufio.NewWriter(&countingWriter{w: st, n: &s.stats.BytesSent})
	r := bufio.NewReader(&countingReader{r: st, n: &s.stats.BytesReceived})
	root, err := readFrame(r)
	if err != nil || len(root) != 32 {
		s.reject(st, "sync", from, fmt.Errorf("bad digest root (%d bytes): %v", len(root), err))
		return
	}
	mine := s.store.Digest()
	if bytes.Equal(root, mine.Root[:]) {
		_ = writeFrame(w, []byte{inSync})
		_ = w.Flush()
		return
	}
	if err := writeFrame(w, state.EncodeDigest(mine)); err != nil {
		return
	}
	if err := w.Flush(); err != nil {
		return
	}
	bm, err := readFrame(r)
	if err != nil {
		s.reject(st, "sync", from, err)
		return
	}
	diff, err := decodeBitmap(bm)
	if err != nil {
		s.reject(st, "sync", from, err)
		return
	}
	got := map[state.Key]state.Version{}
	err = s.readRecordFrames(r, func(recs []state.Record) {
		s.apply(from, recs)
		for _, rec := range recs {
			got[rec.Key()] = rec.Version
		}
	})
	if err != nil {
		s.reject(st, "sync", from, err)
		return
	}
	var back []state.Record
	for _, b := range diff {
		for _, rec := range s.store.BucketRecords(b) {
			if v, ok := got[rec.Key()]; ok && v == rec.Version {
				continue
			}
			back = append(back, rec)
		}
	}
	if err := writeRecordFrames(w, back); err != nil {
		return
	}
	_ = w.Flush()
}

func encodeBitmap(buckets []int) []byte {
	bm := make([]byte, state.NumBuckets/8)
	for _, b := range buckets {
		bm[b/8] |= 1 << (b % 8)
	}
	return bm
}

func decodeBitmap(bm []byte) ([]int, error) {
	if len(bm) != state.NumBuckets/8 {
		return nil, fmt.Errorf("bucket bitmap: %d bytes, want %d", len(bm), state.NumBuckets/8)
	}
	var out []int
	for i := 0; i < state.NumBuckets; i++ {
		if bm[i/8]&(1<<(i%8)) != 0 {
			out = append(out, i)
		}
	}
	return out, nil
}

func writeFrame(w io.Writer, payload []byte) error {
	if len(payload) > MaxFrame {
		return fmt.Errorf("write frame of %d bytes: %w", len(payload), ErrFrameTooLarge)
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(payload)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// readFrame reads one frame, refusing lengths over MaxFrame before
// allocating.
func readFrame(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("read frame header: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxFrame {
		return nil, fmt.Errorf("frame of %d bytes, limit %d: %w", n, MaxFrame, ErrFrameTooLarge)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("read frame body: %w", err)
	}
	return buf, nil
}

// writeRecordFrames writes records in frames of about chunkTarget bytes,
// then an empty frame.
func writeRecordFrames(w io.Writer, recs []state.Record) error {
	start, size := 0, 0
	for i := range recs {
		size += len(recs[i].Body) + len(recs[i].Kind) + len(recs[i].ID) + len(recs[i].Version.Node) + 32
		if size >= chunkTarget || i == len(recs)-1 {
			if err := writeFrame(w, state.EncodeRecords(recs[start:i+1])); err != nil {
				return err
			}
			start, size = i+1, 0
		}
	}
	return writeFrame(w, nil)
}

// readRecordFrames reads record frames until the empty frame and hands
// each frame's records to fn, so one stream holds one frame in memory. It
// stops at the first bad frame or once the stream goes over the
// configured record or byte bound; fn has seen the frames before it.
func (s *StateSync) readRecordFrames(r io.Reader, fn func([]state.Record)) error {
	return readRecordFrames(r, s.cfg.MaxStreamRecords, s.cfg.MaxStreamBytes, fn)
}

func readRecordFrames(r io.Reader, maxRecords, maxBytes int, fn func([]state.Record)) error {
	records, total := 0, 0
	for {
		f, err := readFrame(r)
		if err != nil {
			return err
		}
		if len(f) == 0 {
			return nil
		}
		if total += len(f); total > maxBytes {
			return fmt.Errorf("more than %d bytes of records: %w", maxBytes, ErrFrameTooLarge)
		}
		recs, err := state.DecodeRecords(f, MaxFrame)
		if err != nil {
			return err
		}
		if records += len(recs); records > maxRecords {
			return fmt.Errorf("more than %d records: %w", maxRecords, ErrFrameTooLarge)
		}
		fn(recs)
	}
}

type countingWriter struct {
	w io.Writer
	n *atomic.Uint64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(uint64(n))
	return n, err
}

type countingReader struct {
	r io.Reader
	n *atomic.Uint64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(uint64(n))
	return n, err
}

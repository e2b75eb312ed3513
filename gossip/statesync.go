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
	// maxSyncRecords bounds how many records one anti-entropy exchange
	// accepts, so a hostile peer cannot exhaust memory.
	maxSyncRecords = 1 << 20
	// maxSyncBytes bounds the bytes of records one exchange accepts.
	maxSyncBytes = 256 << 20
	inSync       = 0x00
	// futureWarnEvery spaces out warnings about records skipped for being
	// too far ahead of the local clock: a peer holding one offers it again
	// on every anti-entropy exchange.
	futureWarnEvery = time.Minute
)

// ErrFrameTooLarge is returned for a frame over MaxFrame.
var ErrFrameTooLarge = errors.New("frame too large")

// SyncStore is what state sync needs of the local store.
type SyncStore interface {
	Apply(recs []state.Record) ([]state.Record, error)
	Digest() state.Digest
	BucketRecords(i int) []state.Record
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
}

// DefaultSyncConfig returns the defaults.
func DefaultSyncConfig() SyncConfig {
	return SyncConfig{AntiEntropyInterval: 2 * time.Second, MinFanout: 3, Timeout: 10 * time.Second}
}

// SyncStats are cumulative counters, safe to read concurrently.
type SyncStats struct {
	BytesSent, BytesReceived         atomic.Uint64
	PushesSent, PushesReceived       atomic.Uint64
	RecordsApplied                   atomic.Uint64
	SyncRounds, SyncInSync, SyncFail atomic.Uint64
	Rejected                         atomic.Uint64
	PushFailures                     atomic.Uint64
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
}

type pushItem struct {
	recs    []state.Record
	exclude string // peer name not to send back to
}

// NewStateSync registers the sync protocols on host. Call Run to start
// pushing and anti-entropy.
func NewStateSync(cfg SyncConfig, host *Host, cluster *Cluster, store SyncStore, onChange func([]state.Record), log *slog.Logger) *StateSync {
	s := &StateSync{
		cfg: cfg, host: host, cluster: cluster, store: store, log: log,
		onChange: onChange,
		queue:    make(chan pushItem, 1024),
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
	_ = st.SetDeadline(time.Now().Add(s.cfg.Timeout))
	from := s.memberName(st)
	r := bufio.NewReader(&countingReader{r: st, n: &s.stats.BytesReceived})
	recs, err := readRecordFrames(r, maxSyncRecords)
	if err != nil {
		s.reject(st, "push", from, err)
		return
	}
	s.stats.PushesReceived.Add(1)
	changed := s.apply(from, recs)
	if len(changed) > 0 {
		// Forward only what was new here: each node relays a version once.
		select {
		case s.queue <- pushItem{recs: changed, exclude: from}:
		default:
		}
	}
}

// apply merges records received from peer from into the store and returns
// those that changed it.
func (s *StateSync) apply(from string, recs []state.Record) []state.Record {
	if len(recs) == 0 {
		return nil
	}
	changed, err := s.store.Apply(recs)
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

// memberName maps a stream's remote peer to a member name ("" if unknown).
func (s *StateSync) memberName(st network.Stream) string {
	return s.cluster.NameOfPeer(st.Conn().RemotePeer().String())
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
	recs, err := readRecordFrames(r, maxSyncRecords)
	if err != nil {
		return err
	}
	s.apply(peer, recs)
	return nil
}

func (s *StateSync) serveSync(st network.Stream) {
	defer st.Close()
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
	theirs, err := readRecordFrames(r, maxSyncRecords)
	if err != nil {
		s.reject(st, "sync", from, err)
		return
	}
	s.apply(from, theirs)
	got := make(map[state.Key]state.Version, len(theirs))
	for _, rec := range theirs {
		got[rec.Key()] = rec.Version
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

// readRecordFrames reads record frames until the empty frame.
func readRecordFrames(r io.Reader, limit int) ([]state.Record, error) {
	var out []state.Record
	total := 0
	for {
		f, err := readFrame(r)
		if err != nil {
			return nil, err
		}
		if len(f) == 0 {
			return out, nil
		}
		if total += len(f); total > maxSyncBytes {
			return nil, fmt.Errorf("more than %d bytes of records: %w", maxSyncBytes, ErrFrameTooLarge)
		}
		recs, err := state.DecodeRecords(f, MaxFrame)
		if err != nil {
			return nil, err
		}
		out = append(out, recs...)
		if len(out) > limit {
			return nil, fmt.Errorf("more than %d records: %w", limit, ErrFrameTooLarge)
		}
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

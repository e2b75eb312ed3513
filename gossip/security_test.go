package gossip

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	yamux "github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	tcp "github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/shoalmesh/shoal/state"
)

// startSyncNodeWith is startSyncNode with a sync config of the test's own.
func startSyncNodeWith(t *testing.T, name string, key []byte, scfg func(*Cluster) SyncConfig) *syncNode {
	t.Helper()
	cfg := testConfig(t, name, key)
	h := startHost(t, cfg)
	c, err := NewCluster(cfg, Meta{PeerID: h.ID(), P2PPort: cfg.P2PPort, Health: HealthOK}, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(cfg.DataDir+"/state.db", state.Options{Node: name})
	if err != nil {
		t.Fatal(err)
	}
	n := &syncNode{cfg: cfg, cluster: c, host: h, store: st, done: make(chan struct{})}
	n.sync = NewStateSync(scfg(c), h, c, st, nil, quietLogger())
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() { n.sync.Run(ctx); close(n.done) }()
	t.Cleanup(n.stop)
	return n
}

// ownedBody is the part of a per-node record the test's Accept reads.
type ownedBody struct {
	Node string `json:"node"`
}

// acceptSigned is a small stand-in for the node's Accept: "endpoint"
// records must carry their owner's signature, "job" records must be
// objects naming no owner, anything else passes.
func acceptSigned(c *Cluster) func(state.Record) error {
	return func(r state.Record) error {
		if r.Deleted {
			return nil
		}
		var b ownedBody
		if err := json.Unmarshal(r.Body, &b); err != nil {
			return err
		}
		switch r.Kind {
		case "endpoint":
			return c.VerifyRecord(b.Node, r)
		case "job":
			if b.Node != "" {
				return errors.New("a job names no node")
			}
		}
		return nil
	}
}

// keyHolder is a libp2p host that holds the private-network key but is no
// member: it speaks the state protocols by hand.
func keyHolder(t *testing.T, gossipKey []byte) host.Host {
	t.Helper()
	psk, err := DerivePSK(gossipKey)
	if err != nil {
		t.Fatal(err)
	}
	h, err := libp2p.New(
		libp2p.NoListenAddrs,
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.PrivateNetwork(psk),
		libp2p.DisableRelay(),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func openTo(t *testing.T, from host.Host, to *syncNode, proto string) network.Stream {
	t.Helper()
	pid, err := peer.Decode(to.host.ID())
	if err != nil {
		t.Fatal(err)
	}
	addr, err := tcpMultiaddr(net.ParseIP(to.cfg.BindAddr), to.cfg.P2PPort)
	if err != nil {
		t.Fatal(err)
	}
	from.Peerstore().AddAddr(pid, addr, peerstore.TempAddrTTL)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := from.NewStream(ctx, pid, ProtocolStatePush)
	if proto == string(ProtocolStateSync) {
		st, err = from.NewStream(ctx, pid, ProtocolStateSync)
	}
	if err != nil {
		t.Fatal(err)
	}
	_ = st.SetDeadline(time.Now().Add(10 * time.Second))
	return st
}

// pushAs sends recs to n on the push protocol and waits until n is done.
func pushAs(t *testing.T, from host.Host, n *syncNode, recs []state.Record) {
	t.Helper()
	st := openTo(t, from, n, string(ProtocolStatePush))
	defer st.Close()
	w := bufio.NewWriter(st)
	if err := writeRecordFrames(w, recs); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = st.CloseWrite()
	_, _ = io.Copy(io.Discard, st)
}

// syncAs runs the responder side of anti-entropy against n by hand: it
// offers recs as the content of their buckets.
func syncAs(t *testing.T, from host.Host, n *syncNode, recs []state.Record) {
	t.Helper()
	st := openTo(t, from, n, string(ProtocolStateSync))
	defer st.Close()
	w := bufio.NewWriter(st)
	r := bufio.NewReader(st)
	var root [32]byte // no store has this root
	if err := writeFrame(w, root[:]); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := readFrame(r); err != nil {
		t.Fatalf("read digest: %v", err)
	}
	var buckets []int
	for _, rec := range recs {
		buckets = append(buckets, state.BucketOf(rec.Kind, rec.ID))
	}
	slices.Sort(buckets)
	if err := writeFrame(w, encodeBitmap(slices.Compact(buckets))); err != nil {
		t.Fatal(err)
	}
	if err := writeRecordFrames(w, recs); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := readRecordFrames(r, 1<<20, 1<<30, func([]state.Record) {}); err != nil {
		t.Fatalf("read records back: %v", err)
	}
}

func endpointRecord(t *testing.T, id, owner string, wall int64) state.Record {
	t.Helper()
	body, _ := json.Marshal(ownedBody{Node: owner})
	return state.Record{Kind: "endpoint", ID: id, Version: state.Version{WallNanos: wall, Node: owner}, Body: body}
}

func TestKeyHolderCannotForgeAnotherNodesRecords(t *testing.T) {
	key := newKey(t)
	a := startSyncNodeWith(t, "a", key, func(c *Cluster) SyncConfig {
		cfg := DefaultSyncConfig()
		cfg.AntiEntropyInterval = time.Hour
		cfg.Accept = acceptSigned(c)
		return cfg
	})
	b := startSyncNodeWith(t, "b", key, func(c *Cluster) SyncConfig {
		cfg := DefaultSyncConfig()
		cfg.AntiEntropyInterval = time.Hour
		cfg.Accept = acceptSigned(c)
		return cfg
	})
	joinAll(t, []*syncNode{a, b})
	mallory := keyHolder(t, key)
	now := time.Now().UnixNano()

	// Signed with mallory's own key, in b's name.
	forged := endpointRecord(t, "web.0.b", "b", now)
	malloryKey := mallory.Peerstore().PrivKey(mallory.ID())
	forged.Sig, _ = malloryKey.Sign(forged.SignedBytes())
	unsigned := endpointRecord(t, "web.1.b", "b", now)
	ghost := endpointRecord(t, "web.0.ghost", "ghost", now)
	ghost.Sig, _ = malloryKey.Sign(ghost.SignedBytes())
	// b's real signature, replayed under a newer version.
	genuine := endpointRecord(t, "web.2.b", "b", now)
	if genuine.Sig, _ = b.host.Sign(genuine.SignedBytes()); genuine.Sig == nil {
		t.Fatal("b cannot sign")
	}
	replayed := genuine
	replayed.ID, replayed.Version.WallNanos = "web.3.b", now+1
	invalidJob := state.Record{Kind: "job", ID: "evil", Version: state.Version{WallNanos: now, Node: "x"}, Body: []byte(`{"node":"b"}`)}
	validJob := state.Record{Kind: "job", ID: "fine", Version: state.Version{WallNanos: now, Node: "x"}, Body: []byte(`{}`)}

	pushAs(t, mallory, a, []state.Record{forged, unsigned, ghost, genuine, replayed, invalidJob, validJob})

	for _, rec := range []state.Record{genuine, validJob} {
		if _, ok := a.store.Get(rec.Kind, rec.ID); !ok {
			t.Fatalf("valid %s was not applied", rec.Key())
		}
	}
	for _, rec := range []state.Record{forged, unsigned, ghost, replayed, invalidJob} {
		if _, ok := a.store.Get(rec.Kind, rec.ID); ok {
			t.Errorf("%s was stored", rec.Key())
		}
	}
	stats := a.sync.Stats()
	if got := stats.RecordsBadSignature.Load(); got != 3 {
		t.Errorf("bad signatures counted %d, want 3 (forged, unsigned, replayed)", got)
	}
	if got := stats.RecordsUnknownSigner.Load(); got != 1 {
		t.Errorf("unknown signers counted %d, want 1", got)
	}
	if got := stats.RecordsInvalid.Load(); got != 1 {
		t.Errorf("invalid records counted %d, want 1", got)
	}
	// What a applied travels on; what it dropped does not.
	waitFor(t, "valid records forwarded to b", func() bool {
		_, ok := b.store.Get("job", "fine")
		return ok
	})
	if _, ok := b.store.Get("endpoint", "web.0.b"); ok {
		t.Fatal("a forwarded the forged record")
	}

	// Anti-entropy is checked the same way as pushes.
	forged2 := endpointRecord(t, "web.4.b", "b", now)
	forged2.Sig, _ = malloryKey.Sign(forged2.SignedBytes())
	validJob2 := state.Record{Kind: "job", ID: "fine2", Version: state.Version{WallNanos: now, Node: "x"}, Body: []byte(`{}`)}
	syncAs(t, mallory, a, []state.Record{forged2, validJob2})
	if _, ok := a.store.Get("job", "fine2"); !ok {
		t.Fatal("valid record offered by anti-entropy was not applied")
	}
	if _, ok := a.store.Get("endpoint", "web.4.b"); ok {
		t.Fatal("forged record offered by anti-entropy was stored")
	}
	if got := stats.RecordsBadSignature.Load(); got != 4 {
		t.Errorf("bad signatures counted %d after anti-entropy, want 4", got)
	}
	d := stats.Dropped()
	if d[DropBadSignature] != 4 || d[DropUnknownSigner] != 1 || d[DropInvalid] != 1 {
		t.Errorf("Dropped() = %v", d)
	}
}

func TestStreamsOverThePerPeerBoundAreRefused(t *testing.T) {
	key := newKey(t)
	a := startSyncNodeWith(t, "a", key, func(*Cluster) SyncConfig {
		cfg := DefaultSyncConfig()
		cfg.AntiEntropyInterval = time.Hour
		cfg.MaxStreamsPerPeer = 1
		return cfg
	})
	mallory := keyHolder(t, key)
	// The first stream stays open, half a frame header in.
	first := openTo(t, mallory, a, string(ProtocolStatePush))
	if _, err := first.Write([]byte{0, 0}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "first stream served", func() bool {
		a.sync.limits.mu.Lock()
		defer a.sync.limits.mu.Unlock()
		return a.sync.limits.total == 1
	})
	second := openTo(t, mallory, a, string(ProtocolStatePush))
	_, _ = second.Write([]byte{0, 0, 0, 0})
	if _, err := io.Copy(io.Discard, second); err == nil {
		t.Fatal("second stream from one peer was served to the end")
	}
	if got := a.sync.Stats().StreamsRefused.Load(); got != 1 {
		t.Fatalf("refused streams %d, want 1", got)
	}
	_ = first.Reset()
	waitFor(t, "slot released", func() bool {
		a.sync.limits.mu.Lock()
		defer a.sync.limits.mu.Unlock()
		return a.sync.limits.total == 0
	})
	pushAs(t, mallory, a, []state.Record{{Kind: "job", ID: "after", Version: state.Version{WallNanos: 1, Node: "x"}, Body: []byte(`{}`)}})
	if _, ok := a.store.Get("job", "after"); !ok {
		t.Fatal("a push after the slot was freed was not applied")
	}
}

func TestStreamRecordBoundStopsAStream(t *testing.T) {
	key := newKey(t)
	a := startSyncNodeWith(t, "a", key, func(*Cluster) SyncConfig {
		cfg := DefaultSyncConfig()
		cfg.AntiEntropyInterval = time.Hour
		cfg.MaxStreamRecords = 2
		return cfg
	})
	mallory := keyHolder(t, key)
	var recs []state.Record
	for _, id := range []string{"r1", "r2", "r3"} {
		recs = append(recs, state.Record{Kind: "job", ID: id, Version: state.Version{WallNanos: 1, Node: "x"}, Body: []byte(`{}`)})
	}
	pushAs(t, mallory, a, recs)
	if got := a.sync.Stats().Rejected.Load(); got != 1 {
		t.Fatalf("rejected %d pushes, want 1", got)
	}
	if _, ok := a.store.Get("job", "r1"); ok {
		t.Fatal("records of a frame over the bound were applied")
	}
}

func TestKeyRotationKeepsMembersTalking(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	aCfg, bCfg := testConfig(t, "a", k1), testConfig(t, "b", k1)
	a, b := startCluster(t, aCfg), startCluster(t, bCfg)
	if _, err := b.Join(context.Background(), []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(aCfg.GossipPort))}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two members", func() bool { return countStatus(a, StatusAlive) == 2 })

	if _, err := a.InstallKey(k2); err != nil {
		t.Fatalf("install: %v", err)
	}
	list, err := b.ListKeys()
	if err != nil {
		t.Fatal(err)
	}
	if list.Installed[KeyID(k1)] != 2 || list.Installed[KeyID(k2)] != 2 || list.Primary[KeyID(k1)] != 2 {
		t.Fatalf("after install: %+v", list)
	}
	if _, err := b.UseKey(k2); err != nil {
		t.Fatalf("use: %v", err)
	}
	for _, c := range []*Cluster{a, b} {
		if keys := c.Keys(); string(keys[0]) != string(k2) || len(keys) != 2 {
			t.Fatalf("%s: primary is not the new key", c.LocalName())
		}
	}
	if _, err := a.RemoveKey(k2); err == nil {
		t.Fatal("the primary key was removed")
	}
	if _, err := a.RemoveKey(k1); err != nil {
		t.Fatalf("remove: %v", err)
	}
	for _, c := range []*Cluster{a, b} {
		if keys := c.Keys(); len(keys) != 1 || string(keys[0]) != string(k2) {
			t.Fatalf("%s holds %d keys after remove", c.LocalName(), len(keys))
		}
	}
	// The saved ring wins over the stale configured key on restart.
	raw, err := os.ReadFile(filepath.Join(bCfg.DataDir, keyringFile))
	if err != nil {
		t.Fatal(err)
	}
	var saved []string
	if err := json.Unmarshal(raw, &saved); err != nil || len(saved) != 1 || saved[0] != base64.StdEncoding.EncodeToString(k2) {
		t.Fatalf("saved keyring %s", raw)
	}
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	bCfg.GossipPort = freePort(t, "127.0.0.1")
	b2 := startCluster(t, bCfg)
	if keys := b2.Keys(); len(keys) != 1 || string(keys[0]) != string(k2) {
		t.Fatal("restarted node did not load the saved keyring")
	}
	if _, err := b2.Join(context.Background(), []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(aCfg.GossipPort))}); err != nil {
		t.Fatalf("restarted node cannot rejoin: %v", err)
	}
	// A node that only has the removed key cannot join.
	stranger := startCluster(t, testConfig(t, "s", k1))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := stranger.Join(ctx, []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(aCfg.GossipPort))}); err == nil {
		t.Fatal("a node with the removed key joined")
	}
}

func TestKeyOperationsWithoutEncryptionFail(t *testing.T) {
	c := startCluster(t, testConfig(t, "a", nil))
	if _, err := c.InstallKey(newKey(t)); !errors.Is(err, ErrNoKeyring) {
		t.Fatalf("install without a keyring: %v", err)
	}
	if c.Keys() != nil {
		t.Fatal("keys without encryption")
	}
}

func TestNetworkKeyOutlivesTheGossipKey(t *testing.T) {
	dir := t.TempDir()
	k1, k2 := newKey(t), newKey(t)
	first, err := LoadNetworkKey(dir, k1, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	want, _ := DerivePSK(k1)
	if string(first) != string(want) {
		t.Fatal("first start does not derive the network key from the gossip key")
	}
	again, err := LoadNetworkKey(dir, k2, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(first) {
		t.Fatal("the network key changed with the gossip key")
	}
	if p, err := LoadNetworkKey(t.TempDir(), nil, quietLogger()); p != nil || err != nil {
		t.Fatal("dev mode has a network key")
	}
	if err := os.WriteFile(filepath.Join(dir, networkKeyFile), []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadNetworkKey(dir, k1, quietLogger()); err == nil {
		t.Fatal("a damaged network key file was accepted")
	}
}

func TestSignatureVerifiesOnlyAgainstTheSigner(t *testing.T) {
	key := newKey(t)
	aCfg, bCfg := testConfig(t, "a", key), testConfig(t, "b", key)
	a, b := startHost(t, aCfg), startHost(t, bCfg)
	rec := state.Record{Kind: "usage", ID: "web.a", Version: state.Version{WallNanos: 1, Node: "a"}, Body: []byte(`{}`)}
	var err error
	if rec.Sig, err = a.Sign(rec.SignedBytes()); err != nil {
		t.Fatal(err)
	}
	if err := VerifyRecordFrom(a.ID(), rec); err != nil {
		t.Fatalf("own signature: %v", err)
	}
	if err := VerifyRecordFrom(b.ID(), rec); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("other node's id: %v", err)
	}
	if err := VerifyRecordFrom("not-a-peer-id", rec); !errors.Is(err, ErrUnknownSigner) {
		t.Fatalf("bad peer id: %v", err)
	}
}

func FuzzParseKeyring(f *testing.F) {
	f.Add([]byte(`["MDEyMzQ1Njc4OWFiY2RlZg=="]`))
	f.Add([]byte(`["MDEyMzQ1Njc4OWFiY2RlZg==","ZmVkY2JhOTg3NjU0MzIxMA=="]`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"a":1}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		keys, err := parseKeyring(raw)
		if err != nil {
			return
		}
		if len(keys) == 0 {
			t.Fatal("an empty keyring parsed")
		}
		for _, k := range keys {
			switch len(k) {
			case 16, 24, 32:
			default:
				t.Fatalf("a %d-byte key parsed", len(k))
			}
		}
	})
}

package gossip

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/state"
)

type syncNode struct {
	cfg     Config
	cluster *Cluster
	host    *Host
	store   *state.Store
	sync    *StateSync
	cancel  context.CancelFunc
	done    chan struct{}
}

func startSyncNode(t *testing.T, name string, key []byte, aeInterval time.Duration) *syncNode {
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
	scfg := DefaultSyncConfig()
	scfg.AntiEntropyInterval = aeInterval
	n := &syncNode{cfg: cfg, cluster: c, host: h, store: st, done: make(chan struct{})}
	n.sync = NewStateSync(scfg, h, c, st, nil, quietLogger())
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() { n.sync.Run(ctx); close(n.done) }()
	t.Cleanup(n.stop)
	return n
}

func (n *syncNode) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	<-n.done
	n.cancel = nil
	_ = n.cluster.Shutdown()
	_ = n.store.Close()
}

func joinAll(t *testing.T, nodes []*syncNode) {
	t.Helper()
	seed := net.JoinHostPort("127.0.0.1", fmt.Sprint(nodes[0].cfg.GossipPort))
	for _, n := range nodes[1:] {
		if _, err := n.cluster.Join(context.Background(), []string{seed}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		waitFor(t, "convergence", func() bool { return countStatus(n.cluster, StatusAlive) == len(nodes) })
	}
}

func TestPushedWriteReachesEveryPeer(t *testing.T) {
	key := newKey(t)
	// Anti-entropy slow enough that only the push can deliver in time.
	var nodes []*syncNode
	for _, name := range []string{"a", "b", "c", "d", "e"} {
		nodes = append(nodes, startSyncNode(t, name, key, time.Hour))
	}
	joinAll(t, nodes)
	rec, err := nodes[0].store.Write("job", "web", []byte(`{"id":"web"}`), false)
	if err != nil {
		t.Fatal(err)
	}
	nodes[0].sync.Publish([]state.Record{rec})
	for _, n := range nodes {
		waitFor(t, "push reaches "+n.cfg.NodeName, func() bool {
			got, ok := n.store.Get("job", "web")
			return ok && got.Version == rec.Version
		})
	}
}

func TestAntiEntropyCatchesUpAMissedNode(t *testing.T) {
	key := newKey(t)
	a := startSyncNode(t, "a", key, 200*time.Millisecond)
	b := startSyncNode(t, "b", key, 200*time.Millisecond)
	// Writes made before b knows a are never pushed to b.
	var last state.Record
	for i := 0; i < 300; i++ {
		r, err := a.store.Write("job", fmt.Sprintf("job-%d", i), []byte(`{"pad":"`+strings.Repeat("x", 100)+`"}`), false)
		if err != nil {
			t.Fatal(err)
		}
		last = r
	}
	if _, err := a.store.Delete("job", "job-7"); err != nil {
		t.Fatal(err)
	}
	joinAll(t, []*syncNode{a, b})
	waitFor(t, "b catches up", func() bool { return a.store.Digest().Root == b.store.Digest().Root })
	if got, ok := b.store.Get("job", last.ID); !ok || got.Version != last.Version {
		t.Fatalf("b lacks %s", last.ID)
	}
	if _, ok := b.store.Get("job", "job-7"); ok {
		t.Fatal("b still has a deleted job")
	}
	// Once in sync, a round costs a root and a one-byte answer.
	before := a.sync.Stats().SyncInSync.Load() + b.sync.Stats().SyncInSync.Load()
	waitFor(t, "an in-sync round", func() bool {
		return a.sync.Stats().SyncInSync.Load()+b.sync.Stats().SyncInSync.Load() > before
	})
}

func TestMalformedSyncMessagesAreRejectedAndCounted(t *testing.T) {
	key := newKey(t)
	a := startSyncNode(t, "a", key, time.Hour)
	b := startSyncNode(t, "b", key, time.Hour)
	joinAll(t, []*syncNode{a, b})
	target := Member{Name: "a", Addr: net.ParseIP("127.0.0.1"), Meta: Meta{PeerID: a.host.ID(), P2PPort: a.cfg.P2PPort}}
	for _, payload := range [][]byte{
		{0xff, 0xff, 0xff, 0xff},        // frame length over the limit
		{0, 0, 0, 3, 'R', 0x05, 0x01},   // record count that does not fit
		{0, 0, 0, 2, 'X', 0},            // wrong tag
		{0, 0, 0, 9, 'R', 1, 1, 'j', 1}, // truncated frame
	} {
		for _, proto := range []string{string(ProtocolStatePush), string(ProtocolStateSync)} {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			st, err := b.host.Open(ctx, target, ProtocolStatePush)
			if proto == string(ProtocolStateSync) {
				st, err = b.host.Open(ctx, target, ProtocolStateSync)
			}
			if err != nil {
				cancel()
				t.Fatal(err)
			}
			_, _ = st.Write(payload)
			_ = st.CloseWrite()
			buf := make([]byte, 1)
			_, _ = st.Read(buf)
			st.Close()
			cancel()
		}
	}
	waitFor(t, "rejections counted", func() bool { return a.sync.Stats().Rejected.Load() >= 8 })
	// a still works.
	rec, _ := b.store.Write("job", "ok", []byte("{}"), false)
	b.sync.Publish([]state.Record{rec})
	waitFor(t, "a still accepts good pushes", func() bool { _, ok := a.store.Get("job", "ok"); return ok })
}

func TestFanoutGrowsLogarithmically(t *testing.T) {
	for _, tc := range []struct{ n, want int }{{0, 0}, {1, 1}, {2, 2}, {5, 4}, {100, 7}, {500, 9}} {
		if got := Fanout(tc.n, 3); got != tc.want {
			t.Errorf("Fanout(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

func FuzzReadRecordFrames(f *testing.F) {
	var good bytes.Buffer
	_ = writeRecordFrames(&good, []state.Record{{Kind: "job", ID: "a", Version: state.Version{WallNanos: 1, Node: "n"}, Body: []byte("{}")}})
	f.Add(good.Bytes())
	f.Add([]byte{0, 0, 0, 0})
	f.Add(binary.BigEndian.AppendUint32(nil, MaxFrame+1))
	f.Fuzz(func(t *testing.T, b []byte) {
		n := 0
		err := readRecordFrames(bytes.NewReader(b), 1000, 1<<20, func(recs []state.Record) {
			for _, r := range recs {
				if r.Validate() != nil {
					t.Fatalf("accepted an invalid record %+v", r)
				}
			}
			n += len(recs)
		})
		if n > 1000 {
			t.Fatalf("handed on %d records, bound 1000 (err %v)", n, err)
		}
		_, _ = decodeBitmap(b)
	})
}

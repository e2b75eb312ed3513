// Package sim starts many Shoal nodes in one process on loopback — real
// serf, real libp2p, real state stores and state sync, no containers — to
// measure how state spreads and what it costs as the cluster grows. It is a
// measurement tool; production code never imports it.
package sim

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	gometrics "github.com/armon/go-metrics"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/placement"
	"github.com/shoalmesh/shoal/state"
)

// Config sizes a simulation.
type Config struct {
	Nodes int
	// Gossip tunes every node's membership (ports and names are set here).
	Gossip gossip.Config
	Sync   gossip.SyncConfig
	// Durable keeps stores in bbolt files under a temporary directory
	// (fsync on every write) instead of memory.
	Durable bool
	Log     *slog.Logger
	// Progress, if set, receives start-up progress lines.
	Progress func(string)
	// MemoryNetwork carries libp2p streams over libp2p's in-memory mock
	// network instead of TCP + Noise + PSK. The libp2p host, streams and
	// Shoal's protocols are the same; what goes is one socket pair and one
	// handshake per connection, which at a few hundred nodes in one
	// process exhaust the open-file limit and the CPU of a small machine.
	// Serf still runs over real UDP and TCP on loopback.
	MemoryNetwork bool
}

// Node is one simulated agent.
type Node struct {
	Name    string
	Cluster *gossip.Cluster
	Host    *gossip.Host
	Store   *state.Store
	Sync    *gossip.StateSync
}

// Sim is a running set of nodes.
type Sim struct {
	cfg    Config
	Nodes  []*Node
	dir    string
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mem    mocknet.Mocknet
}

// Start launches cfg.Nodes nodes and joins them into one cluster.
func Start(ctx context.Context, cfg Config) (*Sim, error) {
	if cfg.Nodes < 1 {
		return nil, fmt.Errorf("nodes: need at least 1, got %d", cfg.Nodes)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	dir, err := os.MkdirTemp("", "shoal-sim-")
	if err != nil {
		return nil, err
	}
	installTrafficSink()
	runCtx, cancel := context.WithCancel(context.Background())
	s := &Sim{cfg: cfg, dir: dir, cancel: cancel}
	if cfg.MemoryNetwork {
		s.mem = mocknet.New()
	}
	for i := 0; i < cfg.Nodes; i++ {
		n, err := s.startNode(i)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("start node %d: %w", i, err)
		}
		s.Nodes = append(s.Nodes, n)
		if cfg.Progress != nil && (i+1)%50 == 0 {
			cfg.Progress(fmt.Sprintf("started %d/%d", i+1, cfg.Nodes))
		}
	}
	if s.mem != nil {
		if err := s.mem.LinkAll(); err != nil {
			s.Close()
			return nil, fmt.Errorf("link in-memory network: %w", err)
		}
	}
	for _, n := range s.Nodes {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); n.Sync.Run(runCtx) }()
	}
	// Each node joins through up to three random nodes already in, so no
	// seed carries every join's push-pull.
	for i, n := range s.Nodes[1:] {
		if cfg.Progress != nil && (i+2)%50 == 0 {
			cfg.Progress(fmt.Sprintf("joined %d/%d", i+2, len(s.Nodes)))
		}
		var seeds []string
		for _, k := range rand.Perm(i + 1)[:min(3, i+1)] {
			seeds = append(seeds, s.gossipAddr(k))
		}
		jctx, jcancel := context.WithTimeout(ctx, 2*time.Minute)
		_, err := n.Cluster.Join(jctx, seeds)
		jcancel()
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("join node %s: %w", n.Name, err)
		}
	}
	return s, nil
}

func (s *Sim) gossipAddr(i int) string {
	return net.JoinHostPort("127.0.0.1", fmt.Sprint(s.Nodes[i].Cluster.Port()))
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func (s *Sim) startNode(i int) (*Node, error) {
	cfg := s.cfg.Gossip
	cfg.NodeName = fmt.Sprintf("sim-%04d", i)
	cfg.BindAddr = "127.0.0.1"
	cfg.DataDir = filepath.Join(s.dir, cfg.NodeName)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	var err error
	if cfg.GossipPort, err = freePort(); err != nil {
		return nil, err
	}
	if cfg.P2PPort, err = freePort(); err != nil {
		return nil, err
	}
	log := s.cfg.Log.With("node", cfg.NodeName)
	var h *gossip.Host
	if s.mem != nil {
		key, err := gossip.LoadIdentity(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		addr, err := ma.NewMultiaddr(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", cfg.P2PPort))
		if err != nil {
			return nil, err
		}
		lh, err := s.mem.AddPeer(key, addr)
		if err != nil {
			return nil, fmt.Errorf("add in-memory peer: %w", err)
		}
		h = gossip.NewHostFrom(lh, log)
	} else {
		h, err = gossip.NewHost(cfg, log)
		if err != nil {
			return nil, err
		}
	}
	// Every simulated node offers the same capacity, as a fleet of equal
	// machines would.
	meta := gossip.Meta{PeerID: h.ID(), P2PPort: cfg.P2PPort, Health: gossip.HealthOK, Capacity: gossip.Capacity{CPUMillis: 16000, MemoryMB: 65536}}
	c, err := gossip.NewCluster(cfg, meta, log)
	if err != nil {
		h.Close()
		return nil, err
	}
	opts := state.Options{Node: cfg.NodeName}
	var st *state.Store
	if s.cfg.Durable {
		st, err = state.Open(filepath.Join(cfg.DataDir, "state.db"), opts)
	} else {
		st, err = state.OpenMemory(opts)
	}
	if err != nil {
		c.Shutdown()
		h.Close()
		return nil, err
	}
	return &Node{
		Name: cfg.NodeName, Cluster: c, Host: h, Store: st,
		Sync: gossip.NewStateSync(s.cfg.Sync, h, c, st, nil, log),
	}, nil
}

// WaitConverged waits until every node sees every node alive.
func (s *Sim) WaitConverged(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	for {
		done := true
		for _, n := range s.Nodes {
			alive := 0
			for _, m := range n.Cluster.Members() {
				if m.Status == gossip.StatusAlive {
					alive++
				}
			}
			if alive != len(s.Nodes) {
				done = false
				break
			}
		}
		if done {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("membership did not converge: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Write writes a job-sized record on node i and pushes it, as the API does.
func (s *Sim) Write(i int, id string, body []byte) (state.Record, error) {
	rec, err := s.Nodes[i].Store.Write("job", id, body, false)
	if err != nil {
		return rec, err
	}
	s.Nodes[i].Sync.Publish([]state.Record{rec})
	return rec, nil
}

// WaitEverywhere waits until every node holds rec's version and returns
// how long it took.
func (s *Sim) WaitEverywhere(ctx context.Context, rec state.Record, start time.Time) (time.Duration, error) {
	pending := make([]*Node, len(s.Nodes))
	copy(pending, s.Nodes)
	for {
		next := pending[:0]
		for _, n := range pending {
			got, ok := n.Store.Get(rec.Kind, rec.ID)
			if !ok || got.Version.Less(rec.Version) {
				next = append(next, n)
			}
		}
		pending = next
		if len(pending) == 0 {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%d nodes still lack %s: %w", len(pending), rec.ID, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// Traffic is the bytes sent by all nodes so far.
type Traffic struct {
	StateSync uint64 // libp2p state sync payload
	Gossip    uint64 // memberlist udp + tcp
}

// Traffic sums what every node has sent.
func (s *Sim) Traffic() Traffic {
	var t Traffic
	for _, n := range s.Nodes {
		t.StateSync += n.Sync.Stats().BytesSent.Load()
	}
	t.Gossip = gossipBytes.Load()
	return t
}

// Close stops every node and removes the temporary directory.
func (s *Sim) Close() {
	s.cancel()
	s.wg.Wait()
	var wg sync.WaitGroup
	for _, n := range s.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = n.Cluster.Shutdown()
			_ = n.Host.Close()
			_ = n.Store.Close()
		}()
	}
	wg.Wait()
	if s.mem != nil {
		_ = s.mem.Close()
	}
	os.RemoveAll(s.dir)
}

// Percentile returns the p-th percentile (0..100) of ds.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	idx := int(float64(len(s)-1) * p / 100)
	return s[idx]
}

// gossipBytes counts memberlist's udp and tcp bytes sent, process-wide.
var (
	gossipBytes atomic.Uint64
	sinkOnce    sync.Once
)

func installTrafficSink() {
	sinkOnce.Do(func() {
		cfg := gometrics.DefaultConfig("")
		cfg.EnableHostname = false
		cfg.EnableRuntimeMetrics = false
		cfg.EnableServiceLabel = false
		_, _ = gometrics.NewGlobal(cfg, trafficSink{})
	})
}

// trafficSink is a go-metrics sink that keeps only memberlist's sent-bytes
// counters.
type trafficSink struct{}

func (trafficSink) SetGauge([]string, float32)                               {}
func (trafficSink) SetGaugeWithLabels([]string, float32, []gometrics.Label)  {}
func (trafficSink) EmitKey([]string, float32)                                {}
func (trafficSink) AddSample([]string, float32)                              {}
func (trafficSink) AddSampleWithLabels([]string, float32, []gometrics.Label) {}
func (t trafficSink) IncrCounter(key []string, val float32)                  { t.count(key, val) }
func (t trafficSink) IncrCounterWithLabels(key []string, val float32, _ []gometrics.Label) {
	t.count(key, val)
}

func (trafficSink) count(key []string, val float32) {
	if len(key) >= 3 && key[len(key)-3] == "memberlist" && key[len(key)-1] == "sent" {
		gossipBytes.Add(uint64(val))
	}
}

// View returns node i's membership as placement sees it: alive members
// with the capacity and labels from their tags.
func (s *Sim) View(i int) []placement.Node {
	var out []placement.Node
	for _, m := range s.Nodes[i].Cluster.Members() {
		if m.Status != gossip.StatusAlive {
			continue
		}
		out = append(out, placement.Node{Name: m.Name, CPUMillis: m.Meta.Capacity.CPUMillis, MemoryMB: m.Meta.Capacity.MemoryMB, Labels: m.Meta.Labels})
	}
	return out
}

// Crash stops node i without a leave, as a machine failure would.
func (s *Sim) Crash(i int) {
	_ = s.Nodes[i].Cluster.Shutdown()
}

// Command shoal-sim runs many Shoal nodes in one process on loopback and
// reports state propagation time and traffic per node. See sim.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/placement"
	"github.com/shoalmesh/shoal/sim"
)

func main() {
	var (
		nodes   = flag.Int("nodes", 100, "simulated nodes")
		writes  = flag.Int("writes", 50, "sequential writes timed to reach every node")
		rate    = flag.Float64("rate", 10, "writes per second during the load phase")
		idle    = flag.Duration("idle", 10*time.Second, "measurement window at rest")
		load    = flag.Duration("load", 10*time.Second, "measurement window under write load")
		durable = flag.Bool("durable", false, "bbolt stores with fsync instead of memory")
		ae      = flag.Duration("anti-entropy-interval", gossip.DefaultSyncConfig().AntiEntropyInterval, "anti-entropy interval")
		probe   = flag.Duration("probe-interval", gossip.DefaultConfig().ProbeInterval, "membership probe interval (raise for large simulations on few cores)")
		gint    = flag.Duration("gossip-interval", gossip.DefaultConfig().GossipInterval, "membership gossip interval")
		memnet  = flag.Bool("memory-network", false, "libp2p over its in-memory mock network instead of TCP (see sim.Config.MemoryNetwork)")
		connLow = flag.Int("p2p-conns", 64, "libp2p connections kept per node (all nodes share this process's open-file limit)")
	)
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	// Every node of the simulation lives in this process: allow the fds of
	// all their sockets (best effort; needs root past the hard limit).
	lim := syscall.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Fprintf(os.Stderr, "shoal-sim: raise open-file limit: %v (large runs may fail)\n", err)
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "shoal-sim: %v\n", err)
			os.Exit(1)
		}
		_ = pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	g := gossip.DefaultConfig()
	g.ProbeInterval, g.GossipInterval = *probe, *gint
	g.ProbeTimeout = min(g.ProbeTimeout, *probe)
	g.P2PConnLow, g.P2PConnHigh = *connLow, 2**connLow
	if err := run(*nodes, *writes, *rate, *idle, *load, *durable, *ae, g, *memnet); err != nil {
		fmt.Fprintf(os.Stderr, "shoal-sim: %v\n", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func run(nodes, writes int, rate float64, idle, load time.Duration, durable bool, ae time.Duration, g gossip.Config, memnet bool) error {
	if nodes < 2 || writes < 1 || rate <= 0 {
		return fmt.Errorf("need --nodes >= 2, --writes >= 1, --rate > 0")
	}
	ctx := context.Background()
	cfg := sim.Config{Nodes: nodes, Gossip: g, Sync: gossip.DefaultSyncConfig(), Durable: durable}
	if os.Getenv("SHOAL_SIM_DEBUG") != "" {
		cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	cfg.Sync.AntiEntropyInterval = ae
	cfg.MemoryNetwork = memnet
	cfg.Progress = func(msg string) { fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), msg) }
	// Every node's data dir gets a real p2p identity; the key enables
	// gossip encryption and the libp2p private network as in production.
	cfg.Gossip.GossipKey = []byte("shoal-sim-key-16")
	cfg.Gossip.DataDir = "unused"

	start := time.Now()
	s, err := sim.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer s.Close()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	conv, err := s.WaitConverged(cctx)
	cancel()
	if err != nil {
		return err
	}
	fmt.Printf("nodes=%d started+joined in %s, membership converged %s later\n", nodes, time.Since(start).Round(time.Millisecond)-conv.Round(time.Millisecond), conv.Round(time.Millisecond))
	body := []byte(`{"id":"job","task":{"driver":"containerd","image":"docker.io/library/hello:v1","resources":{"cpu_millis":100,"memory_mb":64}},"pad":"` + strings.Repeat("x", 300) + `"}`)

	// Let join traffic and the first anti-entropy rounds settle.
	time.Sleep(5 * time.Second)
	t0 := s.Traffic()
	time.Sleep(idle)
	t1 := s.Traffic()
	perNode := func(a, b sim.Traffic, d time.Duration) (float64, float64) {
		sec := d.Seconds() * float64(nodes)
		return float64(b.StateSync-a.StateSync) / sec, float64(b.Gossip-a.Gossip) / sec
	}
	ss, gg := perNode(t0, t1, idle)
	fmt.Printf("at rest: state sync %.0f B/node/s (anti-entropy, in sync), gossip %.0f B/node/s\n", ss, gg)

	var lat []time.Duration
	for i := 0; i < writes; i++ {
		from := rand.IntN(nodes)
		begin := time.Now()
		rec, err := s.Write(from, fmt.Sprintf("job-%d", i), body)
		if err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		d, err := s.WaitEverywhere(wctx, rec, begin)
		cancel()
		if err != nil {
			return err
		}
		lat = append(lat, d)
		if d > time.Second {
			fmt.Printf("slow write %d from node %d: %s\n", i, from, d)
		}
	}
	fmt.Printf("propagation to all %d nodes over %d writes: p50 %s p99 %s max %s\n", nodes, writes,
		sim.Percentile(lat, 50).Round(time.Microsecond*100), sim.Percentile(lat, 99).Round(time.Microsecond*100), sim.Percentile(lat, 100).Round(time.Microsecond*100))

	t2 := s.Traffic()
	interval := time.Duration(float64(time.Second) / rate)
	tick := time.NewTicker(interval)
	end := time.Now().Add(load)
	n := 0
	for time.Now().Before(end) {
		<-tick.C
		if _, err := s.Write(rand.IntN(nodes), fmt.Sprintf("load-%d", n%100), body); err != nil {
			return err
		}
		n++
	}
	tick.Stop()
	t3 := s.Traffic()
	var rounds, insync, fail, pushes, pushFail uint64
	for _, n := range s.Nodes {
		st := n.Sync.Stats()
		rounds += st.SyncRounds.Load()
		insync += st.SyncInSync.Load()
		fail += st.SyncFail.Load()
		pushes += st.PushesSent.Load()
		pushFail += st.PushFailures.Load()
	}
	fmt.Printf("totals: anti-entropy rounds %d (in sync %d, failed %d), pushes %d (failed %d)\n", rounds, insync, fail, pushes, pushFail)
	ss, gg = perNode(t2, t3, load)
	fmt.Printf("under %.0f writes/s (%d B records): state sync %.0f B/node/s, gossip %.0f B/node/s\n", rate, len(body), ss, gg)
	measurePlacement(s, nodes)
	return nil
}

// measurePlacement crashes one node and compares the assignments computed
// from a survivor's real membership view before and after, against the
// ideal movement (replicas/N). Both views are taken when they are exact
// (all nodes alive; then all but the crashed one), so that membership
// flapping under a starved simulator does not count as movement.
func measurePlacement(s *sim.Sim, nodes int) {
	const replicasPerJob = 10
	// About 100 replicas per node, as in the placement benchmarks.
	jobs := make([]placement.Job, 10*nodes)
	for i := range jobs {
		jobs[i] = placement.Job{ID: fmt.Sprintf("job-%04d", i), Replicas: replicasPerJob, CPUMillis: 100, MemoryMB: 128}
	}
	const observer = 0
	victim := nodes - 1
	victimName := s.Nodes[victim].Name
	waitView := func(want int, what string) ([]placement.Node, bool) {
		deadline := time.Now().Add(3 * time.Minute)
		for time.Now().Before(deadline) {
			v := s.View(observer)
			has := false
			for _, n := range v {
				has = has || n.Name == victimName
			}
			if len(v) == want && (has == (want == nodes)) {
				return v, true
			}
			time.Sleep(50 * time.Millisecond)
		}
		fmt.Printf("placement: observer never saw %s\n", what)
		return nil, false
	}
	before, ok := waitView(nodes, "all nodes alive")
	if !ok {
		return
	}
	a1 := placement.Assign(before, jobs, placement.Options{})
	held := len(a1.ByNode()[victimName])
	s.Crash(victim)
	start := time.Now()
	after, ok := waitView(nodes-1, "exactly the crashed node gone")
	if !ok {
		return
	}
	detected := time.Since(start)
	a2 := placement.Assign(after, jobs, placement.Options{})
	moved := placement.Movement(a1, a2)
	ideal := float64(len(jobs)*replicasPerJob) / float64(nodes)
	fmt.Printf("placement: %d replicas over %d nodes; crash of %s seen failed after %s; moved %d (it held %d), %.2fx the ideal %.0f\n",
		len(jobs)*replicasPerJob, nodes, victimName, detected.Round(time.Millisecond), moved, held, float64(moved)/ideal, ideal)
}

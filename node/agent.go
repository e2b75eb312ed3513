package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/runtime"
	"github.com/shoalmesh/shoal/state"
)

// Agent is one Shoal node.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	cluster *gossip.Cluster
	host    *gossip.Host
	metrics *metrics
	store   *state.Store
	sync    *gossip.StateSync
	ln      net.Listener
	server  *http.Server

	// records is the typed face of store (decoders, write and publish).
	records records

	// jobsMu serialises API writes of jobs (compare-and-set).
	jobsMu sync.Mutex
	// jobsChanged is signalled (coalesced) when jobs change locally or
	// from a peer.
	jobsChanged chan struct{}
	// endpointsChanged is signalled when a peer's endpoint records change.
	endpointsChanged chan struct{}
	// healthChanged is signalled when a local replica's health flips.
	healthChanged chan struct{}

	// tasks routes to the exec and containerd drivers; containerd is
	// also the image store.
	tasks      *runtime.Router
	containerd *runtime.Containerd
	reconciler *reconciler
	scaler     *autoscaler
	events     *eventLog
	// net is the overlay; nil when it is disabled.
	net *overlayNet
	// lb programs services; nil with --lb off.
	lb *serviceLB
	// joined is closed once the first join attempt ended.
	joined     chan struct{}
	joinedOnce sync.Once
	// synced is set once the store has caught up with a peer, or there
	// is no peer to catch up with (no --join).
	synced atomic.Bool
}

// New validates cfg, starts the p2p host, membership and the API listener.
// Nothing is joined until Run. On an error, whatever was started is closed
// again, in reverse order.
func New(cfg Config, log *slog.Logger) (_ *Agent, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Gossip.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir %s: %w", cfg.Gossip.DataDir, err)
	}
	a := &Agent{cfg: cfg, log: log, events: newEventLog(cfg.Gossip.NodeName), joined: make(chan struct{}), jobsChanged: make(chan struct{}, 1), endpointsChanged: make(chan struct{}, 1), healthChanged: make(chan struct{}, 1)}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	cpu, mem, err := machineCapacity()
	if err != nil {
		return nil, err
	}
	if cfg.CPUMillis > 0 {
		cpu = cfg.CPUMillis
	}
	if cfg.MemoryMB > 0 {
		mem = cfg.MemoryMB
	}

	a.store, err = state.Open(filepath.Join(cfg.Gossip.DataDir, "state.db"), state.Options{
		Node:            cfg.Gossip.NodeName,
		TombstoneExpiry: cfg.TombstoneTTL,
	})
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { a.store.Close() })
	a.host, err = gossip.NewHost(cfg.Gossip, log.With("component", "p2p"))
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { a.host.Close() })
	if cfg.OverlayEnabled {
		underlay, perr := netip.ParseAddr(cfg.Gossip.BindAddr)
		if perr != nil || underlay.IsUnspecified() {
			return nil, fmt.Errorf("overlay: --bind must be this node's address on the network peers reach it by (VXLAN packets leave from it), not %q", cfg.Gossip.BindAddr)
		}
		ocfg := cfg.Overlay
		ocfg.StateDir = filepath.Join(cfg.Gossip.DataDir, "overlay")
		if a.net, err = newOverlayNet(ocfg, cfg.Gossip.NodeName, underlay, cfg.OverlaySubnet, log.With("component", "overlay")); err != nil {
			return nil, fmt.Errorf("%w (a machine without VXLAN or nftables can run with --overlay=false: replicas then have loopback only)", err)
		}
		undo = append(undo, func() { a.net.mgr.Close() })
	}
	meta := gossip.Meta{
		PeerID:   a.host.ID(),
		P2PPort:  cfg.Gossip.P2PPort,
		Capacity: gossip.Capacity{CPUMillis: cpu, MemoryMB: mem},
		Health:   gossip.HealthOK,
		Labels:   cfg.Labels,
	}
	if a.net != nil {
		meta.Overlay = a.net.advert()
	}
	a.cluster, err = gossip.NewCluster(cfg.Gossip, meta, log)
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { a.cluster.Shutdown() })
	// Records from peers are checked like API input (peerrecords.go).
	syncCfg := cfg.Sync
	syncCfg.Accept = peerCheck{verify: a.cluster.VerifyRecord, keys: a.cluster.Keys}.accept
	a.sync = gossip.NewStateSync(syncCfg, a.host, a.cluster, a.store, a.onPeerRecords, log.With("component", "state-sync"))
	a.records = records{store: a.store, pub: a.sync, sign: a.host.Sign}
	if err := a.records.signUnsigned(cfg.Gossip.NodeName); err != nil {
		return nil, err
	}
	// A host without a cgroup controller a driver needs runs without that
	// driver rather than not at all: its replicas fail with the reason,
	// which the log, the events and `shoal nodes` show.
	disabled := map[string]string{}
	execDriver, err := runtime.NewExec(runtime.ExecConfig{
		StateDir:  filepath.Join(cfg.Gossip.DataDir, "tasks"),
		Namespace: cfg.ContainerdNamespace,
		TaskUIDs:  cfg.TaskUIDs,
		Log:       log.With("component", "exec"),
	})
	switch {
	case errors.Is(err, runtime.ErrCgroupsUnavailable):
		disabled[runtime.DriverExec], execDriver = err.Error(), nil
	case err != nil:
		return nil, fmt.Errorf("start exec driver: %w", err)
	default:
		undo = append(undo, func() { execDriver.Close() })
	}
	a.containerd, err = runtime.NewContainerd(runtime.ContainerdConfig{
		Address:     cfg.Containerd,
		Namespace:   cfg.ContainerdNamespace,
		StateDir:    filepath.Join(cfg.Gossip.DataDir, "containers"),
		PullTimeout: cfg.PullTimeout,
		Log:         log.With("component", "containerd"),
		Notify: func(kind, task, msg string) {
			job, replica := splitTaskID(task)
			a.events.add(kind, job, replica, msg)
		},
	})
	switch {
	case errors.Is(err, runtime.ErrCgroupsUnavailable):
		disabled[runtime.DriverContainerd], a.containerd = err.Error(), nil
	case err != nil:
		return nil, fmt.Errorf("start containerd driver: %w", err)
	default:
		undo = append(undo, func() { a.containerd.Close() })
	}
	a.tasks = runtime.NewRouter(map[string]runtime.Driver{runtime.DriverExec: execDriver, runtime.DriverContainerd: a.containerd})
	for name, reason := range disabled {
		a.tasks.Disable(name, reason)
		log.Error("driver disabled on this node", "driver", name, "reason", reason)
		a.events.add("driver-disabled", "", -1, name+": "+reason)
	}
	if len(disabled) > 0 {
		names := slices.Sorted(maps.Keys(disabled))
		if err := a.cluster.UpdateMeta(func(m *gossip.Meta) { m.Disabled = names }); err != nil {
			return nil, fmt.Errorf("announce disabled drivers: %w", err)
		}
	}
	a.host.Handle(protocolLogs, a.serveLogs)
	a.metrics = newMetrics(a.cluster, a.sync, a.store)
	deps := reconcileDeps{
		self: cfg.Gossip.NodeName, cluster: a.cluster, records: a.records, runner: a.tasks,
		files: &taskFiles{
			runDir: filepath.Join(runtime.RunDir, cfg.ContainerdNamespace), dataDir: cfg.Gossip.DataDir,
			open: a.openStoredData, log: log.With("component", "reconcile"),
		},
		events: a.events, metrics: a.metrics, log: log.With("component", "reconcile"),
		ready: a.waitJoined, synced: a.synced.Load,
		jobsChanged: a.jobsChanged, endpointsChanged: a.endpointsChanged, healthChanged: a.healthChanged,
		servicesChanged: a.servicesChanged, pullTimeout: cfg.PullTimeout,
	}
	if a.net != nil {
		deps.net = a.net
	}
	a.reconciler = newReconciler(deps, cfg.Reconcile)
	a.scaler = &autoscaler{
		self: cfg.Gossip.NodeName, cluster: a.cluster, records: a.records, events: a.events, log: log.With("component", "autoscaler"),
		ready: a.isSynced, fresh: 4 * cfg.LoadInterval, seen: sightings{},
	}
	if cfg.LB != LBOff {
		if a.lb, err = newServiceLB(a, a.net, log.With("component", "lb")); err != nil {
			return nil, fmt.Errorf("start load balancer: %w", err)
		}
		undo = append(undo, a.lb.close)
	}
	a.metrics.reg.MustRegister(&replicaCollector{a: a})

	a.ln, a.server, err = a.newAPIServer()
	if err != nil {
		return nil, err
	}
	log.Info("agent started", "node", cfg.Gossip.NodeName, "gossip", net.JoinHostPort(cfg.Gossip.BindAddr, fmt.Sprint(cfg.Gossip.GossipPort)),
		"p2p_peer", a.host.ID(), "api", a.ln.Addr().String(), "https", a.server.TLSConfig != nil, "dev", cfg.Dev, "encrypted", cfg.Gossip.GossipKey != nil)
	return a, nil
}

// APIAddr is the address the API listens on.
func (a *Agent) APIAddr() string { return a.ln.Addr().String() }

// Run serves until ctx is cancelled, then leaves the cluster gracefully and
// shuts down in reverse start order: API, membership, p2p host.
func (a *Agent) Run(ctx context.Context) error {
	serveErr := make(chan error, 1)
	go func() { serveErr <- a.serveAPI() }()

	// Loops outlive ctx so a drain can still place, start and stop.
	loopCtx, stopLoops := context.WithCancel(context.Background())
	defer stopLoops()
	var loops loopGroup
	if a.lb != nil {
		loops.run(loopCtx, a.lb.run)
	}
	if a.net != nil {
		loops.run(loopCtx, func(ctx context.Context) {
			a.net.run(ctx, a.cluster, a.waitJoined, a.reconciler.networkMoved)
		})
	}
	loops.run(loopCtx, a.joinLoop)
	loops.run(loopCtx, a.loadLoop)
	loops.run(loopCtx, a.sync.Run)
	loops.run(loopCtx, a.gcLoop)
	loops.run(loopCtx, a.reconciler.run)

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		if !errors.Is(err, http.ErrServerClosed) {
			runErr = fmt.Errorf("serve API: %w", err)
		}
	}
	if a.cfg.Drain && runErr == nil {
		a.drain()
	}
	// Stop taking writes, then make sure the last acknowledged ones have
	// left this node before the sync loops stop.
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.server.Shutdown(shutCtx); err != nil {
		a.log.Warn("shut down API", "err", err)
	}
	flushCtx, flushCancel := context.WithTimeout(context.Background(), 5*time.Second)
	if err := a.sync.Flush(flushCtx); err != nil {
		a.log.Warn("flush state to peers", "err", err)
	}
	flushCancel()
	stopLoops()
	loops.wait()
	// Retired for good: stop every replica now that no loop can start
	// them again.
	if a.cfg.Cleanup {
		a.stopAll()
	}

	a.log.Info("leaving cluster")
	leaveDone := make(chan error, 1)
	go func() { leaveDone <- a.cluster.Leave() }()
	select {
	case err := <-leaveDone:
		if err != nil {
			a.log.Warn("graceful leave", "err", err)
		}
	case <-time.After(a.cfg.LeaveTimeout):
		a.log.Warn("graceful leave timed out", "timeout", a.cfg.LeaveTimeout)
	}

	if err := a.cluster.Shutdown(); err != nil {
		a.log.Warn("shut down membership", "err", err)
	}
	if err := a.host.Close(); err != nil {
		a.log.Warn("shut down p2p host", "err", err)
	}
	if a.lb != nil {
		// The rules stay for the replicas of other nodes and a restarted
		// agent; a retired one removes them.
		if a.cfg.Cleanup {
			a.lb.teardown()
		}
		a.lb.close()
	}
	// Tasks keep running: a restarted agent adopts them, and the overlay
	// stays up for them, unless this agent is retired (--cleanup).
	a.tasks.Close()
	if a.net != nil {
		if a.cfg.Cleanup {
			if err := a.net.mgr.Teardown(); err != nil {
				a.log.Warn("remove overlay", "err", err)
			}
		}
		a.net.mgr.Close()
	}
	if err := a.store.Close(); err != nil {
		a.log.Warn("close state store", "err", err)
	}
	a.log.Info("agent stopped")
	return runErr
}

// joinLoop joins the configured seeds, retrying with exponential backoff
// until one answers or ctx ends, then catches the store up with a peer.
func (a *Agent) joinLoop(ctx context.Context) {
	// However the first attempt ends, the node stops waiting for it.
	defer a.markJoined()
	if len(a.cfg.Join) == 0 {
		// The first node of a cluster, or one restarted alone: its own
		// store is all there is.
		a.synced.Store(true)
		return
	}
	backoff := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		jctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n, err := a.cluster.Join(jctx, a.cfg.Join)
		cancel()
		if err == nil {
			a.log.Info("joined cluster", "seeds", a.cfg.Join, "answered", n, "attempt", attempt)
			a.catchUp(ctx)
			return
		}
		a.markJoined() // alone for now: act on that rather than wait
		a.log.Warn("join failed; retrying", "seeds", a.cfg.Join, "attempt", attempt, "retry_in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, a.cfg.JoinMaxBackoff)
	}
}

// catchUp runs anti-entropy with a peer until one exchange succeeds, and
// only then lets the node act on its store as a whole: a node that joined
// with an empty or old store would otherwise stop replicas of jobs it has
// not heard of yet. The loops start after the first attempt either way;
// until the store is synced they start replicas but stop none.
func (a *Agent) catchUp(ctx context.Context) {
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		if !a.hasPeers() {
			a.synced.Store(true)
			return
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := a.sync.SyncNow(sctx)
		cancel()
		if err == nil {
			a.synced.Store(true)
			a.notifyJobs()
			return
		}
		a.markJoined()
		a.log.Warn("initial state sync failed; retrying", "attempt", attempt, "retry_in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// hasPeers reports whether any other member is alive.
func (a *Agent) hasPeers() bool {
	for _, m := range a.cluster.Members() {
		if m.Name != a.cfg.Gossip.NodeName && m.Status == gossip.StatusAlive {
			return true
		}
	}
	return false
}

// isSynced reports whether the node has joined and its store caught up.
func (a *Agent) isSynced() bool {
	select {
	case <-a.joined:
		return a.synced.Load()
	default:
		return false
	}
}

// markJoined ends the start-up wait of the loops that act on the
// cluster's view (placement, overlay peers, load balancer): a restarted
// node that acted on a view of itself alone would stop replicas it will
// own again, drop every peer route and reset its services.
func (a *Agent) markJoined() { a.joinedOnce.Do(func() { close(a.joined) }) }

// waitJoined waits until the first join attempt ended, or ctx did.
func (a *Agent) waitJoined(ctx context.Context) bool {
	select {
	case <-a.joined:
		return true
	case <-ctx.Done():
		return false
	}
}

// loadLoop refreshes the load tags. It is the only writer of them.
func (a *Agent) loadLoop(ctx context.Context) {
	var cpu cpuSampler
	_, _ = cpu.sample()
	replicas := replicaSampler{prev: map[string]uint64{}}
	t := time.NewTicker(a.cfg.LoadInterval)
	defer t.Stop()
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		pct, err := cpu.sample()
		if err != nil {
			a.log.Warn("sample cpu", "err", err)
			continue
		}
		if first {
			// Two samples a moment apart give a meaningless percentage.
			pct = 0
		}
		used, err := memoryUsedMB()
		if err != nil {
			a.log.Warn("sample memory", "err", err)
			continue
		}
		repCPU, repMem, perTask := replicas.sample(ctx, a.tasks)
		a.rotateLogs(ctx)
		scaled := a.scaler.autoscaledJobs()
		a.scaler.publishUsage(scaled, perTask)
		a.scaler.autoscale(scaled)
		if err := a.cluster.UpdateMeta(func(m *gossip.Meta) {
			m.Load.CPUPercent = pct
			m.Load.MemoryUsedMB = used
			m.Load.ReplicaCPUMillis = repCPU
			m.Load.ReplicaMemoryMB = repMem
		}); err != nil {
			a.log.Warn("publish load", "err", err)
		}
	}
}

// servicesChanged asks the load balancer to resync.
func (a *Agent) servicesChanged() {
	if a.lb != nil {
		a.lb.changed()
	}
}

// onPeerRecords is called by state sync with records a peer changed.
func (a *Agent) onPeerRecords(recs []state.Record) {
	for _, r := range recs {
		switch r.Kind {
		case kindJob, kindScale, kindRolloutMark:
			a.notifyJobs()
		case kindEndpoint:
			select {
			case a.endpointsChanged <- struct{}{}:
			default:
			}
			a.servicesChanged()
		}
	}
}

// drain hands this node's replicas to the others before it leaves: it
// marks itself draining in gossip, so every node's placement (its own
// included) moves the replicas away and the usual make-before-break stops
// each local copy once its new owner runs it; what is left at the deadline
// is stopped.
func (a *Agent) drain() {
	a.log.Info("draining: handing replicas to other nodes")
	if err := a.cluster.UpdateMeta(func(m *gossip.Meta) { m.Health = gossip.HealthDrain }); err != nil {
		a.log.Warn("announce drain", "err", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.Reconcile.HandoffTimeout+15*time.Second)
	defer cancel()
	for {
		tasks, err := a.tasks.List(ctx)
		running := 0
		for _, t := range tasks {
			if t.State == runtime.StateRunning {
				running++
			}
		}
		// A containerd that is down has nothing to hand over.
		if (err == nil || errors.Is(err, runtime.ErrUnavailable)) && running == 0 {
			break
		}
		select {
		case <-ctx.Done():
			a.log.Warn("drain deadline reached; stopping the remaining replicas", "running", running)
		case <-time.After(200 * time.Millisecond):
			continue
		}
		break
	}
	a.stopAll()
	a.log.Info("drained")
}

// stopAll stops every replica of this node and releases its overlay
// address, a few at a time, each with its own deadline.
func (a *Agent) stopAll() {
	listCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tasks, _ := a.tasks.List(listCtx)
	cancel()
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for _, t := range tasks {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			ctx, cancel := context.WithTimeout(context.Background(), taskCallTimeout)
			defer cancel()
			if err := a.tasks.Stop(ctx, t.ID); err != nil {
				a.log.Warn("stop replica", "task", t.ID, "err", err)
			}
			if a.net != nil {
				a.net.detach(ctx, "", t.ID)
			}
		}()
	}
	wg.Wait()
}

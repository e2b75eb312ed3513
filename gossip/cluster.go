package gossip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
)

// Member statuses as the API reports them.
const (
	StatusAlive  = "alive"
	StatusFailed = "failed"
	StatusLeft   = "left"
)

// Member is one node as this node sees it.
type Member struct {
	Name   string
	Addr   net.IP
	Port   uint16
	Status string
	Tags   map[string]string
	Meta   Meta
}

// Cluster is this node's serf membership.
type Cluster struct {
	cfg    Config
	log    *slog.Logger
	serf   *serf.Serf
	events chan serf.Event
	// changes is signalled (coalesced) on every membership or tag change.
	changes chan struct{}
	subsMu  sync.Mutex
	subs    []chan struct{}
	done    chan struct{}
	// stats counts serf events by type for metrics.
	stats *EventStats

	mu   sync.Mutex // guards meta
	meta Meta

	// keyring is memberlist's (nil without a gossip key); serf changes it
	// when members rotate keys.
	keyring *memberlist.Keyring

	gen   atomic.Uint64 // bumped on every membership event
	cache atomic.Pointer[memberCache]
}

// EventStats counts received serf events; safe for concurrent use.
type EventStats struct {
	mu     sync.Mutex
	counts map[string]uint64
}

// Snapshot returns a copy of the counters.
func (s *EventStats) Snapshot() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]uint64, len(s.counts))
	for k, v := range s.counts {
		out[k] = v
	}
	return out
}

func (s *EventStats) add(kind string) {
	s.mu.Lock()
	s.counts[kind]++
	s.mu.Unlock()
}

// ErrJoin is returned when no join address answered.
var ErrJoin = errors.New("no join address answered")

// NewCluster starts serf with the given metadata. It does not join anyone.
func NewCluster(cfg Config, meta Meta, log *slog.Logger) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tags := meta.Tags()
	if n := encodedSize(tags); n > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("node metadata: %d bytes exceeds serf's %d-byte limit; use fewer or shorter labels", n, memberlist.MetaMaxSize)
	}
	c := &Cluster{
		cfg:     cfg,
		log:     log,
		events:  make(chan serf.Event, 256),
		changes: make(chan struct{}, 1),
		done:    make(chan struct{}),
		stats:   &EventStats{counts: map[string]uint64{}},
		meta:    meta,
	}

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.NodeName
	mc.BindAddr = cfg.BindAddr
	mc.BindPort = cfg.GossipPort
	mc.AdvertiseAddr = cfg.BindAddr
	mc.AdvertisePort = cfg.GossipPort
	mc.ProbeInterval = cfg.ProbeInterval
	mc.ProbeTimeout = cfg.ProbeTimeout
	mc.SuspicionMult = cfg.SuspicionMult
	mc.GossipInterval = cfg.GossipInterval
	mc.GossipNodes = cfg.GossipNodes
	mc.PushPullInterval = cfg.PushPullInterval
	mc.EnableCompression = cfg.Compression
	mc.Logger = newStdLogger(log.With("component", "memberlist"))

	sc := serf.DefaultConfig()
	sc.Init()
	sc.NodeName = cfg.NodeName
	sc.Tags = tags
	sc.EventCh = c.events
	sc.MemberlistConfig = mc
	sc.SnapshotPath = filepath.Join(cfg.DataDir, "serf.snapshot")
	// A restarted agent rejoins the peers it knew, even after a graceful leave.
	sc.RejoinAfterLeave = true
	sc.ReconnectTimeout = cfg.ReconnectTimeout
	sc.TombstoneTimeout = cfg.TombstoneTimeout
	sc.Logger = newStdLogger(log.With("component", "serf"))
	if cfg.GossipKey != nil {
		// The keyring rather than SecretKey, which memberlist would make
		// primary over a rotated ring.
		kr, path, err := loadKeyring(cfg.DataDir, cfg.GossipKey, log)
		if err != nil {
			return nil, err
		}
		mc.Keyring, c.keyring, sc.KeyringFile = kr, kr, path
	}

	s, err := serf.Create(sc)
	if err != nil {
		return nil, fmt.Errorf("start serf on %s:%d: %w", cfg.BindAddr, cfg.GossipPort, err)
	}
	c.serf = s
	go c.run()
	return c, nil
}

// run owns the serf event channel.
func (c *Cluster) run() {
	defer close(c.done)
	for {
		select {
		case e := <-c.events:
			c.invalidate()
			c.stats.add(e.EventType().String())
			if me, ok := e.(serf.MemberEvent); ok {
				for _, m := range me.Members {
					c.log.Info("membership", "event", me.Type.String(), "node", m.Name, "addr", m.Addr.String())
				}
			}
			select {
			case c.changes <- struct{}{}:
			default:
			}
			c.subsMu.Lock()
			for _, ch := range c.subs {
				select {
				case ch <- struct{}{}:
				default:
				}
			}
			c.subsMu.Unlock()
		case <-c.serf.ShutdownCh():
			return
		}
	}
}

// Changes is signalled after any membership or tag change. Signals are
// coalesced: a receiver re-reads Members. It has one receiver (the
// reconcile loop); others use Subscribe.
func (c *Cluster) Changes() <-chan struct{} { return c.changes }

// Subscribe returns a further channel signalled like Changes.
func (c *Cluster) Subscribe() <-chan struct{} {
	ch := make(chan struct{}, 1)
	c.subsMu.Lock()
	c.subs = append(c.subs, ch)
	c.subsMu.Unlock()
	return ch
}

// Stats returns serf event counters.
func (c *Cluster) Stats() *EventStats { return c.stats }

// LocalName is this node's name.
func (c *Cluster) LocalName() string { return c.cfg.NodeName }

// Join contacts the given addresses (host or host:port) and returns how many
// answered.
func (c *Cluster) Join(ctx context.Context, addrs []string) (int, error) {
	norm := make([]string, 0, len(addrs))
	for _, a := range addrs {
		n, err := NormalizeAddr(a, DefaultGossipPort)
		if err != nil {
			return 0, err
		}
		norm = append(norm, n)
	}
	type result struct {
		n   int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		n, err := c.serf.Join(norm, true)
		ch <- result{n, err}
	}()
	select {
	case r := <-ch:
		if r.n == 0 {
			if r.err == nil {
				return 0, fmt.Errorf("join %v: %w", norm, ErrJoin)
			}
			return 0, fmt.Errorf("join %v: %s", norm, flattenError(r.err))
		}
		return r.n, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("join %v: %w", norm, ctx.Err())
	}
}

// NormalizeAddr turns "host" or "host:port" into "host:port".
func NormalizeAddr(addr string, defaultPort int) (string, error) {
	if addr == "" {
		return "", errors.New("address: must not be empty")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		// No port given: the whole string is the host.
		host, port = addr, strconv.Itoa(defaultPort)
		if net.ParseIP(host) == nil && !validHostname(host) {
			return "", fmt.Errorf("address %q: not an IP, hostname or host:port", addr)
		}
	}
	if host == "" {
		return "", fmt.Errorf("address %q: missing host", addr)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return "", fmt.Errorf("address %q: port must be 1-65535", addr)
	}
	return net.JoinHostPort(host, port), nil
}

func validHostname(h string) bool {
	if len(h) == 0 || len(h) > 253 {
		return false
	}
	for _, r := range h {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.':
		default:
			return false
		}
	}
	return true
}

// Members returns every member serf knows, this node included.
//
// The slice is shared with other callers and must not be modified. It is
// cached until the next membership event (or for at most a second), since
// state sync asks for it on every message and decoding every member's tags
// each time costs O(N) per message.
func (c *Cluster) Members() []Member {
	gen := c.gen.Load()
	if mc := c.cache.Load(); mc != nil && mc.gen == gen && time.Since(mc.built) < time.Second {
		return mc.members
	}
	sm := c.serf.Members()
	mc := &memberCache{gen: gen, built: time.Now(), members: make([]Member, 0, len(sm)),
		byPeer: make(map[string]string, len(sm)), byName: make(map[string]int, len(sm))}
	for _, m := range sm {
		meta := ParseMeta(m.Tags)
		mc.members = append(mc.members, Member{
			Name:   m.Name,
			Addr:   m.Addr,
			Port:   m.Port,
			Status: statusName(m.Status),
			Tags:   m.Tags,
			Meta:   meta,
		})
		if meta.PeerID != "" {
			mc.byPeer[meta.PeerID] = m.Name
		}
		mc.byName[m.Name] = len(mc.members) - 1
	}
	c.cache.Store(mc)
	return mc.members
}

// NameOfPeer returns the member name that publishes a libp2p peer id.
func (c *Cluster) NameOfPeer(peerID string) string {
	c.Members()
	if mc := c.cache.Load(); mc != nil {
		return mc.byPeer[peerID]
	}
	return ""
}

// member returns the member named name, if serf knows it.
func (c *Cluster) member(name string) (Member, bool) {
	c.Members()
	mc := c.cache.Load()
	if mc == nil {
		return Member{}, false
	}
	i, ok := mc.byName[name]
	if !ok {
		return Member{}, false
	}
	return mc.members[i], true
}

// memberCache is an immutable snapshot of the member list.
type memberCache struct {
	gen     uint64
	built   time.Time
	members []Member
	byPeer  map[string]string
	byName  map[string]int
}

// invalidate makes the next Members call rebuild the snapshot.
func (c *Cluster) invalidate() { c.gen.Add(1) }

func statusName(s serf.MemberStatus) string {
	switch s {
	case serf.StatusAlive:
		return StatusAlive
	case serf.StatusFailed:
		return StatusFailed
	default:
		// Leaving is transient; a leaving node is already out of service.
		return StatusLeft
	}
}

// UpdateMeta applies fn to this node's metadata and gossips the result.
func (c *Cluster) UpdateMeta(fn func(*Meta)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := c.meta
	next.Labels = c.meta.Labels
	fn(&next)
	tags := next.Tags()
	if maps.Equal(tags, c.meta.Tags()) {
		// Unchanged: do not spend a gossip broadcast on it.
		return nil
	}
	if err := c.serf.SetTags(tags); err != nil {
		return fmt.Errorf("publish node metadata: %w", err)
	}
	c.invalidate()
	c.meta = next
	return nil
}

// Meta returns this node's current metadata.
func (c *Cluster) Meta() Meta {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.meta
}

// Leave announces a graceful departure and waits for it to propagate.
func (c *Cluster) Leave() error {
	if err := c.serf.Leave(); err != nil {
		return fmt.Errorf("leave cluster: %w", err)
	}
	return nil
}

// Shutdown stops serf without announcing anything (peers will see a failure
// unless Leave was called first).
func (c *Cluster) Shutdown() error {
	err := c.serf.Shutdown()
	<-c.done
	if err != nil {
		return fmt.Errorf("shut down serf: %w", err)
	}
	return nil
}

// flattenError renders serf's multi-line multierror on one line.
func flattenError(err error) string {
	msg := err.Error()
	if _, rest, ok := strings.Cut(msg, "occurred:"); ok {
		msg = rest
	}
	msg = strings.ReplaceAll(msg, "\n\t* ", "; ")
	return strings.Trim(strings.TrimSpace(msg), "; ")
}

// Port is the gossip port this node listens on.
func (c *Cluster) Port() int { return int(c.serf.Memberlist().LocalNode().Port) }

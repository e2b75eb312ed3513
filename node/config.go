package node

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/lb"
	"github.com/shoalmesh/shoal/overlay"
	"github.com/shoalmesh/shoal/runtime"
	"github.com/shoalmesh/shoal/state"
)

// DefaultAPIAddr is loopback so that a fresh agent exposes nothing.
const DefaultAPIAddr = "127.0.0.1:7700"

// Config configures an agent. Build one with DefaultConfig.
type Config struct {
	Gossip gossip.Config
	// APIAddr is host:port for the HTTP API.
	APIAddr string
	// APIToken is the bearer token every call but /healthz must carry.
	APIToken string
	// Dev allows running without a gossip key and API token.
	Dev bool
	// Labels are published in gossip for placement constraints.
	Labels map[string]string
	// CPUMillis and MemoryMB override the detected capacity when > 0.
	CPUMillis int64
	MemoryMB  int64
	// Join lists gossip addresses to join at start; tried with backoff
	// until one answers.
	Join []string
	// JoinMaxBackoff caps the delay between join attempts.
	JoinMaxBackoff time.Duration
	// Containerd is the containerd socket; ContainerdNamespace isolates this
	// agent's containers (several agents may share a daemon).
	Containerd          string
	ContainerdNamespace string
	// Overlay configures the VXLAN overlay; OverlayEnabled false leaves
	// replicas with loopback only (a machine without VXLAN).
	Overlay        overlay.Config
	OverlayEnabled bool
	// OverlaySubnet, if set, is claimed instead of a proposed subnet when
	// the node has no claim yet (tests of the conflict rule).
	OverlaySubnet netip.Prefix
	// Cleanup makes shutdown stop every replica and remove the overlay's
	// links, routes and rules: for an agent retired for good.
	Cleanup bool
	// LB is how services are load-balanced: LBNftables (the default),
	// LBUserspace (a proxy for node ports, where nftables cannot be used)
	// or LBOff. LBTable names the nftables table.
	LB      string
	LBTable string
	// ServiceCIDR holds the services' virtual IPs.
	ServiceCIDR netip.Prefix
	// DNS serves NAME.shoal. on the overlay bridge's gateway (port 53).
	DNS bool
	// PullTimeout bounds pulling an image a replica needs.
	PullTimeout time.Duration
	// LogMaxBytes is the size at which a replica's log file is rotated;
	// LogKeep rotated files are kept.
	LogMaxBytes int64
	LogKeep     int
	// LoadInterval is how often load tags are refreshed.
	LoadInterval time.Duration
	// Drain, on shutdown, hands every local replica to other nodes (make
	// before break) and stops it, instead of leaving replicas running for
	// a restarted agent to adopt.
	Drain bool
	// Reconcile tunes placement and the reconcile loop.
	Reconcile ReconcileConfig
	// Sync tunes state dissemination (push fanout, anti-entropy).
	Sync gossip.SyncConfig
	// TombstoneTTL is how long deletions are remembered. A node that is
	// away longer than this may bring deleted jobs back when it returns.
	TombstoneTTL time.Duration
	// LeaveTimeout bounds the graceful leave broadcast on shutdown.
	LeaveTimeout time.Duration
}

// DefaultConfig returns an agent configuration with Shoal's defaults.
func DefaultConfig() Config {
	return Config{
		Gossip:              gossip.DefaultConfig(),
		APIAddr:             DefaultAPIAddr,
		JoinMaxBackoff:      30 * time.Second,
		Containerd:          "/run/containerd/containerd.sock",
		ContainerdNamespace: "shoal",
		LoadInterval:        3 * time.Second,
		PullTimeout:         runtime.DefaultPullTimeout,
		Overlay:             overlay.DefaultConfig(),
		OverlayEnabled:      true,
		LB:                  LBNftables,
		LBTable:             lb.DefaultTable,
		ServiceCIDR:         lb.DefaultServiceCIDR,
		DNS:                 true,
		LogMaxBytes:         10 << 20,
		LogKeep:             3,
		LeaveTimeout:        5 * time.Second,
		Sync:                gossip.DefaultSyncConfig(),
		Reconcile:           DefaultReconcileConfig(),
		TombstoneTTL:        state.DefaultTombstoneExpiry,
	}
}

// ErrInsecure is returned when secrets are missing outside dev mode.
var ErrInsecure = errors.New("refusing to start without --gossip-key and --api-token (generate them with `shoal keygen`, or pass --dev for a local, unauthenticated cluster)")

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if !c.Dev && (c.Gossip.GossipKey == nil || c.APIToken == "") {
		return ErrInsecure
	}
	if err := c.Gossip.Validate(); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(c.APIAddr); err != nil {
		return fmt.Errorf("api address %q: want host:port: %w", c.APIAddr, err)
	}
	if c.CPUMillis < 0 || c.MemoryMB < 0 {
		return errors.New("capacity overrides: must be >= 0")
	}
	for _, a := range c.Join {
		if _, err := gossip.NormalizeAddr(a, gossip.DefaultGossipPort); err != nil {
			return fmt.Errorf("join: %w", err)
		}
	}
	if c.LoadInterval <= 0 {
		return errors.New("load interval: must be > 0")
	}
	if c.OverlayEnabled {
		o := c.Overlay
		o.StateDir = "" // set by the agent
		if err := o.Validate(); err != nil {
			return err
		}
		if c.OverlaySubnet.IsValid() && (c.OverlaySubnet.Bits() != o.SubnetBits || !o.OverlayCIDR.Contains(c.OverlaySubnet.Addr())) {
			return fmt.Errorf("overlay subnet %s: must be a /%d inside %s", c.OverlaySubnet, o.SubnetBits, o.OverlayCIDR)
		}
	}
	switch c.LB {
	case LBNftables, LBUserspace, LBOff:
	default:
		return fmt.Errorf("lb %q: want %s, %s or %s", c.LB, LBNftables, LBUserspace, LBOff)
	}
	if !c.ServiceCIDR.IsValid() || !c.ServiceCIDR.Addr().Is4() || c.ServiceCIDR.Bits() > 30 {
		return fmt.Errorf("service cidr %s: want an IPv4 range of at least 4 addresses", c.ServiceCIDR)
	}
	if c.OverlayEnabled && c.ServiceCIDR.Overlaps(c.Overlay.OverlayCIDR) {
		return fmt.Errorf("service cidr %s overlaps the overlay %s", c.ServiceCIDR, c.Overlay.OverlayCIDR)
	}
	if c.PullTimeout <= 0 {
		return errors.New("pull timeout: must be > 0")
	}
	if c.LogMaxBytes < 4096 || c.LogKeep < 1 {
		return errors.New("log rotation: max bytes must be >= 4096 and keep >= 1")
	}
	if c.Reconcile.Debounce <= 0 || c.Reconcile.JobDebounce <= 0 || c.Reconcile.Resync <= 0 || c.Reconcile.HandoffTimeout <= 0 {
		return errors.New("reconcile: debounces, resync and handoff timeout must be > 0")
	}
	if c.TombstoneTTL <= 0 {
		return errors.New("tombstone ttl: must be > 0")
	}
	if c.Sync.AntiEntropyInterval <= 0 || c.Sync.Timeout <= 0 || c.Sync.MinFanout < 1 {
		return errors.New("state sync: anti-entropy interval, timeout and fanout must be > 0")
	}
	if c.ContainerdNamespace == "" {
		return errors.New("containerd namespace: must not be empty")
	}
	return nil
}

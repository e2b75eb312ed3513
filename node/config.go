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
	// APIReadToken, if set, is a second token that may only read: GET
	// calls (lists, logs, events, metrics). Writes with it get 403.
	APIReadToken string
	// TLS makes the API serve HTTPS only, with a certificate the agent
	// issues itself from the cluster CA.
	TLS TLSConfig
	// APIInsecure allows plain HTTP on an API address other than
	// loopback, where the token would cross the network in clear: for
	// lab networks only.
	APIInsecure bool
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
	// TaskUIDs are the user ids exec tasks get, one per task; the zero
	// value means runtime.DefaultTaskUIDs.
	TaskUIDs runtime.UIDRange
	// ProxyMaxSessions and ProxyTCPIdle bound the userspace proxy: TCP
	// connections plus UDP sessions per node port, and how long an idle
	// TCP connection is kept.
	ProxyMaxSessions int
	ProxyTCPIdle     time.Duration
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

// TLSConfig is where the API's certificates come from. An empty CAFile
// means plain HTTP.
type TLSConfig struct {
	// CAFile and CAKeyFile are the cluster CA's certificate and key in
	// PEM (ca.pem, ca.key from `shoal keygen --dir`).
	CAFile    string
	CAKeyFile string
	// ExtraNames are DNS names or IPs the certificate carries besides the
	// node name, the bind and API addresses and localhost: a name clients
	// use that the agent cannot know (a DNS alias, a load balancer).
	ExtraNames []string
	// CertLifetime is the serving certificate's life; it is replaced two
	// thirds into it. Short, since nothing revokes it.
	CertLifetime time.Duration
}

// Enabled reports whether the API serves HTTPS.
func (t TLSConfig) Enabled() bool { return t.CAFile != "" }

// DefaultConfig returns an agent configuration with Shoal's defaults.
func DefaultConfig() Config {
	return Config{
		Gossip:              gossip.DefaultConfig(),
		APIAddr:             DefaultAPIAddr,
		TLS:                 TLSConfig{CertLifetime: DefaultCertLifetime},
		JoinMaxBackoff:      30 * time.Second,
		Containerd:          "/run/containerd/containerd.sock",
		ContainerdNamespace: "shoal",
		LoadInterval:        3 * time.Second,
		PullTimeout:         runtime.DefaultPullTimeout,
		TaskUIDs:            runtime.DefaultTaskUIDs,
		ProxyMaxSessions:    lb.DefaultMaxSessionsPerPort,
		ProxyTCPIdle:        lb.DefaultTCPIdleTimeout,
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
var ErrInsecure = errors.New("refusing to start without a gossip key and an API token: give --gossip-key-file and --api-token-file (write them with `shoal keygen --dir DIR`), or pass --dev for a local, unauthenticated cluster")

// ErrPlainAPI is returned for plain HTTP on an address other than
// loopback, where the token would cross the network in clear.
var ErrPlainAPI = errors.New("refusing to serve the API over plain HTTP beyond loopback: give the cluster CA (--tls-ca ca.pem --tls-ca-key ca.key, from `shoal keygen --dir`) to serve HTTPS, or --api-insecure on a lab network")

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if !c.Dev && (c.Gossip.GossipKey == nil || c.APIToken == "") {
		return ErrInsecure
	}
	if c.APIReadToken != "" && c.APIToken == "" {
		return errors.New("api read token: needs an API token too (without one the API takes every call)")
	}
	if c.APIReadToken != "" && c.APIReadToken == c.APIToken {
		return errors.New("api read token: must differ from the API token")
	}
	if err := c.Gossip.Validate(); err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(c.APIAddr)
	if err != nil {
		return fmt.Errorf("api address %q: want host:port: %w", c.APIAddr, err)
	}
	if (c.TLS.CAFile == "") != (c.TLS.CAKeyFile == "") {
		return errors.New("tls: give both the CA certificate (--tls-ca) and its key (--tls-ca-key), or neither")
	}
	if c.TLS.Enabled() && c.TLS.CertLifetime < time.Hour {
		return fmt.Errorf("tls: certificate lifetime %s: must be at least 1h", c.TLS.CertLifetime)
	}
	if !c.TLS.Enabled() && !c.Dev && !c.APIInsecure && !isLoopback(host) {
		return fmt.Errorf("api address %s: %w", c.APIAddr, ErrPlainAPI)
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
	if err := c.TaskUIDs.Validate(); c.TaskUIDs != (runtime.UIDRange{}) && err != nil {
		return fmt.Errorf("task uids: %w", err)
	}
	if c.ProxyMaxSessions < 0 || c.ProxyTCPIdle < 0 {
		return errors.New("proxy limits: must be >= 0")
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

// isLoopback reports whether an API host is reachable from this machine
// only. A name other than localhost may resolve anywhere, so it is not.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

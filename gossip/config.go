// Package gossip owns cluster membership (serf over memberlist), the node
// metadata carried in serf tags, and the libp2p host that carries bulk
// peer-to-peer streams. It knows nothing of jobs or placement.
package gossip

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"time"
)

// Default ports.
const (
	DefaultGossipPort = 7946
	DefaultP2PPort    = 7947
)

// Config configures membership and the p2p host. Build one with DefaultConfig
// and override fields; Validate is called by New.
type Config struct {
	// NodeName must be unique in the cluster.
	NodeName string
	// BindAddr is the IP that gossip (tcp+udp) and p2p (tcp) listen on and
	// advertise to peers. It must be an address peers can reach.
	BindAddr string
	// GossipPort is the serf/memberlist port (tcp and udp).
	GossipPort int
	// P2PPort is the libp2p tcp port.
	P2PPort int
	// GossipKey is the AES key (16, 24 or 32 bytes) for memberlist's
	// encrypted keyring. Nil disables encryption (dev mode only). After a
	// rotation the keyring saved in DataDir wins over it. The libp2p
	// private-network key is derived from the key a node first starts with
	// and saved in DataDir (LoadNetworkKey).
	GossipKey []byte
	// DataDir holds the p2p identity key and the serf snapshot.
	DataDir string

	// Failure detection. memberlist probes one random member every
	// ProbeInterval and waits ProbeTimeout for an ack, then asks others to
	// probe indirectly; a member that stays unreachable is suspected, and
	// declared failed after roughly SuspicionMult * max(1, log10(N)) *
	// ProbeInterval unless it refutes. Shorter values detect failures sooner
	// and cost more packets and more false suspicions under CPU starvation or
	// packet loss.
	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
	SuspicionMult int
	// GossipInterval is how often queued broadcasts are sent to
	// GossipNodes random members.
	GossipInterval time.Duration
	GossipNodes    int
	// PushPullInterval is the period of full state exchange with a random
	// member; it repairs anything gossip missed.
	PushPullInterval time.Duration
	// Compression LZW-compresses gossip packets. Off by default: a fresh
	// compressor per packet dominated CPU in 250-node simulations (a third of
	// all cycles) to save bytes on packets that are small on a LAN.
	Compression bool
	// P2PConnLow and P2PConnHigh bound libp2p connections: past High, idle
	// ones are trimmed down to Low (after a grace period). Peers talk to
	// random peers, so without a bound every node would keep a connection
	// to every other.
	P2PConnLow, P2PConnHigh int
	// ReconnectTimeout is how long a failed member is kept (and retried)
	// before it is reaped from the member list.
	ReconnectTimeout time.Duration
	// TombstoneTimeout is how long a member that left is remembered.
	TombstoneTimeout time.Duration
}

// DefaultConfig returns LAN defaults tuned to detect a dead node in a few
// seconds rather than memberlist's 10-20 s. See docs/OPERATIONS.md for the
// trade-off.
func DefaultConfig() Config {
	return Config{
		GossipPort:       DefaultGossipPort,
		P2PPort:          DefaultP2PPort,
		ProbeInterval:    500 * time.Millisecond,
		ProbeTimeout:     250 * time.Millisecond,
		SuspicionMult:    3,
		GossipInterval:   100 * time.Millisecond,
		GossipNodes:      4,
		PushPullInterval: 10 * time.Second,
		P2PConnLow:       128,
		P2PConnHigh:      192,
		ReconnectTimeout: 24 * time.Hour,
		TombstoneTimeout: 24 * time.Hour,
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	if c.NodeName == "" {
		return errors.New("node name: must not be empty")
	}
	if len(c.NodeName) > 128 {
		return errors.New("node name: must be at most 128 characters")
	}
	if ip := net.ParseIP(c.BindAddr); ip == nil {
		return fmt.Errorf("bind address %q: not an IP address", c.BindAddr)
	}
	if c.GossipPort < 0 || c.GossipPort > 65535 {
		return fmt.Errorf("gossip port %d: out of range", c.GossipPort)
	}
	if c.P2PPort < 0 || c.P2PPort > 65535 {
		return fmt.Errorf("p2p port %d: out of range", c.P2PPort)
	}
	if c.GossipKey != nil {
		switch len(c.GossipKey) {
		case 16, 24, 32:
		default:
			return fmt.Errorf("gossip key: must be 16, 24 or 32 bytes, got %d", len(c.GossipKey))
		}
	}
	if c.ProbeInterval <= 0 || c.ProbeTimeout <= 0 || c.ProbeTimeout > c.ProbeInterval {
		return fmt.Errorf("probe timing: need 0 < probe timeout (%s) <= probe interval (%s)", c.ProbeTimeout, c.ProbeInterval)
	}
	if c.SuspicionMult < 1 {
		return errors.New("suspicion multiplier: must be >= 1")
	}
	if c.GossipInterval <= 0 || c.GossipNodes < 1 {
		return errors.New("gossip interval and gossip nodes: must be > 0")
	}
	if c.PushPullInterval <= 0 {
		return errors.New("push-pull interval: must be > 0")
	}
	if c.P2PConnLow < 1 || c.P2PConnHigh < c.P2PConnLow {
		return fmt.Errorf("p2p connection bounds: need 1 <= low (%d) <= high (%d)", c.P2PConnLow, c.P2PConnHigh)
	}
	if c.DataDir == "" {
		return errors.New("data dir: must not be empty")
	}
	return nil
}

// ParseKey decodes a base64 gossip key and checks its length.
func ParseKey(s string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("gossip key: not valid base64: %w", err)
	}
	switch len(key) {
	case 16, 24, 32:
		return key, nil
	default:
		return nil, fmt.Errorf("gossip key: must decode to 16, 24 or 32 bytes, got %d", len(key))
	}
}

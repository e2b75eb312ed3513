package gossip

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/protocol"
	yamux "github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	tcp "github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

// ProtocolPing answers a ping with the same bytes; it proves that two
// nodes share the private-network key and can open streams.
const ProtocolPing = protocol.ID("/shoal/ping/1.0.0")

const (
	identityFile = "p2p.key"
	// networkKeyFile keeps the private-network key a node first derived,
	// so that it outlives a rotation of the gossip key it came from.
	networkKeyFile = "p2p.psk"
)

// Host is this node's libp2p endpoint: TCP + Noise + yamux, inside a
// private network whose key is derived from the gossip key the node first
// started with (see LoadNetworkKey).
type Host struct {
	h   host.Host
	log *slog.Logger
}

// DerivePSK derives the libp2p private-network key from the gossip key, so
// operators manage one secret.
func DerivePSK(gossipKey []byte) (pnet.PSK, error) {
	if len(gossipKey) == 0 {
		return nil, nil
	}
	k, err := hkdf.Key(sha256.New, gossipKey, nil, "shoal libp2p private network v1", 32)
	if err != nil {
		return nil, fmt.Errorf("derive p2p network key: %w", err)
	}
	return pnet.PSK(k), nil
}

// LoadNetworkKey returns the libp2p private-network key: the one saved in
// dataDir, or, on a node's first start, the one derived from gossipKey,
// which is then saved there. Every node must hold the same key. The gossip
// key can be rotated in a running cluster (serf's keyring), the network
// key cannot: a libp2p host accepts exactly one. So it stays what the
// cluster's first key made it, and a node added after a rotation is given
// a copy of the file (see the README). Without a gossip key (dev mode)
// there is no private network.
func LoadNetworkKey(dataDir string, gossipKey []byte, log *slog.Logger) (pnet.PSK, error) {
	if len(gossipKey) == 0 {
		return nil, nil
	}
	derived, err := DerivePSK(gossipKey)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dataDir, networkKeyFile)
	raw, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		enc := base64.StdEncoding.EncodeToString(derived) + "\n"
		if err := writeFileAtomic(path, []byte(enc), 0o600); err != nil {
			return nil, fmt.Errorf("save p2p network key: %w", err)
		}
		return derived, nil
	case err != nil:
		return nil, fmt.Errorf("read p2p network key: %w", err)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(key) != 32 {
		return nil, fmt.Errorf("p2p network key %s: want 32 bytes in base64", path)
	}
	if !bytes.Equal(key, derived) {
		log.Info("p2p network key comes from the gossip key this node first started with, not the configured one (expected after a key rotation)",
			"file", path)
	}
	return pnet.PSK(key), nil
}

// LoadIdentity reads the node's libp2p key from dataDir, creating it on
// first start so the peer id is stable across restarts.
func LoadIdentity(dataDir string) (crypto.PrivKey, error) {
	path := filepath.Join(dataDir, identityFile)
	raw, err := os.ReadFile(path)
	switch {
	case err == nil:
		k, err := crypto.UnmarshalPrivateKey(raw)
		if err != nil {
			return nil, fmt.Errorf("read p2p identity %s: %w", path, err)
		}
		return k, nil
	case errors.Is(err, fs.ErrNotExist):
	default:
		return nil, fmt.Errorf("read p2p identity: %w", err)
	}
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, fmt.Errorf("generate p2p identity: %w", err)
	}
	raw, err = crypto.MarshalPrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encode p2p identity: %w", err)
	}
	if err := writeFileAtomic(path, raw, 0o600); err != nil {
		return nil, fmt.Errorf("save p2p identity: %w", err)
	}
	return k, nil
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func tcpMultiaddr(ip net.IP, port int) (ma.Multiaddr, error) {
	proto := "ip4"
	if ip.To4() == nil {
		proto = "ip6"
	}
	return ma.NewMultiaddr(fmt.Sprintf("/%s/%s/tcp/%d", proto, ip, port))
}

// NewHost starts the libp2p host on bindAddr:port.
func NewHost(cfg Config, log *slog.Logger) (*Host, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	key, err := LoadIdentity(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	psk, err := LoadNetworkKey(cfg.DataDir, cfg.GossipKey, log)
	if err != nil {
		return nil, err
	}
	listen, err := tcpMultiaddr(net.ParseIP(cfg.BindAddr), cfg.P2PPort)
	if err != nil {
		return nil, fmt.Errorf("p2p listen address: %w", err)
	}
	cm, err := connmgr.NewConnManager(cfg.P2PConnLow, cfg.P2PConnHigh, connmgr.WithGracePeriod(20*time.Second))
	if err != nil {
		return nil, fmt.Errorf("p2p connection manager: %w", err)
	}
	opts := []libp2p.Option{
		libp2p.ConnectionManager(cm),
		libp2p.Identity(key),
		libp2p.ListenAddrs(listen),
		// Only TCP: QUIC, WebTransport and WebRTC refuse private networks.
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	}
	if psk != nil {
		opts = append(opts, libp2p.PrivateNetwork(psk))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("start p2p host on %s: %w", listen, err)
	}
	hst := &Host{h: h, log: log}
	hst.Handle(ProtocolPing, hst.servePing)
	return hst, nil
}

// NewHostFrom wraps a libp2p host made elsewhere (the simulator's
// in-memory network) and registers Shoal's protocols on it.
func NewHostFrom(h host.Host, log *slog.Logger) *Host {
	hst := &Host{h: h, log: log}
	hst.Handle(ProtocolPing, hst.servePing)
	return hst
}

// ID is this node's peer id.
func (h *Host) ID() string { return h.h.ID().String() }

// Addrs are the multiaddrs the host listens on.
func (h *Host) Addrs() []ma.Multiaddr { return h.h.Addrs() }

// Handle registers a stream protocol.
func (h *Host) Handle(p protocol.ID, fn func(network.Stream)) {
	h.h.SetStreamHandler(p, fn)
}

// Open opens a stream to a member using the peer id and port in its tags.
func (h *Host) Open(ctx context.Context, m Member, p protocol.ID) (network.Stream, error) {
	if m.Meta.PeerID == "" || m.Meta.P2PPort == 0 {
		return nil, fmt.Errorf("open %s stream to %s: member publishes no p2p address", p, m.Name)
	}
	pid, err := peer.Decode(m.Meta.PeerID)
	if err != nil {
		return nil, fmt.Errorf("open %s stream to %s: bad peer id: %w", p, m.Name, err)
	}
	addr, err := tcpMultiaddr(m.Addr, m.Meta.P2PPort)
	if err != nil {
		return nil, fmt.Errorf("open %s stream to %s: %w", p, m.Name, err)
	}
	h.h.Peerstore().AddAddr(pid, addr, peerstore.TempAddrTTL)
	s, err := h.h.NewStream(ctx, pid, p)
	if err != nil {
		return nil, fmt.Errorf("open %s stream to %s (%s): %w", p, m.Name, addr, err)
	}
	return s, nil
}

// Ping round-trips a few bytes over a fresh stream.
func (h *Host) Ping(ctx context.Context, m Member) (time.Duration, error) {
	start := time.Now()
	s, err := h.Open(ctx, m, ProtocolPing)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	msg := []byte("shoal-ping")
	if _, err := s.Write(msg); err != nil {
		return 0, fmt.Errorf("ping %s: %w", m.Name, err)
	}
	_ = s.CloseWrite()
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(s, buf); err != nil {
		return 0, fmt.Errorf("ping %s: %w", m.Name, err)
	}
	return time.Since(start), nil
}

func (h *Host) servePing(s network.Stream) {
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(s, io.LimitReader(s, 64)); err != nil {
		h.log.Debug("ping stream", "peer", s.Conn().RemotePeer(), "err", err)
	}
}

// Close stops the host.
func (h *Host) Close() error {
	if err := h.h.Close(); err != nil {
		return fmt.Errorf("close p2p host: %w", err)
	}
	return nil
}

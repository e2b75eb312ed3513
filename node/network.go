package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/overlay"
)

// networkResync is how often the overlay is reconciled without a
// membership change, which repairs entries deleted by hand.
const networkResync = 5 * time.Second

// overlayNet runs this node's share of the overlay: it claims a subnet
// without asking anyone (hash of the name, probing past subnets others
// gossip; the older claim wins a conflict), keeps an FDB entry, a
// neighbour and a route per alive peer, accepts VXLAN only from members,
// and attaches replicas' network namespaces to the node's bridge. The
// overlay.Manager it wraps is safe for concurrent use; claim and
// generation are guarded by mu.
type overlayNet struct {
	mgr       *overlay.Manager
	cfg       overlay.Config
	log       *slog.Logger
	self      string
	underlay  netip.Addr
	claimPath string

	mu    sync.Mutex
	claim overlay.Claim
	// generation changes when the node's subnet does: every replica must
	// then be attached again for a new address.
	generation int
	resolvConf string
}

// newOverlayNet builds the node's data plane on its current claim: the saved
// one, else forced (for tests), else a fresh proposal. Conflicts with
// peers are settled by sync once gossip shows their claims.
func newOverlayNet(cfg overlay.Config, self string, underlay netip.Addr, forced netip.Prefix, log *slog.Logger) (*overlayNet, error) {
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("overlay state dir: %w", err)
	}
	n := &overlayNet{cfg: cfg, log: log, self: self, underlay: underlay, claimPath: filepath.Join(cfg.StateDir, "claim.json")}
	claim, err := overlay.LoadClaim(n.claimPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load overlay claim: %w", err)
	}
	if claim.Subnet.IsValid() && claim.Node != self {
		claim = overlay.Claim{} // a data dir copied from another node
	}
	if claim.Subnet.IsValid() && (claim.Subnet.Bits() != cfg.SubnetBits || !cfg.OverlayCIDR.Contains(claim.Subnet.Addr())) {
		log.Warn("saved overlay subnet is outside the configured overlay; claiming a new one", "saved", claim.Subnet, "overlay", cfg.OverlayCIDR, "bits", cfg.SubnetBits)
		claim = overlay.Claim{}
	}
	if !claim.Subnet.IsValid() {
		if forced.IsValid() {
			claim = overlay.Claim{Node: self, Subnet: forced.Masked(), ClaimedAt: time.Now().UnixNano()}
		} else if claim, err = overlay.NextClaim(overlay.Claim{Node: self}, nil, cfg.OverlayCIDR, cfg.SubnetBits, time.Now().UnixNano()); err != nil {
			return nil, fmt.Errorf("claim overlay subnet: %w", err)
		}
		if err := overlay.SaveClaim(n.claimPath, claim); err != nil {
			return nil, fmt.Errorf("save overlay claim: %w", err)
		}
	}
	n.claim = claim
	if n.mgr, err = overlay.New(cfg, log); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.mgr.Setup(ctx, claim.Subnet, underlay); err != nil {
		n.mgr.Close()
		return nil, fmt.Errorf("set up overlay on %s: %w", claim.Subnet, err)
	}
	if n.resolvConf, err = n.mgr.ResolvConf(cfg.StateDir); err != nil {
		n.mgr.Close()
		return nil, err
	}
	log.Info("overlay up", "subnet", claim.Subnet, "vtep", n.mgr.VTEPMAC().String(), "mtu", n.mgr.MTU())
	return n, nil
}

// advert is this node's overlay tag value.
func (n *overlayNet) advert() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return overlay.Advert{Subnet: n.claim.Subnet, ClaimedAt: n.claim.ClaimedAt, VTEPMAC: n.mgr.VTEPMAC()}.Tag()
}

// state returns the current subnet generation.
func (n *overlayNet) state() (generation int, subnet netip.Prefix) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.generation, n.claim.Subnet
}

// run reconciles the overlay on every membership change and every
// networkResync until ctx ends.
func (n *overlayNet) run(ctx context.Context, cluster *gossip.Cluster, waitJoined func(context.Context) bool, onRepick func()) {
	changes := cluster.Subscribe()
	if !waitJoined(ctx) {
		return
	}
	t := time.NewTicker(networkResync)
	defer t.Stop()
	var seen uint64
	for {
		seen = membershipKey(cluster.Members())
		n.sync(ctx, cluster, onRepick)
	wait:
		select {
		case <-ctx.Done():
			return
		case <-changes:
			// Load tags change every few seconds and matter not here.
			if membershipKey(cluster.Members()) == seen {
				goto wait
			}
		case <-t.C:
		}
	}
}

// sync settles subnet conflicts, lets VXLAN in from every member and
// programs every alive peer.
func (n *overlayNet) sync(ctx context.Context, cluster *gossip.Cluster, onRepick func()) {
	var peers []overlay.Peer
	var claims []overlay.Claim
	all := cluster.Members()
	for _, m := range all {
		if m.Name == n.self || m.Meta.Overlay == "" {
			continue
		}
		adv, err := overlay.ParseTag(m.Meta.Overlay)
		if err != nil {
			n.log.Warn("ignoring peer's overlay tag", "node", m.Name, "err", err)
			continue
		}
		// A failed node's subnet stays claimed (its containers may come
		// back with it); one that left or was reaped frees its subnet.
		if m.Status == gossip.StatusAlive || m.Status == gossip.StatusFailed {
			claims = append(claims, adv.Claim(m.Name))
		}
		underlay, ok := netip.AddrFromSlice(m.Addr)
		if m.Status != gossip.StatusAlive || !ok {
			continue
		}
		peers = append(peers, overlay.Peer{Name: m.Name, UnderlayIP: underlay.Unmap(), Subnet: adv.Subnet, VTEPMAC: adv.VTEPMAC})
	}

	n.mu.Lock()
	current := n.claim
	n.mu.Unlock()
	next, err := overlay.NextClaim(current, claims, n.cfg.OverlayCIDR, n.cfg.SubnetBits, time.Now().UnixNano())
	if err != nil {
		n.log.Error("re-pick overlay subnet", "err", err)
	} else if next != current {
		n.log.Warn("overlay subnet conflict lost: moving", "from", current.Subnet, "to", next.Subnet)
		if err := n.repick(ctx, next, cluster); err != nil {
			n.log.Error("move overlay subnet", "to", next.Subnet, "err", err)
		} else if onRepick != nil {
			onRepick()
		}
	}
	// Of peers claiming one subnet only the older claim gets a route (the
	// others will move), and none that claims this node's subnet.
	n.mu.Lock()
	self := n.claim
	n.mu.Unlock()
	winners := map[string]bool{}
	for _, c := range overlay.Survivors(append(claims, self)) {
		winners[c.Node] = true
	}
	kept := peers[:0]
	for _, p := range peers {
		if !winners[p.Name] || p.Subnet.Overlaps(self.Subnet) {
			continue
		}
		kept = append(kept, p)
	}
	// A claim that moved but failed to reach gossip is announced again.
	if adv := n.advert(); cluster.Meta().Overlay != adv {
		if err := cluster.UpdateMeta(func(m *gossip.Meta) { m.Overlay = adv }); err != nil {
			n.log.Warn("announce overlay subnet", "err", err)
		}
	}
	// Members first: a peer's packets are accepted before it is routed.
	if err := n.mgr.SyncMembers(vxlanSources(n.self, all)); err != nil {
		n.log.Warn("program overlay members", "err", err)
	}
	if err := n.mgr.SyncPeers(kept); err != nil {
		n.log.Warn("program overlay peers", "err", err)
	}
}

// vxlanSources lists the underlay addresses VXLAN is accepted from: every
// other member that has not left. Failed members stay, because one that
// comes back sends VXLAN at once, before this node has seen it alive; left
// and leaving ones are out of the overlay, and reaped ones are no longer
// listed at all.
func vxlanSources(self string, members []gossip.Member) []netip.Addr {
	var out []netip.Addr
	for _, m := range members {
		if m.Name == self || m.Status == gossip.StatusLeft {
			continue
		}
		if addr, ok := netip.AddrFromSlice(m.Addr); ok {
			out = append(out, addr.Unmap())
		}
	}
	return out
}

func (n *overlayNet) repick(ctx context.Context, next overlay.Claim, cluster *gossip.Cluster) error {
	if err := overlay.SaveClaim(n.claimPath, next); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := n.mgr.Setup(sctx, next.Subnet, n.underlay); err != nil {
		return err
	}
	n.mu.Lock()
	n.claim = next
	n.generation++
	n.mu.Unlock()
	// Replicas keep their resolv.conf mount: its content follows.
	if _, err := n.mgr.ResolvConf(n.cfg.StateDir); err != nil {
		n.log.Warn("rewrite resolv.conf", "err", err)
	}
	return cluster.UpdateMeta(func(m *gossip.Meta) { m.Overlay = n.advert() })
}

// resolvConfPath is the resolv.conf containers mount: it names the
// node's DNS server on the overlay gateway.
func (n *overlayNet) resolvConfPath() string { return n.resolvConf }

// attach connects a replica's network namespace and returns its address.
func (n *overlayNet) attach(ctx context.Context, netnsPath, task string) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	return n.mgr.Attach(ctx, netnsPath, task)
}

// detach releases a replica's address and removes its veth.
func (n *overlayNet) detach(ctx context.Context, netnsPath, task string) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := n.mgr.Detach(ctx, netnsPath, task); err != nil {
		n.log.Warn("detach replica from overlay", "task", task, "err", err)
	}
}

// sweep detaches veths and addresses of tasks that no longer exist.
func (n *overlayNet) sweep(ctx context.Context, exists map[string]bool) {
	atts, err := n.mgr.Attachments()
	if err != nil {
		n.log.Warn("list overlay attachments", "err", err)
		return
	}
	gone := map[string]bool{}
	for _, att := range atts {
		if !exists[att.Owner] {
			gone[att.Owner] = true
		}
	}
	// Addresses whose veth vanished with its namespace (a container removed
	// by hand) hold no link, only an allocation.
	for _, owner := range n.mgr.AddressOwners() {
		if !exists[owner] {
			gone[owner] = true
		}
	}
	for owner := range gone {
		n.detach(ctx, "", owner)
	}
}

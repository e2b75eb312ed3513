// Package overlay gives every node a slice of one flat container network and
// wires containers into it: it claims a node subnet without a master, builds
// the node's bridge and VXLAN device, keeps the forwarding entries to every
// peer in step with the membership view, hands out container addresses and
// plugs containers in with veth pairs.
//
// The layout is flannel's vxlan backend: one VXLAN device per node with
// learning off, and for every peer a static FDB entry (peer VTEP MAC to peer
// underlay IP), a permanent neighbour entry (peer gateway to peer VTEP MAC)
// and an on-link route for the peer subnet via that gateway. Nothing is
// flooded and nothing is learnt, so a node knows exactly the peers it was
// told about. Containers hang off a bridge that holds the node's gateway
// address; traffic from containers to outside the overlay is masqueraded.
//
// The overlay is closed to the underlay (firewall.go): VXLAN is accepted
// only from members' underlay addresses (SyncMembers, plus the peers), and
// packets are forwarded into the overlay range only from the bridge, from
// the VXLAN device, as replies, or after the node's own DNAT (the lb
// package's VIPs and node ports). On the bridge, each container's veth
// may send only with the container's own MAC and IPv4 address, ARP
// included. Both rule sets live in the Manager's own nftables tables,
// rewritten whole in one transaction on every sync.
//
// Subnet claims (ProposeSubnet, NextClaim, MustRepick) and tag encoding
// (Advert) are pure functions. Manager does the kernel work; every method
// reconciles towards a desired state, so calling one again repairs what was
// changed behind its back. The package knows nothing of jobs: containers are
// "owners", opaque strings chosen by the caller.
package overlay

// Package lb load-balances services at layer 4 on this node: it programs
// every service's virtual IP and node port into one nftables table,
// answers DNS for the services, and offers a userspace proxy for node ports
// where nftables cannot be used.
//
// The package knows services and endpoints, never containers or jobs. The
// agent hands it the whole desired set every time ([Table.Sync],
// [DNS.Update], [Proxy.Update]); each replaces its state with the new set
// instead of patching it, so a missed event is repaired by the next call.
// Only IPv4 is supported.
//
// # nftables layout
//
// [Program] is a pure function from a [Config] and the services to a
// [Ruleset], the complete content of the table (family ip). [Table.Sync]
// applies it in one netlink batch: add the table, flush its rules and maps,
// delete the chains and sets no longer wanted, add everything. The kernel
// commits a batch whole or not at all, so a rejected sync leaves the
// previous rules working. Should the kernel refuse that update (a table
// left in another layout by an older version, or a pre-6.2 kernel that
// frees a chain only after the map element naming it is gone), the table
// is replaced whole instead, again in one batch. The table holds:
//
//   - nat-prerouting and nat-output (dstnat) jump to "services", which
//     marks VIP traffic from outside the overlay for masquerade, looks up
//     "ip daddr . l4proto . dport" in the verdict map service-ips and, for
//     local destinations (fib daddr type local, or the configured NodeIPs),
//     jumps to "nodeports": node-port traffic is marked for masquerade and
//     looked up as "l4proto . dport" in service-nodeports.
//   - one chain per service, svc-NAME-PROTO-PORT, holding a single DNAT rule
//     that picks the backend with the service's strategy.
//   - filter-prerouting (just after dstnat) marks hairpin traffic: a
//     connection to a VIP DNAT'd to a backend reached through the interface
//     it came in on (a client on the same bridge as its backend), whose
//     replies would otherwise bypass this node's conntrack.
//   - nat-postrouting masquerades marked packets and clears the mark.
//   - filter-forward and filter-output reject what is still addressed to the
//     service CIDR after dstnat (no such service, or no healthy endpoint);
//     filter-input rejects node ports whose service has no healthy
//     endpoint. TCP gets a reset, anything else ICMP port unreachable, so
//     clients fail at once instead of timing out.
//
// # Strategies
//
// round_robin (the default) is numgen inc mod N, random is numgen random
// mod N, source_hash is jhash(ip saddr) mod N and maglev is jhash(ip saddr)
// into a Maglev lookup table of DefaultMaglevTableSize buckets. ("mod" is
// nft's word; the kernel scales the hash onto N, so when one of ten
// endpoints leaves, source_hash moves 30-50% of clients and maglev about
// 12%.) The hash
// seed is fixed (DefaultHashSeed), so every node sends one client to the
// same backend, and the userspace proxy reproduces the kernel's jhash to
// choose exactly as nftables does. Endpoints are ordered by their identity
// (node and replica), never by the order they arrive in.
//
// # What the node must provide
//
// Containers reach VIPs through their default route and prerouting. A
// process on the node itself needs a route that covers the service CIDR,
// or connect fails before the output hook runs: [EnsureVIPRoute] installs
// "SERVICE_CIDR dev BRIDGE src GATEWAY", after which nat-output DNATs and
// the kernel routes the packet again to the chosen backend. The overlay,
// which owns the bridge, must also
//
//   - enable forwarding (net.ipv4.ip_forward=1);
//   - turn ICMP redirects off on the bridge (send_redirects=0 for "all" and
//     the bridge): forwarding a container's packet back out of the bridge
//     makes the kernel send redirects, and its redirect bookkeeping empties
//     that container's ICMP token bucket, so the port-unreachable that
//     answers UDP to a VIP without endpoints is silently rate-limited;
//   - put container ports in hairpin mode when br_netfilter is loaded
//     (bridge-nf-call-iptables=1): DNAT'd traffic that leaves by the bridge
//     it came in on is then bridged, and a replica calling its own VIP
//     needs the frame sent back out of its own port (kubelet's hairpin-veth
//     mode). Without br_netfilter the masquerade above is enough;
//   - let DNAT'd traffic in: the overlay's firewall forwards packets from
//     outside into the overlay range only when conntrack shows a DNAT
//     ("ct status dnat"), which every VIP and node-port rule here is. A
//     backend reached any other way (a route, a redirect) would be dropped.
//
// # Wiring
//
// The agent allocates each service's VIP with [AllocateVIP], keeps one
// [Table] ([NewTable], Sync on every change, Teardown when leaving the
// cluster), one [DNS] on the bridge gateway ([NewDNS], Start, Update) and,
// with --lb userspace, a [Proxy] instead of the Table ([NewProxy], Update).
// [SyncStats] carries what metrics need: sync duration, endpoints per
// service, object counts.
package lb

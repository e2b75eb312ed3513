// Package node composes a Shoal agent: membership, the p2p host, the
// replicated store, placement, the reconcile loop, the overlay, the load
// balancer and the HTTP API. It owns start-up and shutdown order.
//
// # How the agent decides
//
// Every pass of the reconcile loop is gather, plan, execute, publish:
//
//   - gather reads the alive members, the jobs as they run (the users' job
//     records with the automatic scale and rollout records applied), every
//     node's endpoint records, the runtime's tasks and the health verdicts,
//     and computes placement (placement.Assign, the same on every node);
//   - planPass, a pure function of that planInput (no clock read, no I/O),
//     decides what to stop, what to start, which endpoint records to
//     publish, which events to log, which rollout marks to write, and the
//     memory the next pass starts from (handoff clocks, restart backoff,
//     the job version each task was started under);
//   - execute stops, then starts a few tasks at a time; settleStarts, also
//     pure, turns the results into records and memory;
//   - publish writes this node's endpoint records and withdraws the rest.
//
// A driver that cannot be asked (containerd restarting) is an input
// meaning unknown, never exited: its replicas keep their last records and
// nothing is counted, removed or restarted. Until the store has synced
// with a peer once, nothing is stopped. Automatic changes (autoscaler,
// rollout done, rollback) are records of their own that name the version
// of the user's job record they were decided on, so a user's later write
// or delete always wins.
//
// # Goroutines and what they own
//
// Each piece of mutable state has one owner; others reach it through a
// channel or a small locked method.
//
//   - reconciler.run owns placement's last result, the plan memory, the
//     overlay attachments and the announced runtime health. It wakes on
//     membership changes (not load tags), job and automatic records
//     (jobsChanged), peers' endpoint records while a handoff waits
//     (endpointsChanged), a health flip (healthChanged), a new overlay
//     subnet (networkMoved), and every ReconcileConfig.Resync.
//   - prober runs one goroutine per replica with a health check; verdicts
//     sit under the prober's mutex and a flip signals healthChanged.
//   - serviceLB.run owns the nftables table, the userspace proxy and the
//     DNS server. It wakes on servicesChanged (jobs or endpoints changed),
//     membership changes and every servicesResync.
//   - overlayNet.run owns the peers' FDB, neighbour and route entries and
//     settles subnet conflicts; the claim is under its mutex. It wakes on
//     membership changes and every networkResync.
//   - loadLoop owns the load samplers and the autoscaler (including when
//     it first saw each usage and scale record); it wakes every
//     Config.LoadInterval to publish load tags, rotate logs, publish usage
//     records and autoscale.
//   - joinLoop joins the seeds, catches the store up and sets synced; it
//     closes joined once the first attempt ended, which starts the loops
//     that act on the cluster's view.
//   - gossip.StateSync pushes local writes and runs anti-entropy. Records
//     from peers pass peerCheck.accept first (validated like API input;
//     endpoint and usage records must carry their owner's signature), then
//     reach onPeerRecords, which only signals the channels above.
//   - gcLoop collects tombstones and the records of gone nodes and jobs
//     every minute.
//   - API handlers read the store; job writes take jobsMu so that a
//     compare-and-set and its write cannot interleave. With the cluster CA
//     the server presents a certificate the agent issued itself, renewed
//     on a handshake once two thirds of its life have passed.
//
// Run starts the loops with one loopGroup and, on shutdown, stops taking
// API writes, flushes the last writes to peers, stops the loops and waits
// for them, then leaves the cluster and closes membership, the p2p host,
// the load balancer, the runtime drivers, the overlay and the store, in
// that order.
package node

#!/usr/bin/env bash
# A real Shoal cluster on one machine: one network namespace per node,
# joined by a bridge in a hub namespace, and a veth from the host to that
# bridge so the CLI on the host reaches every node's API.
#   scripts/demo.sh up [NODES]   start (default 3 nodes)
#   scripts/demo.sh down         remove every namespace, link and process
#   scripts/demo.sh status       show what is running
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SHOAL_BIN:-$PWD/bin/shoal}
DIR=${SHOAL_DEMO_DIR:-/tmp/shoal-demo}
PREFIX=shoal-demo
NET=10.98.0
HOSTLINK=shoal-demo0

die() { echo "demo: $*" >&2; exit 1; }

down() {
	if [[ -d $DIR ]]; then
		for pidfile in "$DIR"/*.pid; do
			[[ -e $pidfile ]] || continue
			pid=$(cat "$pidfile")
			# SIGTERM first: agents leave the cluster gracefully.
			kill -TERM "$pid" 2>/dev/null || true
		done
		sleep 1
		for pidfile in "$DIR"/*.pid; do
			[[ -e $pidfile ]] || continue
			kill -KILL "$(cat "$pidfile")" 2>/dev/null || true
			rm -f "$pidfile"
		done
	fi
	# Tasks outlive their agents by design; remove them for good.
	for i in $(seq 1 50); do
		ip netns list | grep -q "^shoal-$PREFIX-n$i-" && "$BIN" cleanup --containerd-namespace "$PREFIX-n$i" >/dev/null
	done
	for ns in $(ip netns list | awk '{print $1}' | grep "^$PREFIX-" || true); do
		for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
		ip netns del "$ns"
	done
	ip link del "$HOSTLINK" 2>/dev/null || true
	rm -rf "$DIR"
	echo "demo: removed"
}

status() {
	ip netns list | grep "^$PREFIX-" || echo "no demo namespaces"
	if [[ -f $DIR/env ]]; then
		# shellcheck disable=SC1091
		source "$DIR/env"
		"$BIN" nodes || true
	fi
}

up() {
	local n=${1:-3}
	[[ $EUID -eq 0 ]] || die "needs root (network namespaces)"
	[[ -x $BIN ]] || die "$BIN not built; run make build"
	[[ $n =~ ^[0-9]+$ && $n -ge 1 && $n -le 50 ]] || die "node count must be 1-50"
	if ip netns list | grep -q "^$PREFIX-"; then
		die "a demo is already running; 'make demo-down' first"
	fi
	if ip route show | grep -q "^$NET\."; then
		die "$NET.0/24 is already routed on this host; refusing to shadow it"
	fi
	mkdir -p "$DIR"
	eval "$("$BIN" keygen)"
	cat >"$DIR/env" <<ENV
export SHOAL_ADDR=$NET.11:7700
export SHOAL_TOKEN=$SHOAL_API_TOKEN
ENV
	echo "$SHOAL_GOSSIP_KEY" >"$DIR/gossip.key"
	chmod 600 "$DIR/env" "$DIR/gossip.key"

	ip netns add "$PREFIX-hub"
	ip -n "$PREFIX-hub" link set lo up
	ip -n "$PREFIX-hub" link add br0 type bridge
	ip -n "$PREFIX-hub" link set br0 up
	ip link add "$HOSTLINK" type veth peer name host netns "$PREFIX-hub"
	ip -n "$PREFIX-hub" link set host master br0 up
	ip addr add "$NET.1/24" dev "$HOSTLINK"
	ip link set "$HOSTLINK" up

	for i in $(seq 1 "$n"); do
		local ns=$PREFIX-n$i ip=$NET.$((10 + i))
		ip netns add "$ns"
		ip -n "$ns" link set lo up
		ip -n "$PREFIX-hub" link add "h$i" type veth peer name eth0 netns "$ns"
		ip -n "$PREFIX-hub" link set "h$i" master br0 up
		ip -n "$ns" addr add "$ip/24" dev eth0
		ip -n "$ns" link set eth0 up
		local join=()
		((i > 1)) && join=(--join "$NET.11")
		# nsenter, not "ip netns exec": the latter remounts /sys and hides
		# the cgroup mounts the agent's runtime uses.
		setsid nsenter --net="/run/netns/$ns" -- "$BIN" agent --name "n$i" --bind "$ip" \
			--api "$ip:7700" --data-dir "$DIR/n$i" \
			--gossip-key "$SHOAL_GOSSIP_KEY" --api-token "$SHOAL_API_TOKEN" \
			--containerd-namespace "shoal-demo-n$i" "${join[@]}" \
			>"$DIR/n$i.log" 2>&1 </dev/null &
		echo $! >"$DIR/n$i.pid"
	done

	# shellcheck disable=SC1091
	source "$DIR/env"
	for _ in $(seq 1 100); do
		alive=$("$BIN" nodes --json 2>/dev/null | grep -c '"status": "alive"' || true)
		[[ $alive -eq $n ]] && break
		sleep 0.2
	done
	"$BIN" nodes
	[[ $alive -eq $n ]] || die "only $alive of $n nodes alive; logs in $DIR"
	echo
	echo "+ shoal run -f examples/ticker.yaml   # submitted to n1, placed by every node alike"
	"$BIN" run -f examples/ticker.yaml
	for _ in $(seq 1 50); do
		running=$("$BIN" ps --json | grep -c '"state": "running"' || true)
		[[ $running -ge 3 ]] && break
		sleep 0.2
	done
	echo "+ SHOAL_ADDR=$NET.12:7700 shoal ps   # asked of n2"
	SHOAL_ADDR=$NET.12:7700 "$BIN" ps
	cat <<MSG

Shoal demo: $n agents, each in its own network namespace ($PREFIX-n1..n$n),
gossiping over $NET.0/24 with an encrypted key. Talk to any node:

  source $DIR/env        # SHOAL_ADDR=$NET.11:7700 and SHOAL_TOKEN
  bin/shoal nodes
  SHOAL_ADDR=$NET.12:7700 bin/shoal nodes

Logs: $DIR/n*.log    Tear down: make demo-down
MSG
}

case ${1:-} in
up) shift; up "$@" ;;
down) down ;;
status) status ;;
*) die "usage: $0 up [NODES] | down | status" ;;
esac

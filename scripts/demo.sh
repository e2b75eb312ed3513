#!/usr/bin/env bash
# The jobs of `make demo`, run on the cluster `shoal dev up` started (the
# cluster itself is Go: see `shoal dev --help`).
#   scripts/demo.sh up     shoal dev up, then the jobs below
#   scripts/demo.sh jobs   submit an exec job and a containerd job, wait
#                          until their replicas run, print `shoal ps`
#   scripts/demo.sh down   shoal dev down
# SHOAL_BIN names the shoal binary (default bin/shoal), SHOAL_DEV_NAME the
# cluster (default dev).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SHOAL_BIN:-$PWD/bin/shoal}
NAME=${SHOAL_DEV_NAME:-dev}
# A cluster made with --dir elsewhere is linked from here too.
ENV_FILE=/var/lib/shoal-dev/$NAME/env

die() { echo "demo: $*" >&2; exit 1; }

# wait_running JOB N: until N replicas of JOB run (60 s at most).
wait_running() {
	local job=$1 want=$2 running=0
	for _ in $(seq 1 300); do
		running=$("$BIN" inspect "$job" | grep -c '"state": "running"' || true)
		((running >= want)) && return 0
		sleep 0.2
	done
	"$BIN" ps
	die "only $running of $want replicas of $job run after 60s; agent logs: /var/lib/shoal-dev/$NAME/n*.log"
}

submit_jobs() {
	[[ -r $ENV_FILE ]] || die "no dev cluster $NAME (no $ENV_FILE); start one with '$BIN dev up'"
	# shellcheck disable=SC1090
	source "$ENV_FILE"
	echo
	echo "+ shoal run -f examples/ticker.yaml   # a plain-process job, submitted to n1, placed by every node alike"
	"$BIN" run -f examples/ticker.yaml
	local hello=false
	if "$BIN" image ls | grep -q 'shoal.dev/hello:1'; then
		hello=true
		echo "+ shoal run hello --image shoal.dev/hello:1 --driver containerd --replicas 3 --port 8080"
		"$BIN" run hello --image shoal.dev/hello:1 --driver containerd --replicas 3 --port 8080
	else
		echo "(image shoal.dev/hello:1 is not loaded: skipping the containerd job)"
	fi
	wait_running ticker 3
	$hello && wait_running hello 3

	# --- load balancing: not yet ------------------------------------------
	# When the L4 load balancer lands, give hello a node port
	# (--service-port 80 --node-port 30080) and show any node answering:
	#   curl -s http://10.98.0.12:30080/     # "hello from hello-N"
	# -----------------------------------------------------------------------

	local n2
	n2=$("$BIN" nodes | awk '$1 == "n2" {print $2}')
	if [[ -n $n2 ]]; then
		echo "+ SHOAL_ADDR=${n2%:*}:7700 shoal ps   # asked of n2: any node answers"
		SHOAL_ADDR=${n2%:*}:7700 "$BIN" ps
	else
		echo "+ shoal ps"
		"$BIN" ps
	fi
	cat <<MSG

Talk to the cluster:   source $ENV_FILE; $BIN nodes
Replica output:        $BIN logs hello --replica 0
Tear down:             make demo-down
MSG
}

case ${1:-} in
up) "$BIN" dev up --name "$NAME" && submit_jobs ;;
jobs) submit_jobs ;;
down) "$BIN" dev down --name "$NAME" ;;
*) die "usage: $0 up | jobs | down" ;;
esac

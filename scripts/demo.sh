#!/usr/bin/env bash
# The jobs of `make demo`, run on the cluster `shoal dev up` started (the
# cluster itself is Go: see `shoal dev --help`).
#   scripts/demo.sh up     shoal dev up, then the jobs below
#   scripts/demo.sh jobs   run examples/web.yaml (3 replicas behind a VIP and
#                          node port 30080), print `shoal ps` and
#                          `shoal services`, and curl the node port
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

submit_jobs() {
	[[ -r $ENV_FILE ]] || die "no dev cluster $NAME (no $ENV_FILE); start one with '$BIN dev up'"
	# shellcheck disable=SC1090
	source "$ENV_FILE"
	"$BIN" image ls | grep -q 'shoal.dev/hello:1' ||
		die "image shoal.dev/hello:1 is not loaded (run from a checkout with Go, or pass --image to shoal dev up)"
	echo
	echo "+ shoal run -f examples/web.yaml   # 3 replicas of the hello image, VIP port 80, node port 30080"
	"$BIN" run -f examples/web.yaml >/dev/null
	echo "+ shoal wait web   # until its 3 replicas run, pass their health checks and serve"
	"$BIN" wait web
	local n2 n3
	n2=$("$BIN" nodes | awk '$1 == "n2" {print $2}')
	n3=$("$BIN" nodes | awk '$1 == "n3" {print $2}')
	echo "+ SHOAL_ADDR=${n2%:*}:7700 shoal ps   # asked of n2: any node answers"
	SHOAL_ADDR=${n2%:*}:7700 "$BIN" ps
	# Replicas join the load balancer once their health check passes.
	local url=http://${n3%:*}:30080/ out=""
	for _ in $(seq 1 100); do
		out=$(curl -fsS --max-time 2 "$url" 2>/dev/null) && break
		sleep 0.2
	done
	echo
	echo "+ shoal services"
	"$BIN" services
	echo
	echo "+ curl $url   # the node port, on any node"
	[[ -n $out ]] || die "no answer from $url; agent logs: /var/lib/shoal-dev/$NAME/n*.log"
	echo "$out"
	for _ in 1 2 3 4 5; do curl -fsS --max-time 2 "$url"; done
	cat <<MSG

Talk to the cluster:   source $ENV_FILE; $BIN nodes
Replica output:        $BIN logs web --replica 0
Tear down:             make demo-down
MSG
}

case ${1:-} in
up) "$BIN" dev up --name "$NAME" && submit_jobs ;;
jobs) submit_jobs ;;
down) "$BIN" dev down --name "$NAME" ;;
*) die "usage: $0 up | jobs | down" ;;
esac

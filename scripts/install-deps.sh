#!/usr/bin/env bash
# Installs the Debian packages Shoal's tests and demo use, if missing.
set -euo pipefail
pkgs=(iproute2 nftables containerd runc ca-certificates curl)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [[ $EUID -ne 0 ]]; then
		echo "missing packages: ${missing[*]} (run as root to install them)" >&2
		exit 1
	fi
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ! command -v go >/dev/null && [[ ! -x /usr/local/go/bin/go ]]; then
	echo "Go is required (https://go.dev/doc/install); this project uses $(sed -n 's/^go //p' "$(dirname "$0")/../go.mod")" >&2
	exit 1
fi

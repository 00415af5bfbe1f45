#!/usr/bin/env bash
# What the mesh's namespace tests need beyond root and /dev/net/tun:
# iproute2's `ip` (namespaces, veth, bridges) and nftables' `nft` (the
# gateway's SNAT). Installed from Debian's packages when missing.
set -euo pipefail

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
nft --version

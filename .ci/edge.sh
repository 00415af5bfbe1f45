#!/usr/bin/env bash
# Install what the edge tests need (issue 16), if missing: Debian's
# `pebble` (an ACME CA, with `pebble-challtestsrv` as its DNS server),
# curl, which reads the edge with pebble's root, nginx (seed 004's edge,
# driven by `slowpath edge-agent`), and knot (`knotd`, the authoritative
# server the DNS manager updates, and `kdig`). The tests start private
# instances on free ports; the packages' own services are not wanted.
set -euo pipefail

PATH=$PATH:/usr/sbin
if ! command -v pebble >/dev/null 2>&1 || ! command -v pebble-challtestsrv >/dev/null 2>&1 \
  || ! command -v curl >/dev/null 2>&1 || ! command -v nginx >/dev/null 2>&1 \
  || ! command -v knotd >/dev/null 2>&1 || ! command -v kdig >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends pebble curl ca-certificates nginx-light \
    knot knot-dnsutils >&2
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now nginx knot >/dev/null 2>&1 || true
  fi
  # Without systemd the packages may have started nginx on port 80 and
  # knotd on 53.
  [ -f /run/nginx.pid ] && nginx -s quit >/dev/null 2>&1 || true
  pkill -x knotd >/dev/null 2>&1 || true
fi
command -v pebble pebble-challtestsrv curl nginx knotd kdig >&2

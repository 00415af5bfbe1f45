#!/usr/bin/env bash
# Install what the metrics test needs, if missing: Debian's `prometheus`
# for `promtool check metrics`, which the fastpath's /metrics must pass.
# The package's own services are not wanted.
set -euo pipefail

if ! command -v promtool >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends prometheus >&2
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
  fi
  pkill -x prometheus >/dev/null 2>&1 || true
  pkill -x prometheus-node-exporter >/dev/null 2>&1 || true
fi
command -v promtool >&2

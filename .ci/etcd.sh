#!/usr/bin/env bash
# Install etcd (if missing) for the etcd tenant-source tests and print its
# version. Debian's `etcd-server` (the daemon) and `etcd-client` (etcdctl);
# run as root. The tests start their own etcd on free ports, so nothing is
# started here.
set -euo pipefail

if ! command -v etcd >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # The package's own service is not wanted: the tests run private instances.
  apt-get install -y -qq --no-install-recommends etcd-server etcd-client >&2
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi
# sed reads to the end: with pipefail, `head -1` could leave etcd a SIGPIPE (exit 141).
etcd --version | sed -n 1p

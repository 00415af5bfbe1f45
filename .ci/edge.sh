#!/usr/bin/env bash
# Install what the edge tests need (issue 16), if missing: Debian's
# `pebble` (an ACME CA, with `pebble-challtestsrv` as its DNS server) and
# curl, which reads the edge with pebble's root. The tests start private
# instances on free ports; nothing is started here.
set -euo pipefail

if ! command -v pebble >/dev/null 2>&1 || ! command -v pebble-challtestsrv >/dev/null 2>&1 \
  || ! command -v curl >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends pebble curl ca-certificates >&2
fi
command -v pebble pebble-challtestsrv curl >&2

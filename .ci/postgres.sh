#!/usr/bin/env bash
# Install (if missing) and start a local PostgreSQL for the persistence
# tests, and print the URL they use: a role that may create one database
# per test. Debian's `postgresql` package; run as root.
set -euo pipefail

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi
ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q "^$ver main"; then
  pg_createcluster "$ver" main >&2
fi
pg_ctlcluster "$ver" main start >&2 2>/dev/null || true
for _ in $(seq 1 50); do
  runuser -u postgres -- pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 0.2
done
runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 >&2 <<'SQL'
DO $$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'totoro') THEN
    CREATE ROLE totoro LOGIN PASSWORD 'totoro' CREATEDB;
  END IF;
END$$;
-- DROP DATABASE ... WITH (FORCE) on a test database must also end an
-- autovacuum worker that happens to be inside it.
GRANT pg_signal_backend TO totoro;
SQL
echo "postgres://totoro:totoro@127.0.0.1:5432/postgres"

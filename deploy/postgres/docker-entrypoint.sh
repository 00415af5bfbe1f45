#!/usr/bin/env bash
# The official postgres image's contract, with Debian's PostgreSQL: on the
# first start (an empty PGDATA) make a cluster whose superuser is
# POSTGRES_USER with POSTGRES_PASSWORD and create POSTGRES_DB, then run the
# server for the network with password (SCRAM) logins. Later starts find
# PG_VERSION and only run the server.
set -euo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

# Started as root: make the volume the postgres user's, then come back as
# it (the server refuses to run as root).
if [ "$(id -u)" = 0 ]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	chown postgres:postgres "$PGDATA" /var/run/postgresql
	chmod 0700 "$PGDATA"
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
	if [ -z "${POSTGRES_PASSWORD:-}" ]; then
		echo "docker-entrypoint: POSTGRES_PASSWORD is empty; refusing to make a cluster anyone can log in to" >&2
		exit 1
	fi
	pwfile=$(mktemp)
	trap 'rm -f "$pwfile"' EXIT
	printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
	initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
		--encoding=UTF8 --locale=C.UTF-8 \
		--auth-local=trust --auth-host=scram-sha-256
	rm -f "$pwfile"
	# initdb's pg_hba.conf admits local sockets and loopback only; the
	# other containers come over the compose network.
	printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
	if [ "$POSTGRES_DB" != postgres ]; then
		# A server on the socket alone, so nothing connects before the
		# database exists.
		pg_ctl --pgdata="$PGDATA" --wait --options="-c listen_addresses=''" start
		psql --no-psqlrc --set=ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname=postgres \
			--set=db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
		pg_ctl --pgdata="$PGDATA" --wait --mode=fast stop
	fi
	echo "docker-entrypoint: cluster made in $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
fi

if [ "${1:-}" = postgres ]; then
	shift
	exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec "$@"

#!/usr/bin/env bash
# The compose stack, started for real on a host that reaches Debian's
# package mirror and crates.io but no image registry: every image is made
# from Debian's packages (a bookworm minbase from debootstrap, loaded with
# `docker import`, and deploy/Dockerfile, deploy/postgres and deploy/caddy
# on top of it). Then it checks what an operator and an invitee do: the
# admin key from the control plane's volume, an invite made through the
# API, resolved through Caddy over HTTPS (verified against Caddy's own local
# CA, which it uses for TOTORO_DOMAIN=localhost), a tunnel through the
# fastpath with the resolved frpc.toml (bench's frp client, which matches
# frpc on the wire: deploy has no frpc binary), and takes the stack down
# with its volumes.
#
#   sudo deploy/compose/offline-test.sh
#
# Idempotent: what exists is kept (Debian packages, a running dockerd, the
# base, postgres and caddy images; cargo and the totoro image's build cache
# make a rebuild of unchanged binaries quick). REBUILD=1 makes the base and
# the postgres and caddy images again. Needs root (apt-get, debootstrap,
# dockerd) and the host's ports 80, 443, 7000, 8080, 8443, 9464 and
# 20000-20999 free. The test's own files (its .env, the frpc.toml, Caddy's
# root certificate, logs) go to $WORK, never to deploy/compose/.env.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

WORK=${WORK:-/var/tmp/totoro-offline-test}
MIRROR=${TOTORO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${TOTORO_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# Its own project name, never COMPOSE_PROJECT_NAME from the environment:
# the test starts with `down -v`, which would take a real stack's volumes.
PROJECT=${TOTORO_TEST_PROJECT:-totoro-offline-test}
BASE_IMAGE=${BASE_IMAGE:-totoro-base:bookworm}
TOTORO_IMAGE=${TOTORO_IMAGE:-totoro:offline}
POSTGRES_IMAGE=${POSTGRES_IMAGE:-totoro-postgres:bookworm}
CADDY_IMAGE=${CADDY_IMAGE:-totoro-caddy:bookworm}
REBUILD=${REBUILD:-0}
# Debian's docker CLI goes with Debian's daemon and has BuildKit built in
# (a newer CLI elsewhere on PATH may want the buildx plugin for it).
if [ -z "${DOCKER:-}" ]; then
	if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi
# Bookworm's docker-compose 1.29 unless told otherwise (COMPOSE="docker compose").
COMPOSE=${COMPOSE:-docker-compose}
TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}

mkdir -p "$WORK"
log() { printf '[offline-test %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { log "FAILED: $*"; exit 1; }

# Each phase's wall time, printed as it ends and again at the end.
declare -a timings=()
phase_name=""
phase_t0=0
phase() {
	phase_end
	phase_name=$1
	phase_t0=$(date +%s.%N)
	log "== $phase_name"
}
phase_end() {
	if [ -n "$phase_name" ]; then
		local took
		took=$(awk -v a="$phase_t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
		timings+=("$(printf '%-28s %8s s' "$phase_name" "$took")")
		log "== $phase_name: ${took} s"
		phase_name=""
	fi
}

# ---------------------------------------------------------------------------
phase "host packages"
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
if [ "$COMPOSE" = docker-compose ] && ! command -v docker-compose >/dev/null; then
	need+=(docker-compose)
fi
if [ ${#need[@]} -gt 0 ]; then
	log "installing ${need[*]}"
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
else
	log "docker, debootstrap, curl, jq and $COMPOSE already here"
fi

# ---------------------------------------------------------------------------
phase "dockerd"
if "$DOCKER" info >/dev/null 2>&1; then
	log "dockerd already answers"
else
	# No systemd here: started in the background, and left running for the
	# next run (its images are this script's cache).
	log "starting dockerd (log: $WORK/dockerd.log)"
	setsid dockerd >"$WORK/dockerd.log" 2>&1 </dev/null &
	for _ in $(seq 60); do
		"$DOCKER" info >/dev/null 2>&1 && break
		sleep 1
	done
	"$DOCKER" info >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log"; die "dockerd did not start"; }
fi
log "docker server $("$DOCKER" version --format '{{.Server.Version}}'), storage driver $("$DOCKER" info --format '{{.Driver}}')"

# ---------------------------------------------------------------------------
phase "debootstrap base"
if [ "$REBUILD" != 1 ] && "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
	log "$BASE_IMAGE exists"
else
	rootfs="$WORK/rootfs"
	rm -rf "$rootfs"
	debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
		|| { tail -20 "$WORK/debootstrap.log"; die "debootstrap"; }
	# debootstrap fetched the release; the image also gets the updates and
	# the security archive, as Debian's own images do.
	cat >"$rootfs/etc/apt/sources.list" <<-EOF
		deb $MIRROR bookworm main
		deb $MIRROR bookworm-updates main
		deb $SECURITY_MIRROR bookworm-security main
	EOF
	chroot "$rootfs" apt-get update -q >>"$WORK/debootstrap.log" 2>&1
	DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get -y -q upgrade >>"$WORK/debootstrap.log" 2>&1
	chroot "$rootfs" apt-get clean
	rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
	# The host's name and resolver stay on the host: docker supplies both.
	: >"$rootfs/etc/hostname"
	: >"$rootfs/etc/resolv.conf"
	tar --numeric-owner -C "$rootfs" -c . \
		| "$DOCKER" import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
	rm -rf "$rootfs"
	log "$BASE_IMAGE imported"
fi
log "$("$DOCKER" image inspect "$BASE_IMAGE" --format '{{.Id}} {{.Size}} bytes')"

# ---------------------------------------------------------------------------
phase "cargo release binaries"
(cd "$repo" && cargo build --release --locked -p totoro-slowpath -p totoro-fastpath \
	&& cargo build --release --locked -p totoro-bench --example tunnel_check)
for b in slowpath fastpath examples/tunnel_check; do
	[ -x "$TARGET_DIR/release/$b" ] || die "no $TARGET_DIR/release/$b"
done
if [ "$TARGET_DIR" != "$repo/target" ]; then
	# deploy/Dockerfile copies them from target/release in the context.
	mkdir -p "$repo/target/release"
	cp "$TARGET_DIR/release/slowpath" "$TARGET_DIR/release/fastpath" "$repo/target/release/"
fi

# ---------------------------------------------------------------------------
phase "image builds"
build() { DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain "$@" >>"$WORK/build.log" 2>&1 \
	|| { tail -30 "$WORK/build.log"; die "docker build $*"; }; }
: >"$WORK/build.log"
for spec in "$POSTGRES_IMAGE:postgres" "$CADDY_IMAGE:caddy"; do
	image=${spec%:*}
	dir=${spec##*:}
	if [ "$REBUILD" != 1 ] && "$DOCKER" image inspect "$image" >/dev/null 2>&1; then
		log "$image exists"
	else
		build --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$image" "$repo/deploy/$dir"
		log "$image built"
	fi
done
# Always built: the layer cache keeps it quick when the binaries are the same.
was=$("$DOCKER" image inspect -f '{{.Id}}' "$TOTORO_IMAGE" 2>/dev/null || true)
build --build-arg BINARIES=prebuilt --build-arg BASE_IMAGE="$BASE_IMAGE" \
	-f "$repo/deploy/Dockerfile" -t "$TOTORO_IMAGE" "$repo"
now=$("$DOCKER" image inspect -f '{{.Id}}' "$TOTORO_IMAGE")
# The image of older binaries, untagged by this build, would stay on disk.
if [ -n "$was" ] && [ "$was" != "$now" ]; then
	"$DOCKER" rmi "$was" >/dev/null 2>&1 || true
fi
log "$TOTORO_IMAGE built"
"$DOCKER" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
	| grep -E "^($BASE_IMAGE|$TOTORO_IMAGE|$POSTGRES_IMAGE|$CADDY_IMAGE) " | sed 's/^/  /'

# ---------------------------------------------------------------------------
phase "compose up"
# The node's config: the compose directory's fastpath.toml with a token of
# this run's (the control plane registers the node with it, the fastpath
# checks logins against it). Not a secret on a private node: invitees get it
# with their ticket, and it lets no one in without one.
fastpath_config="$WORK/fastpath.toml"
{
	echo "auth.token = \"$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')\""
	grep -v '^auth\.token' "$here/fastpath.toml"
} >"$fastpath_config"
chmod 0644 "$fastpath_config"
env_file="$WORK/test.env"
umask_was=$(umask)
umask 077
cat >"$env_file" <<EOF
COMPOSE_PROJECT_NAME=$PROJECT
TOTORO_DOMAIN=localhost
TOTORO_PUBLIC_ADDR=127.0.0.1
ACME_EMAIL=ops@example.com
POSTGRES_PASSWORD=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
TOTORO_IMAGE=$TOTORO_IMAGE
POSTGRES_IMAGE=$POSTGRES_IMAGE
CADDY_IMAGE=$CADDY_IMAGE
TOTORO_FASTPATH_CONFIG=$fastpath_config
TOTORO_LOG_FORMAT=json
EOF
# The fastpath's ulimits (1048576 descriptors, unlimited locked memory) can
# go no higher than dockerd's own hard limits without CAP_SYS_RESOURCE,
# which a sandbox may not give: there the test asks for what dockerd has.
dockerd_pid=$(pgrep -xo dockerd || true)
limits=/proc/${dockerd_pid:-self}/limits
nofile=$(awk '/^Max open files/ { print $5 }' "$limits")
memlock=$(awk '/^Max locked memory/ { print $5 }' "$limits")
if [ "$nofile" != unlimited ] && [ "$nofile" -lt 1048576 ]; then
	echo "TOTORO_NOFILE=$nofile" >>"$env_file"
	log "dockerd's descriptor limit is $nofile: TOTORO_NOFILE=$nofile"
fi
if [ "$memlock" != unlimited ]; then
	echo "TOTORO_MEMLOCK=$memlock" >>"$env_file"
	log "dockerd's locked-memory limit is $memlock bytes: TOTORO_MEMLOCK=$memlock"
fi
umask "$umask_was"
# Word splitting on purpose: COMPOSE may be "docker compose".
# shellcheck disable=SC2086
compose() { $COMPOSE --env-file "$env_file" -p "$PROJECT" -f "$here/docker-compose.yml" "$@"; }

# Whatever is left of an earlier run goes first.
compose down -v --remove-orphans >/dev/null 2>&1 || true
busy=$(ss -Hltn | awk '{print $4}' | grep -E ':(80|443|7000|8080|8443|9464|20[0-9]{3})$' || true)
[ -z "$busy" ] || die "host ports in use: $(echo "$busy" | tr '\n' ' ')"

stack_up=1
finish() {
	rc=$?
	if [ "${stack_up:-0}" = 1 ]; then
		if [ "$rc" != 0 ]; then
			log "failed; the stack as it was:"
			compose ps || true
			compose logs --no-color --tail=60 || true
		fi
		if [ "${KEEP_UP:-0}" = 1 ]; then
			log "KEEP_UP=1: the stack stays up ($COMPOSE --env-file $env_file -p $PROJECT -f $here/docker-compose.yml down -v)"
		else
			compose down -v --remove-orphans >/dev/null 2>&1 || true
		fi
	fi
	exit "$rc"
}
trap finish EXIT
compose up -d

# Up means: the control plane healthy (its own healthcheck: the API
# answers with the admin key), the fastpath and Caddy running, and the API
# answering through Caddy.
health() {
	local id
	id=$(compose ps -q "$1" 2>/dev/null || true)
	[ -n "$id" ] || { echo missing; return; }
	"$DOCKER" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing
}
for _ in $(seq 120); do
	cp=$(health totoro-control-plane)
	fp=$(health totoro-frps)
	cd_=$(health caddy)
	pg=$(health postgres)
	[ "$cp" = healthy ] && [ "$fp" = running ] && [ "$cd_" = running ] && break
	sleep 1
done
log "postgres $pg, totoro-control-plane $cp, totoro-frps $fp, caddy $cd_"
if [ "$cp" != healthy ] || [ "$fp" != running ] || [ "$cd_" != running ]; then
	die "the stack did not come up"
fi

# Caddy's local CA signs the certificate for localhost; the test trusts
# that root alone (no -k).
ca="$WORK/caddy-root.crt"
for _ in $(seq 60); do
	compose exec -T caddy cat /data/caddy/pki/authorities/local/root.crt >"$ca" 2>/dev/null && [ -s "$ca" ] && break
	sleep 1
done
[ -s "$ca" ] || die "no root certificate in Caddy's data volume"
api() { curl -sS --cacert "$ca" --max-time 10 "$@"; }
for _ in $(seq 60); do
	code=$(api -o /dev/null -w '%{http_code}' https://localhost/api/v1/public/nodes 2>/dev/null || true)
	[ "$code" = 200 ] && break
	sleep 1
done
[ "$code" = 200 ] || die "the API through Caddy answered ${code:-nothing}"
log "API answers through Caddy over HTTPS (certificate verified against Caddy's local root: $(openssl x509 -in "$ca" -noout -subject))"

# ---------------------------------------------------------------------------
phase "checks"
admin_key=$(compose exec -T totoro-control-plane cat /var/lib/totoro/admin.key | tr -d '\r\n')
[ -n "$admin_key" ] || die "no admin key in the control plane's volume"
log "admin key read from /var/lib/totoro/admin.key (${#admin_key} characters)"
nodes=$(api -H "Authorization: Bearer $admin_key" https://localhost/api/v1/admin/nodes)
node_id=$(jq -er '.[0].id' <<<"$nodes") || die "no node in $nodes"
log "node $node_id: $(jq -c '.[0] | {name, server_addr, server_port, port_pool, proxy_types, status}' <<<"$nodes")"

invite=$(api -X POST -H "Authorization: Bearer $admin_key" -H 'Content-Type: application/json' \
	-w '\n%{http_code}' https://localhost/api/v1/admin/nodes/"$node_id"/invites \
	-d '{"max_uses": 1, "ttl_s": 600, "scope": {"proxy_types": ["tcp"]}}')
[ "$(tail -1 <<<"$invite")" = 201 ] || die "invite: $invite"
invite=$(sed '$d' <<<"$invite")
code=$(jq -er .code <<<"$invite")
log "invite $(jq -r .id <<<"$invite") created through Caddy (POST /api/v1/admin/nodes/$node_id/invites)"

resolved=$(api -X POST -H 'Content-Type: application/json' -w '\n%{http_code}' \
	https://localhost/api/v1/invites/resolve -d "$(jq -nc --arg code "$code" '{code: $code}')")
status=$(tail -1 <<<"$resolved")
resolved=$(sed '$d' <<<"$resolved")
[ "$status" = 200 ] || die "resolve: HTTP $status $resolved"
jq -er .frpc_toml <<<"$resolved" >"$WORK/frpc.toml"
log "invite resolved through Caddy (https://localhost/api/v1/invites/resolve): HTTP $status, $(jq -c '{server_addr, server_port, node_id, invite_id, ticket_expires_at}' <<<"$resolved")"
log "frpc.toml ($WORK/frpc.toml), ticket elided:"
sed -E 's/^(metadatas\.ticket|ticket) = .*/\1 = "…"/' "$WORK/frpc.toml" | grep -v '^$' | sed 's/^/    /'

"$TARGET_DIR/release/examples/tunnel_check" "$WORK/frpc.toml"
log "tunnel through the fastpath checked"

# The control plane heartbeats its node for the fastpath in the other
# container (they share a pid namespace): the node shows online.
status=""
for _ in $(seq 1 30); do
	status=$(api -H "Authorization: Bearer $admin_key" https://localhost/api/v1/admin/nodes/"$node_id" | jq -r .status)
	[ "$status" = online ] && break
	sleep 1
done
[ "$status" = online ] || die "node $node_id is $status, not online"
log "node $node_id online (heartbeats for the fastpath beside the control plane)"

# ---------------------------------------------------------------------------
phase "compose down"
trap - EXIT
stack_up=0
compose down -v --remove-orphans
left=$("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$PROJECT")
vols=$("$DOCKER" volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
[ -z "$left$vols" ] || die "left after down: containers [$left] volumes [$vols]"
log "stack down: no containers or volumes of $PROJECT left"
phase_end

log "phases:"
printf '  %s\n' "${timings[@]}"
log "PASSED"
